"""Failure analysis: perfect predictions give F1 = 1 and no hallucination; a wrong object is caught."""

import json

from flownar.data.readers import FlowNarData
from flownar.data.synth import write_synthetic_dataset
from flownar.eval import failures
from flownar.eval.predictions import PREDICTION_VERSION, clip_file


def _write(out, clip, preds):
    out.mkdir(parents=True, exist_ok=True)
    rec = {"version": PREDICTION_VERSION, "clip_id": clip.clip_id, "narrations": preds}  # a file says its clip
    clip_file(out, clip.clip_id).write_text(json.dumps(rec))


def test_oracle_predictions_and_a_hallucination(tmp_path):
    root = write_synthetic_dataset(tmp_path / "d", layout="ek100", profile="smoke", seed=0, progress=False)
    data = FlowNarData(root, "ek100")
    clips = data.eval_clips("val")
    card = data.synthetic_card
    for clip in clips:  # narrate exactly at every GT time (corrected scoring: frame time), with the GT text
        ref = clip.references[0]
        preds = {str(round(n.time * data.fps) - clip.start_frame): n.text for n in ref}
        _write(tmp_path / "perfect", clip, preds)
        bad = dict(preds)
        first_late = sorted(bad, key=int)[1]
        bad[first_late] = "You take the unicorn."  # not a vocabulary noun: not counted
        _write(tmp_path / "bad", clip, bad)
    perfect = failures.analyse(data, tmp_path / "perfect", "flownar")
    # (GT times are rounded to frames, and two narrations on one frame keep one: not exactly 1)
    assert perfect["clips"].f1.mean() > 0.85 and perfect["gt"].matched.mean() > 0.85
    named = perfect["preds"].dropna(subset=["noun"])
    assert len(named) and named.object_visible.mean() > 0.9
    # a narration naming an object nowhere in view is a hallucination
    clip = clips[0]
    seg_nouns = {s["noun"] for s in card["videos"][clip.video_uid]["segments"]}
    absent = next(
        n
        for n in card["vocabulary"]["nouns"]
        if all(n not in s["visible"] + s.get("held", []) for s in card["videos"][clip.video_uid]["segments"])
    )
    assert absent not in seg_nouns
    ref = clip.references[0]
    preds = {str(round(n.time * data.fps) - clip.start_frame): f"You take the {absent}." for n in ref}
    _write(tmp_path / "halluc", clip, preds)
    h = failures.analyse(data, tmp_path / "halluc", "flownar")
    hp = h["preds"][h["preds"].clip_id == clip.clip_id]
    assert (hp.object_visible == False).all()  # noqa: E712
    table = failures.category_table({"flownar": perfect, "videollm-online": h})
    assert table.loc["FlowNar", "object hallucinated (%)"] < 10
    assert table.loc["VideoLLM-online", "object hallucinated (%)"] > 0
    assert failures.noun_in("You put down the pan lid.", ["pan", "lid"]) == "pan"
    # the object acted on comes first; the container of "from the ..." is not the narration's object
    nouns = ["drawer", "knife", "cupboard", "jar"]
    assert failures.noun_in("You take the knife from the drawer.", nouns) == "knife"
    assert failures.noun_in("You take the jar from the cupboard.", sorted(nouns, key=len, reverse=True)) == "jar"
    assert failures.noun_in("You wait.", nouns) is None
