"""Content and memory scoring (flownar.eval.content): the closing rule, parsing, intervals, the habit row, and a
perfect and a wrong narrator on the smoke world."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from flownar.data.readers import FlowNarData
from flownar.data.synth import write_synthetic_dataset
from flownar.data.world import NOUNS, VERBS
from flownar.eval import content, failures
from flownar.eval.predictions import PREDICTION_VERSION, clip_file
from flownar.eval.text import parse_narration


def test_closing_rule():
    # within one frame (0.5 s at 2 fps) of the end, nearest first, each narration closes at most one segment
    assert content.closing_pairs([1.0, 2.0, 2.5], [0.5, 1.0, 2.5, 3.0], 2.0) == {0: 1, 2: 2}
    assert content.closing_pairs([1.0], [1.5], 2.0) == {0: 0} and content.closing_pairs([1.0], [1.6], 2.0) == {}
    assert content.closing_pairs([1.0, 1.5], [1.5], 2.0) == {1: 0}  # the exact one wins
    assert content.closing_pairs([2.0], [1.5, 2.5], 2.0) == {0: 0}  # a tie: the earlier narration
    assert content.closing_pairs([], [1.0], 2.0) == {}


def test_parse_narration():
    assert parse_narration("You put down the knife.", VERBS, NOUNS) == ("put down", "knife")
    assert parse_narration("You take the milk from the fridge.", VERBS, NOUNS) == ("take", "milk")
    assert parse_narration("You pick up the cup.", VERBS, NOUNS) == ("take", "cup")  # a paraphrase
    assert parse_narration("You switch off the hob.", VERBS, NOUNS) == ("turn off", "hob")
    assert parse_narration("You the knife", VERBS, NOUNS) == (None, "knife")
    assert parse_narration("", VERBS, NOUNS) == (None, None)


def test_wilson_interval():
    lo, hi = content.wilson(0, 10)
    assert lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(0.2775, abs=1e-3)
    lo, hi = content.wilson(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.7225, abs=1e-3)
    lo, hi = content.wilson(50, 100)
    assert lo < 0.5 < hi and hi - lo == pytest.approx(0.192, abs=2e-3)
    assert all(math.isnan(x) for x in content.wilson(0, 0))


def _write(out, clip, preds):
    out.mkdir(parents=True, exist_ok=True)
    rec = {"version": PREDICTION_VERSION, "clip_id": clip.clip_id, "narrations": preds}
    clip_file(out, clip.clip_id).write_text(json.dumps(rec))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = write_synthetic_dataset(tmp_path_factory.mktemp("c") / "d", "ek100", "smoke", 0, progress=False)
    return FlowNarData(root, "ek100")


def test_a_perfect_a_late_and_a_wrong_narrator(world, tmp_path):
    card = world.synthetic_card
    for clip in world.eval_clips("val"):
        segs = [s for s in card["videos"][clip.video_uid]["segments"]]
        at = {math.ceil(s["end"] * world.fps - 1e-6) - clip.start_frame: s for s in segs}
        _write(tmp_path / "perfect", clip, {str(f): s["text"] for f, s in at.items()})
        _write(tmp_path / "late", clip, {str(f + 2): s["text"] for f, s in at.items()})  # a second late
        wrong = {str(f): f"You {s['verb']} the {'cup' if s['noun'] != 'cup' else 'jar'}." for f, s in at.items()}
        _write(tmp_path / "wrong", clip, wrong)
    scored = content.score_systems(world, {s: tmp_path / s for s in ("perfect", "late", "wrong")})
    assert set(scored) == {"perfect", "late", "wrong", content.HABIT}
    r = content.rates(scored).set_index(["system", "group", "metric"])
    for g in ("local", "memory", "all"):
        assert r.loc[("perfect", g, "noun"), "rate"] == 1.0 and r.loc[("perfect", g, "pair"), "rate"] == 1.0
        assert r.loc[("perfect", g, "noun"), "closed"] == 1.0
        assert r.loc[("wrong", g, "noun"), "rate"] == 0.0 and r.loc[("wrong", g, "verb"), "rate"] == 1.0
    # a narration a second late closes nothing of its own (only a next segment that ends that soon)
    assert r.loc[("late", "all", "noun"), "closed"] < 0.2
    n_mem = int(r.loc[("perfect", "memory", "noun"), "n"])
    assert n_mem == int(r.loc[("perfect", "held", "noun"), "n"]) + int(r.loc[("perfect", "hidden", "noun"), "n"]) > 0
    assert r.loc[("perfect", "local, habit wrong", "noun"), "segments"] > 0
    # the habit row: the verb given, its most frequent training noun; right exactly where the habit is
    habit = scored[content.HABIT]
    assert habit.closed.all() and habit.verb_ok.isna().all()
    assert (habit.noun_ok == (habit.habit_noun == habit.noun)).all()
    assert r.loc[(content.HABIT, "local, habit wrong", "noun"), "rate"] == 0.0
    # every gap bin and both sides of the cap partition the memory segments
    long = content.rates(scored)
    gap_groups = [g for g in long.group.unique() if g.startswith("memory, gap")]
    per = long[(long.system == "perfect") & (long.metric == "noun")].set_index("group")
    assert per.loc[gap_groups, "segments"].sum() == per.loc["memory", "segments"]
    assert (
        per.loc[["memory, within the cap", "memory, past the cap"], "segments"].sum() == per.loc["memory", "segments"]
    )
    # the tables render every system, the habit last
    table = content.content_table(long)
    assert table.index[-1].startswith("Verb habit") and "noun: local" in table.columns
    assert table.loc["perfect", "noun: local"].startswith("100.0 [")
    assert len(content.memory_gap_table(long)) == 4 and len(content.position_table(long).columns) >= 2
    fig = content.plot_content(long)
    assert len(fig.axes) == 2
    # what two systems said on the same memory segment, beside the ground truth
    ex = failures.memory_examples(scored, "perfect", "wrong")
    assert len(ex) and (ex["ground truth"] == ex["said by perfect"]).all()
    assert (ex["said by wrong"] != ex["said by perfect"]).all()


def test_no_card_no_content(world, tmp_path):
    import shutil

    from flownar.data.layouts import SYNTHETIC_CARD_FILE

    root = tmp_path / "real"
    shutil.copytree(world.root, root)
    (root / SYNTHETIC_CARD_FILE).unlink()
    assert content.score_systems(FlowNarData(root, "ek100"), {"x": tmp_path}) == {}
    assert content.segments_of(FlowNarData(root, "ek100")).empty
    assert isinstance(content.rates({}), pd.DataFrame) and np.isnan(content.wilson(0, 0)[0])
