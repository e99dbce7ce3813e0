"""The embedded world's questions: one QA file per split beside the narrations, counted in the card, each answer
checked here against the card's ground truth (the segments), computed another way."""

import json

import pytest

from flownar.data.layouts import QA_FILE
from flownar.data.questions import QUESTION_TYPES
from flownar.data.readers import FlowNarData
from flownar.data.synth import write_synthetic_dataset
from flownar.errors import AnnotationError, DataRootError


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("qa") / "ek100", "ek100", "smoke", 0, progress=False)


def _ended(segments, t):
    return [s for s in segments if s["end"] <= t + 1e-6]


def _expected(q, segments):
    """The answer of question ``q`` recomputed from the card's segments alone (no kitchen state)."""
    past = _ended(segments, q.time)
    if q.type == "last_action":
        return past[-1]["text"]
    if q.type == "put_down":
        return f"The {[s for s in past if s['verb'] == 'put down'][-1]['noun']}."
    if q.type == "count":
        verb, noun = q.text.removeprefix("How many times did I ").removesuffix("?").split(" the ")
        n = sum((s["verb"], s["noun"]) == (verb, noun) for s in past)
        return ("Never.", "Once.", "Twice.", "Three times.", "Four times.", "Five times.", "Six times.")[n]
    if q.type == "held":
        held = []
        for s in past:
            if s["verb"] == "take":
                held.append(s["noun"])
            elif s["verb"] == "put down":
                held.remove(s["noun"])
        return " and the ".join(["The " + held[0], *held[1:]]) + "."
    return None  # container, where: checked through their evidence below


def test_every_answer_follows_from_the_ground_truth(world):
    data = FlowNarData(world, "ek100")
    card = data.synthetic_card
    for split in ("train", "val"):
        qs = data.questions(split)
        assert set(qs) == set(card["splits"][split])
        for uid, questions in qs.items():
            segments = card["videos"][uid]["segments"]
            for q in questions:
                assert q.type in QUESTION_TYPES and q.keywords and all(k in q.answer.lower() for k in q.keywords)
                want = _expected(q, segments)
                if want is not None:
                    assert q.answer == want, (uid, q)
                past = _ended(segments, q.time)
                if q.type == "container":  # the item was shown while the container was open
                    c = q.text.removeprefix("What did I last see in the ").removesuffix("?")
                    assert c in q.text and any(q.answer[4:-1] in s["visible"] and c in s["visible"] for s in past)
                if q.type == "where":  # the object was seen before the question
                    x = q.text.removeprefix("Where did I last see the ").removesuffix("?")
                    assert any(x in s["visible"] for s in past)
                assert q.gap_s >= 0 and q.gap_segments >= 0 and q.in_view == (q.gap_s <= 2.0)


def test_the_card_counts_the_files(world):
    card = json.loads((world / "flownar_synthetic.json").read_text())
    for split in ("train", "val"):
        raw = json.loads((world / "annotations" / QA_FILE.format(split=split)).read_text())["questions"]
        qs = [q for v in raw.values() for q in v]
        counts = card["questions"]["counts"][split]
        assert counts["questions"] == len(qs) > 0
        assert counts["by_type"] == {k: sum(q["type"] == k for q in qs) for k in QUESTION_TYPES}
        assert sum(counts["by_gap_caps"].values()) == sum(counts["by_gap_segments"].values()) == len(qs)


def test_missing_or_broken_question_files_are_named(world, tmp_path):
    import shutil

    root = tmp_path / "w"
    shutil.copytree(world, root)
    path = root / "annotations" / QA_FILE.format(split="val")
    raw = json.loads(path.read_text())
    uid = next(iter(raw["questions"]))
    raw["questions"][uid][0]["answer"] = 3
    path.write_text(json.dumps(raw))
    with pytest.raises(AnnotationError, match=rf"flownar_qa_val.json: {uid}\[0\]: missing or invalid \['answer'\]"):
        FlowNarData(root, "ek100").questions("val")
    path.unlink()
    with pytest.raises(DataRootError, match="flownar_qa_val.json: no questions for split 'val'"):
        FlowNarData(root, "ek100").questions("val")
