"""The world-oracle reference row (flownar.eval.world_oracle) and the claims table (flownar.claims)."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pandas as pd
import pytest

from flownar.data.layouts import SYNTHETIC_CARD_FILE
from flownar.data.readers import FlowNarData
from flownar.data.synth import write_synthetic_dataset
from flownar.errors import FlowNarError
from flownar.eval.runner import run_world_oracle
from flownar.eval.world_oracle import WorldOracleNarrator


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = write_synthetic_dataset(tmp_path_factory.mktemp("wo") / "ek100", "ek100", "smoke", 0, progress=False)
    return FlowNarData(root, "ek100")


def test_detector_fires_at_the_narration_frames(smoke):
    oracle = WorldOracleNarrator(smoke.synthetic_card)
    threshold = oracle.fit(smoke, "train")
    assert np.isfinite(threshold) and threshold > 0
    hits = total = fired = 0
    for clip in smoke.eval_clips("val"):
        frames = smoke.load_features(clip.video_uid, range(clip.start_frame, clip.stop_frame))
        oracle.begin_clip(clip)
        events = oracle.narrate(frames)
        assert events[0].frame == 0 and events[0].forced and events[-1].frame == len(frames) - 1
        said = {e.frame for e in events if not e.forced}
        due = {math.ceil(n.time * smoke.fps - 1e-6) - clip.start_frame for n in clip.references[0]} - {0}
        hits, total, fired = hits + len(said & due), total + len(due), fired + len(said)
        assert all(e.text.startswith("You ") and e.text.endswith(".") for e in events)
    assert hits / total > 0.6 and hits / fired > 0.6, (hits, total, fired)


def test_run_world_oracle_scores_like_a_system_and_resumes(smoke, tmp_path):
    rec = run_world_oracle(smoke, tmp_path / "pred", tmp_path / "m.json", progress=False)
    assert rec["system"] == "world-oracle" and rec["run"]["done"] == len(smoke.eval_clips("val"))
    assert rec["scores"]["corrected"]["t_f1"] > 0.5 and (tmp_path / "m.json").is_file()
    again = run_world_oracle(smoke, tmp_path / "pred", progress=False)
    assert again["run"]["done"] == 0 and again["scores"]["corrected"]["t_f1"] == rec["scores"]["corrected"]["t_f1"]


def test_world_oracle_needs_the_world(smoke, tmp_path):
    root = tmp_path / "real"
    shutil.copytree(smoke.root, root)
    (root / SYNTHETIC_CARD_FILE).unlink()
    with pytest.raises(FlowNarError, match="world oracle"):
        run_world_oracle(FlowNarData(root, "ek100"), tmp_path / "p", progress=False)


# ---------------------------------------------------------------------------------------------------- claims
def _seed_dir(path, f1: dict, banner="test"):
    from flownar.models import SYSTEM_NAMES
    from flownar.report import save_table

    t = pd.DataFrame({"F1": {SYSTEM_NAMES[s]: v for s, v in f1.items()}})
    t.index.name = "system"
    save_table(t, path / "table_self_conditioned_corrected", banner)
    return path


def test_claims_verdicts_count_only_beyond_the_seed_spread(tmp_path):
    from flownar.claims import claims_table

    base = {"videollm-online": 20.0, "videollm-mod": 21.0, "flownar-c": 30.0, "dcm-only": 25.0}
    clear = [_seed_dir(tmp_path / f"a{i}", {**base, "flownar": 30.0 + i}) for i in range(3)]  # +9, +10, +11
    t = claims_table(clear, "ek100")
    row = t.iloc[0]
    assert row["ours (mean +- std)"] == "+10.00 +- 1.00" and row["seeds"] == 3 and row["verdict"] == "reproduced"
    assert row["paper"].startswith("+16.06")  # EK100: FlowNar 29.12 - VideoLLM-MoD 13.06, from the resources
    noisy = [_seed_dir(tmp_path / f"b{i}", {**base, "flownar": v}) for i, v in enumerate((11.0, 21.0, 31.0))]
    verdict = claims_table(noisy, "ek100").iloc[0]["verdict"]
    assert verdict.startswith("not reproduced (no difference") and "sign in 1 of 3 seeds" in verdict  # -10, 0, +10
    worse = [_seed_dir(tmp_path / f"c{i}", {**base, "flownar": 10.0 + i}) for i in range(3)]
    assert claims_table(worse, "ek100").iloc[0]["verdict"] == "not reproduced (opposite)"
    one = claims_table(clear[:1], "ek100").iloc[0]
    assert one["verdict"] == "one seed: direction only (as the paper)" and one["seeds"] == 1
    # a claim whose table is missing is not testable, never made up
    assert (t.loc[t.index.str.startswith("CLAM helps"), "verdict"] == "not testable here").all()


def test_adaptation_comparisons_have_no_paper_side(tmp_path):
    """The rows about our adaptations: no paper figure, no expected sign; a difference only beyond the spread."""
    from flownar.claims import claims_table

    base = {"videollm-online": 20.0, "videollm-mod": 21.0, "flownar-c": 30.0, "dcm-only": 25.0, "flownar": 30.0}
    apart = [
        _seed_dir(tmp_path / f"a{i}", {**base, "flash-vstream": 20.0 + i, "streaming-vlm": 31.0 - 2 * i})
        for i in range(3)
    ]
    t = claims_table(apart, "ek100")
    swap = t.loc[t.index.str.startswith("Same narrator, memory swapped: CLAM vs Flash Memory")].iloc[0]
    assert swap["paper"] == "n/a (our adaptation, not in the paper)"
    assert swap["ours (mean +- std)"] == "+9.00 +- 1.00" and swap["verdict"] == "difference beyond the seed spread"
    window = t.loc[t.index.str.startswith("Bounded by pruning")].iloc[0]  # -1, +1, +3
    assert window["verdict"] == "no difference beyond the seed spread (positive in 2 of 3 seeds)"
    assert t.loc[t.index.str.contains("object accuracy on memory segments \\(FlowNar - Flash"), "verdict"].iloc[0] == (
        "not testable here"
    )
    assert claims_table(apart[:1], "ek100").loc[swap.name, "verdict"] == "one seed: no spread to judge"
