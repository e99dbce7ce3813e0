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


def test_oracle_speaks_at_the_cue_frames_and_only_says_what_the_world_allows(smoke):
    from flownar.data.world import AFFORDANCES
    from flownar.eval.text import parse_narration

    oracle = WorldOracleNarrator(smoke.synthetic_card)
    card = smoke.synthetic_card
    verbs, nouns = card["vocabulary"]["verbs"], card["vocabulary"]["nouns"]
    right = total = 0
    for clip in smoke.eval_clips("val"):
        frames = smoke.load_features(clip.video_uid, range(clip.start_frame, clip.stop_frame))
        oracle.begin_clip(clip)
        events = oracle.narrate(frames)
        assert events[0].frame == 0 and events[-1].frame == len(frames) - 1
        due = {math.ceil(n.time * smoke.fps - 1e-6) - clip.start_frame for n in clip.references[0]}
        said = {e.frame for e in events} - {0, len(frames) - 1}
        assert said == due - {0, len(frames) - 1}  # exactly the frames where the world renders its cue
        segs = {
            math.ceil(s["end"] * smoke.fps - 1e-6) - clip.start_frame: s
            for s in card["videos"][clip.video_uid]["segments"]
        }
        for e in events:
            assert e.text.startswith("You ") and e.text.endswith(".")
            verb, noun = parse_narration(e.text, verbs, nouns)
            assert (verb, noun) in AFFORDANCES, e.text
            if e.frame in segs:
                right, total = right + (noun == segs[e.frame]["noun"]), total + 1
    assert right / total >= 0.9, (right, total)


def test_oracle_refuses_an_older_world(smoke):
    card = dict(smoke.synthetic_card, version=3)
    with pytest.raises(ValueError, match="v4"):
        WorldOracleNarrator(card)


def test_run_world_oracle_scores_like_a_system_and_resumes(smoke, tmp_path):
    rec = run_world_oracle(smoke, tmp_path / "pred", tmp_path / "m.json", progress=False)
    assert rec["system"] == "world-oracle" and rec["run"]["done"] == len(smoke.eval_clips("val"))
    assert rec["scores"]["corrected"]["t_f1"] > 0.95 and (tmp_path / "m.json").is_file()  # a ceiling
    again = run_world_oracle(smoke, tmp_path / "pred", progress=False)
    assert again["run"]["done"] == 0 and again["scores"]["corrected"]["t_f1"] == rec["scores"]["corrected"]["t_f1"]


def test_world_oracle_needs_the_world(smoke, tmp_path):
    root = tmp_path / "real"
    shutil.copytree(smoke.root, root)
    (root / SYNTHETIC_CARD_FILE).unlink()
    with pytest.raises(FlowNarError, match="world oracle"):
        run_world_oracle(FlowNarData(root, "ek100"), tmp_path / "p", progress=False)


# ---------------------------------------------------------------------------------------------------- claims
ALL = ("videollm-online", "videollm-mod", "flownar-c", "flownar", "dcm-only", "flash-vstream", "streaming-vlm")


def _seed_dir(path, f1: dict, memory: dict | None = None, cache_reduction: float = 84.6):
    """A complete seed folder as the pipeline writes it: per-system metrics and oracle JSON, the content scores,
    the position and efficiency tables (every system not in ``f1`` at F1 25, memory accuracy 5 %)."""
    import json

    from flownar.report import save_table
    from flownar.systems import display_name

    path.mkdir(parents=True, exist_ok=True)
    f1 = {s: f1.get(s, 25.0) for s in ALL}
    memory = {s: (memory or {}).get(s, 0.05) for s in ALL}
    for s in ALL:
        for sub, obj in (
            ("metrics", {"system": s, "scores": {"corrected": {"t_f1": f1[s] / 100}}}),
            ("oracle", {"system": s, "metrics": {"lm_ppl": 1.5, "lm_correctness": 0.5}}),
        ):
            (path / sub).mkdir(exist_ok=True)
            (path / sub / f"{s}.json").write_text(json.dumps(obj))
    rows = [{"system": s, "group": "memory", "metric": "noun", "rate": memory[s], "n": 40} for s in ALL]
    rows += [
        {"system": s, "group": g, "metric": "noun", "rate": r, "n": 100}
        for s in (*ALL, "world-oracle", "habit")
        for g, r in (("local", 0.6), ("local, habit wrong", 0.5))
    ]
    rows += [
        {"system": s, "group": "memory", "metric": "noun", "rate": 0.99, "n": 50} for s in ("world-oracle", "habit")
    ]
    (path / "content_rates.csv").write_text("# banner\n" + pd.DataFrame(rows).to_csv(index=False))
    pos = pd.DataFrame(
        {"F1 0-1x": {display_name(s): f1[s] for s in ALL}, "F1 >1x (pooled)": {display_name(s): f1[s] for s in ALL}}
    )
    eff = pd.DataFrame({"Cache reduction (x)": {display_name(s): cache_reduction for s in ALL}})
    for name, t in (("table_position", pos), ("table_efficiency", eff)):
        t.index.name = "system"
        save_table(t, path / name, "test")
    meas = pd.DataFrame(
        {"source": "this run", "system": [display_name(s) for s in ALL], "FPS / VideoLLM-online": 1.5}
    ).set_index("source")
    save_table(meas, path / "table_efficiency_measured", "test")
    params = pd.DataFrame({"decision AUC (val)": {display_name(s): 0.9 for s in ALL}})
    params.index.name = "system"
    save_table(params, path / "table_parameters", "test")
    return path


def test_the_seeds_table_is_written_beside_the_claims(tmp_path):
    """The per-system means over seeds that the claims rest on (the table the docs include)."""
    from flownar.claims import main as claims_main

    dirs = [_seed_dir(tmp_path / f"s{i}", {"flownar": 80.0 + i}) for i in range(3)]
    assert claims_main(["--dirs", *map(str, dirs), "--out", str(tmp_path / "out")]) == 0
    t = pd.read_csv(tmp_path / "out" / "table_seeds.csv", comment="#", index_col=0)
    assert t.loc["FlowNar", "F1"] == "81.0 +- 1.0" and t.loc["FlowNar", "decision AUC per seed"] == "0.90 / 0.90 / 0.90"
    assert t.loc["World oracle (ceiling)", "object, memory (%)"] == "99.0 +- 0.0"
    assert t.loc["VideoLLM-online", "memory narrations n per seed"] == "40 / 40 / 40"


def test_claims_verdicts_count_only_beyond_the_seed_spread(tmp_path):
    from flownar.claims import claims_table

    base = {"videollm-online": 20.0, "videollm-mod": 21.0, "flownar-c": 30.0, "dcm-only": 25.0}
    clear = [_seed_dir(tmp_path / f"a{i}", {**base, "flownar": 30.0 + i}) for i in range(3)]  # +9, +10, +11
    t = claims_table(clear, "ek100")
    row = t.iloc[0]
    assert row["ours (mean +- std)"] == "+10.00 +- 1.00" and row["seeds"] == 3
    assert row["verdict"] == "reproduced (beyond the seed spread)"
    assert row["paper"].startswith("+16.06")  # EK100: FlowNar 29.12 - VideoLLM-MoD 13.06, from the resources
    noisy = [_seed_dir(tmp_path / f"b{i}", {**base, "flownar": v}) for i, v in enumerate((11.0, 21.0, 31.0))]
    verdict = claims_table(noisy, "ek100").iloc[0]["verdict"]  # -10, 0, +10: the paper's +16.06 lies within
    assert verdict.startswith("inconclusive at 3 seeds") and "the paper's sign in 1 of 3 seeds" in verdict
    small = [_seed_dir(tmp_path / f"s{i}", {**base, "flownar": v}) for i, v in enumerate((20.0, 21.0, 22.0))]
    verdict = claims_table(small, "ek100").iloc[0]["verdict"]  # -1, 0, +1: the paper's +16.06 is excluded
    assert verdict.startswith("not reproduced (no effect beyond the seed spread, and the paper's figure lies above")
    worse = [_seed_dir(tmp_path / f"c{i}", {**base, "flownar": 10.0 + i}) for i in range(3)]
    assert claims_table(worse, "ek100").iloc[0]["verdict"] == "opposite (beyond the seed spread)"
    one = claims_table(clear[:1], "ek100").iloc[0]
    assert one["verdict"] == "one seed: no spread to judge (on the claim's side)" and one["seeds"] == 1
    # an input a claim needs and a folder lacks is an error naming the file, never a verdict
    import shutil

    shutil.rmtree(clear[1] / "oracle")
    with pytest.raises(FlowNarError, match=r"a1/oracle/flownar.json: missing"):
        claims_table(clear, "ek100")
    (clear[2] / "content_rates.csv").unlink()
    with pytest.raises(FlowNarError, match="content_rates.csv: missing"):
        claims_table(clear[2:], "ek100")


def test_verdicts_are_monotone_and_matching_the_paper_never_fails():
    """The rules of flownar.claims: moving ours towards the claim's side never reads worse, and a mean exactly at
    the paper's figure never reads "not reproduced" or "opposite", whatever the spread."""
    from flownar.claims import CLAIMS, verdict

    rank = {"opposite": 0, "not reproduced": 1, "inconclusive": 2, "reproduced": 3}

    def level(text):
        return next(v for k, v in rank.items() if text.startswith(k))

    spread = np.array([-1.0, 0.0, 1.0])
    for claim in [c for c in CLAIMS if c.kind in ("better", "no worse")]:
        for paper in (-3.92, 0.4, 5.0, float("nan")):
            if claim.kind == "better" and paper * claim.sign <= 0:
                continue  # a claimed improvement comes with a figure on its side
            for sd in (0.5, 2.0, 8.0):
                levels = [level(verdict(m + sd * spread, claim, paper)) for m in np.linspace(-20, 20, 81) * claim.sign]
                assert levels == sorted(levels), (claim.key, paper, sd)  # from the claim's worst side to its best
                if not np.isnan(paper):
                    at = verdict(paper + sd * spread, claim, paper)
                    assert not at.startswith(("not reproduced", "opposite")), (claim.key, paper, sd, at)


def test_paper_sign_only_where_the_paper_has_a_figure_and_no_spread_on_analytic_rows(tmp_path):
    from flownar.claims import CLAIMS, claims_table, verdict

    by_key = {c.key: c for c in CLAIMS}
    assert "the claimed direction in 2 of 3" in verdict([1.0, -1.0, 3.0], by_key["beyond_cap"])
    assert "the paper's sign" in verdict([1.0, -1.0, 3.0], by_key["dcm_f1"], 16.06)
    assert by_key["tf_ppl"].kind == by_key["tf_corr"].kind == "no worse"  # "on par" on the project page
    assert verdict([0.1, -0.2, 0.3], by_key["tf_corr"], 4.9).startswith("reproduced (on par")
    assert verdict([-9.0, -10.0, -11.0], by_key["tf_corr"], 4.9).startswith("not reproduced (worse")
    base = {"videollm-online": 20.0, "videollm-mod": 21.0, "flownar-c": 30.0, "dcm-only": 25.0, "flownar": 30.0}
    dirs = [_seed_dir(tmp_path / f"e{i}", base) for i in range(3)]
    row = claims_table(dirs, "ek100").loc[by_key["cache_ratio"].text]
    assert row["ours (mean +- std)"] == "84.60 (analytic)" and "+-" not in row["ours (mean +- std)"]
    assert row["verdict"] == "reproduced (direction; analytic, seed-independent)"


def test_claims_refuse_missing_or_foreign_seed_folders(tmp_path):
    import json

    from flownar.claims import claims_table

    base = {"videollm-online": 20.0, "videollm-mod": 21.0, "flownar-c": 30.0, "dcm-only": 25.0, "flownar": 30.0}
    a = _seed_dir(tmp_path / "a", base)
    with pytest.raises(FlowNarError, match="not found"):
        claims_table([a, tmp_path / "nope"], "ek100")
    b = _seed_dir(tmp_path / "b", base)
    (b / "provenance.json").write_text(json.dumps({"dataset": "egoexo4d"}))
    with pytest.raises(FlowNarError, match="egoexo4d"):
        claims_table([a, b], "ek100")


def test_claims_name_a_garbage_table_and_refuse_a_mix_of_profiles(tmp_path, capsys):
    """issue 28: a garbage CSV in a seed folder was a pandas traceback (or a KeyError) without the file's name;
    seed folders of the smoke and the default profile were averaged together."""
    import json

    from flownar.claims import claims_table
    from flownar.cli import main

    a, b = _seed_dir(tmp_path / "a", {}), _seed_dir(tmp_path / "b", {})
    for junk, why in (('"unclosed\n1,2,3\n', "not a readable table"), ("x,y\n1,2\n", "no column 'system'")):
        (b / "content_rates.csv").write_text(junk)
        with pytest.raises(FlowNarError, match=why) as err:
            claims_table([a, b], "ek100")
        assert str(b / "content_rates.csv") in str(err.value)
    (b / "table_position.csv").write_bytes(b"\xff\xfe\x00garbage")
    _seed_dir(tmp_path / "c", {})
    (tmp_path / "c" / "table_position.csv").write_bytes(b"\xff\xfe\x00garbage")
    assert main(["claims", "--dirs", str(a), str(tmp_path / "c"), "--out", str(tmp_path / "o")]) == 2
    assert "table_position.csv" in capsys.readouterr().err
    c, d = _seed_dir(tmp_path / "c2", {}), _seed_dir(tmp_path / "d2", {})
    for folder, profile in ((c, "smoke"), (d, "default")):
        (folder / "provenance.json").write_text(json.dumps({"dataset": "ek100", "profile": profile}))
    with pytest.raises(FlowNarError, match="different profiles"):
        claims_table([c, d], "ek100")


def test_memory_rows_read_the_content_scores(tmp_path):
    from flownar.claims import claims_table

    base = {"videollm-online": 20.0, "videollm-mod": 21.0, "flownar-c": 30.0, "dcm-only": 25.0, "flownar": 30.0}
    pairs = ((0.5, 0.2), (0.6, 0.2), (0.55, 0.25))
    dirs = [_seed_dir(tmp_path / f"m{i}", base, {"flownar": f, "dcm-only": d}) for i, (f, d) in enumerate(pairs)]
    t = claims_table(dirs, "ek100")
    row = t.loc[t.index.str.startswith("CLAM helps")].iloc[0]
    assert row["ours (mean +- std)"].startswith("+33.33") and row["seeds"] == 3
    assert row["verdict"] == "reproduced (beyond the seed spread)"


def test_question_rows_where_every_seed_has_qa_scores(tmp_path):
    """The streaming-QA rows (answers right from memory, notebook 06's qa_rates.csv, read by system key) appear only
    when every seed folder has the scores; some but not all is an error naming the others."""
    from flownar.claims import QA_CLAIMS, claims_table

    base = {"videollm-online": 20.0, "videollm-mod": 21.0, "flownar-c": 30.0, "dcm-only": 25.0, "flownar": 30.0}
    dirs = [_seed_dir(tmp_path / f"q{i}", base) for i in range(3)]
    assert QA_CLAIMS[0].text not in claims_table(dirs, "ek100").index  # no QA scores anywhere: no rows

    def qa(d, flownar):
        rate = {"flownar": flownar, "dcm-only": 10.0, "flash-vstream": 12.0, "flownar-c": 9.0, "streaming-vlm": 9.0}
        rows = [{"system": k, "group": "in_view", "value": "from memory", "rate": r} for k, r in rate.items()]
        rows.append({"system": "flownar", "group": "in_view", "value": "in view", "rate": 99.0})
        (d / "qa_rates.csv").write_text("# banner\n" + pd.DataFrame(rows).to_csv(index=False))

    qa(dirs[0], 20.0)
    with pytest.raises(FlowNarError, match=r"q1/qa_rates.csv, .*q2/qa_rates.csv \(run notebook 06\)"):
        claims_table(dirs, "ek100")
    qa(dirs[1], 21.0)
    qa(dirs[2], 22.0)
    t = claims_table(dirs, "ek100")
    clam = t.loc[QA_CLAIMS[0].text]
    assert clam["ours (mean +- std)"] == "+11.00 +- 1.00" and clam["verdict"] == "difference beyond the seed spread"
    window = t.loc[QA_CLAIMS[2].text]
    assert window["ours (mean +- std)"] == "+0.00 +- 0.00" and window["paper"].startswith("n/a")
