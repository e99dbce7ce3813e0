"""Self-conditioned metrics (flownar.eval.metrics): every expected number below is computed by hand."""

from __future__ import annotations

import math
import shutil
import warnings

import numpy as np
import pytest

from flownar.eval import captions as C
from flownar.eval import metrics as M
from flownar.eval.captions import caption_scores
from flownar.eval.metrics import (
    ClipPrediction,
    ClipReference,
    clip_matches,
    evaluate_both,
    evaluate_clips,
    giou_matrix,
    iou_matrix,
    point_segments,
    temporal_prf,
)


def ref(cid="c", references=(), start_time=0.0, start_frame=0, dataset="ego4d"):
    return ClipReference(cid, [list(r) for r in references], start_time, start_frame, dataset)


@pytest.fixture
def no_meteor(monkeypatch):
    """Fail loudly if anything tries to start the METEOR JVM."""

    def boom():
        raise AssertionError("METEOR must not be started here")

    monkeypatch.setattr(C, "_new_meteor", boom)
    monkeypatch.setattr(C, "_meteor_scorer", None)


# ---------------------------------------------------------------------------------------------------------------
# segments, IoU, GIoU
# ---------------------------------------------------------------------------------------------------------------
def test_point_segments():
    assert point_segments([2, 5, 9], 0) == [(0, 2), (2, 5), (5, 9)]
    # equal times -> zero-length segment; not re-sorted: (5, 3) is written start <= end as (3, 5)
    assert point_segments([4, 4, 5, 3], 1) == [(1, 4), (4, 4), (4, 5), (3, 5)]
    # t0 after the first time: the first segment is ordered start <= end
    assert point_segments([8, 12], 10.2) == [(8, 10.2), (8, 12)]
    assert point_segments([], 3.0) == []


def test_iou_by_hand():
    gt = np.array([[0.0, 4.0], [10.0, 20.0], [5.0, 5.0]])
    pred = np.array([[2.0, 6.0], [12.0, 14.0], [5.0, 5.0]])
    iou = iou_matrix(gt, pred)
    assert iou.shape == (3, 3)
    # overlap: (0,4) vs (2,6): inter 2, union 4 + 4 - 2 = 6 -> 1/3
    assert iou[0, 0] == pytest.approx(1 / 3)
    # disjoint: (0,4) vs (12,14) -> 0
    assert iou[0, 1] == 0.0
    # nested: (10,20) contains (12,14): inter 2, union 10 -> 0.2
    assert iou[1, 1] == pytest.approx(0.2)
    # zero-length vs zero-length at the same point: inter 0, union 0 clipped to 1e-8 -> 0 (no division by zero)
    assert iou[2, 2] == 0.0
    # zero-length inside a segment: inter 0 -> 0
    assert iou[2, 0] == 0.0
    # empty inputs keep their shape
    assert iou_matrix(np.zeros((0, 2)), pred).shape == (0, 3)
    assert iou_matrix(gt, []).shape == (3, 0)


def test_giou_by_hand():
    gt = np.array([[0.0, 4.0], [10.0, 20.0], [5.0, 5.0]])
    pred = np.array([[2.0, 6.0], [12.0, 14.0], [5.0, 5.0]])
    g = giou_matrix(gt, pred)
    # overlap (0,4)/(2,6): IoU 1/3, C = (0,6) = 6, U = 6 -> 1/3 - 0 = 1/3
    assert g[0, 0] == pytest.approx(1 / 3)
    # disjoint (0,4)/(12,14): IoU 0, C = 14, U = 6 -> -(14 - 6)/14 = -4/7
    assert g[0, 1] == pytest.approx(-4 / 7)
    # nested (10,20)/(12,14): C = U = 10 -> IoU = 0.2
    assert g[1, 1] == pytest.approx(0.2)
    # disjoint (10,20)/(2,6): C = (2,20) = 18, U = 14 -> -4/18
    assert g[1, 0] == pytest.approx(-4 / 18)
    # zero-length at the same point: C = 0 (clipped), U = 0 -> 0 - 0/1e-8 = 0
    assert g[2, 2] == 0.0
    # zero-length (5,5) vs (12,14): U = 2, C = (5,14) = 9 -> -7/9
    assert g[2, 1] == pytest.approx(-7 / 9)


# ---------------------------------------------------------------------------------------------------------------
# temporal precision / recall / F1
# ---------------------------------------------------------------------------------------------------------------
GT3 = [(0, 2), (2, 5), (5, 9)]
PRED4 = [(0, 2), (2, 4), (4, 5), (5, 6)]


def test_prf_by_hand():
    # IoU >= 0.5 pairs:  g(0,2)-p(0,2): 2/2 = 1        match
    #                    g(2,5)-p(2,4): 2/3 = 0.667    match
    #                    g(2,5)-p(4,5): 1/3            no
    #                    g(5,9)-p(5,6): 1/4            no     (all other pairs are disjoint)
    # precision = 2 matched preds / 4 = 0.5; recall = 2 matched GT / 3 = 2/3
    # F1 = 2 * 0.5 * (2/3) / (0.5 + 2/3) = (2/3) / (7/6) = 4/7
    p, r, f = temporal_prf(GT3, PRED4)
    assert (p, r) == (pytest.approx(0.5), pytest.approx(2 / 3))
    assert f == pytest.approx(4 / 7)
    assert temporal_prf(GT3, []) == (0.0, 0.0, 0.0)
    assert temporal_prf([], PRED4) == (0.0, 0.0, 0.0)
    # a prediction matching two pooled annotators' identical segments counts once for precision, twice for recall
    assert temporal_prf([(0, 2), (0, 2)], [(0, 2), (7, 8)]) == (0.5, 1.0, pytest.approx(2 / 3))


def test_mean_over_clips_is_unweighted_and_empty_clip_is_zero():
    # Ego4D, start 0, start_frame 0, fps 2.  paper: time = (f + 1) / 2.
    # clip "small": GT [2] -> (0,2); prediction at f = 3 -> t = 2 -> (0,2): P = R = F1 = 1.
    small = ref("small", [[(2, "a")]])
    # clip "big": GT [2, 5, 9] -> GT3; predictions at t = 2, 4, 5, 6 (f = 3, 7, 9, 11) -> PRED4: P 1/2, R 2/3, F1 4/7
    big = ref("big", [[(2, "a"), (5, "b"), (9, "c")]])
    preds = [ClipPrediction("small", {3: "x"}), ClipPrediction("big", {3: "x", 7: "y", 9: "z", 11: "w"})]
    out = evaluate_clips(preds, [small, big], scoring="paper", with_captions=False)
    # unweighted: P = (1 + 1/2)/2 = 3/4, R = (1 + 2/3)/2 = 5/6, F1 = (1 + 4/7)/2 = 11/14
    # (pooled counts would give P = 3/5, R = 3/4)
    assert out["t_precision"] == pytest.approx(3 / 4)
    assert out["t_recall"] == pytest.approx(5 / 6)
    assert out["t_f1"] == pytest.approx(11 / 14)
    assert out["n_clips"] == 2 and math.isnan(out["METEOR"])
    assert list(out["per_clip"]["n_pred"]) == [1, 4] and list(out["per_clip"]["n_gt"]) == [1, 3]
    # a third clip without predictions scores 0 and pulls the means down: P = (1 + 1/2 + 0)/3 = 1/2
    with pytest.warns(RuntimeWarning, match="no predictions"):
        out3 = evaluate_clips(preds, [small, big, ref("empty", [[(4, "a")]])], with_captions=False)
    row = out3["per_clip"].set_index("clip_id").loc["empty"]
    assert (row.precision, row.recall, row.f1, row.n_pred) == (0.0, 0.0, 0.0, 0)
    assert out3["t_precision"] == pytest.approx(0.5)
    assert out3["t_f1"] == pytest.approx((1 + 4 / 7) / 3)


# ---------------------------------------------------------------------------------------------------------------
# paper vs corrected
# ---------------------------------------------------------------------------------------------------------------
def test_time_mapping():
    r = ref(references=[[(20.0, "a")]], start_time=10.2, start_frame=20, dataset="ek100")
    p = ClipPrediction("c", {3: " you cut it.<|eot_id|>"})
    paper = clip_matches(p, r, scoring="paper")
    corr = clip_matches(p, r, scoring="corrected")
    assert paper["pred_times"] == [pytest.approx(12.2)]  # (3 + 1)/2 + 10.2
    assert corr["pred_times"] == [pytest.approx(11.5)]  # 3/2 + 20/2
    assert paper["pred_texts"] == corr["pred_texts"] == ["you cut it."]
    assert M.clean_text("a b</s>") == "a b" and M.clean_text(" a <|eot_id|>") == "a "  # strip, then remove


def test_first_segment_start():
    gt = [[(12.0, "a"), (14.0, "b")]]
    for ds in ("ek100", "egoexo4d"):
        r = ref(references=gt, start_time=10.2, start_frame=20, dataset=ds)
        np.testing.assert_allclose(clip_matches(None, r, "paper")["gt_segments"], [[0, 12], [12, 14]])
        np.testing.assert_allclose(clip_matches(None, r, "corrected")["gt_segments"], [[10.2, 12], [12, 14]])
    # Ego4D: the interval start in both; two annotators -> two chains, pooled
    r = ref(references=[[(101.0, "a"), (103.0, "b")], [(102.0, "c")]], start_time=100.0, start_frame=200)
    for s in ("paper", "corrected"):
        m = clip_matches(None, r, s)
        np.testing.assert_allclose(m["gt_segments"], [[100, 101], [101, 103], [100, 102]])
        assert m["gt_texts"] == ["a", "b", "c"]
        assert (m["precision"], m["recall"], m["f1"], m["pairs"]) == (0.0, 0.0, 0.0, [])
    # predictions use the same t0: EK100 paper -> (0, 12.2); corrected -> (10.2, 11.5)
    r = ref(references=gt, start_time=10.2, start_frame=20, dataset="ek100")
    np.testing.assert_allclose(clip_matches(ClipPrediction("c", {3: "x"}), r, "paper")["pred_segments"], [[0, 12.2]])
    np.testing.assert_allclose(
        clip_matches(ClipPrediction("c", {3: "x"}), r, "corrected")["pred_segments"], [[10.2, 11.5]]
    )


PAIR_REF = ref(references=[[(4, "A"), (8, "B"), (20, "C"), (30, "D")]])  # Ego4D, start 0, start_frame 0
# paper: t = (f+1)/2 -> 4, 8.5, 12; corrected: t = f/2 -> 3.5, 8, 11.5
PAIR_PRED = ClipPrediction("c", {16: "p2<|eot_id|>", 7: "p1", 23: "p3"})  # dict order does not matter


def test_caption_pairing_paper_uses_giou_for_every_gt():
    m = clip_matches(PAIR_PRED, PAIR_REF, "paper")
    np.testing.assert_allclose(m["gt_segments"], [[0, 4], [4, 8], [8, 20], [20, 30]])
    np.testing.assert_allclose(m["pred_segments"], [[0, 4], [4, 8.5], [8.5, 12]])
    # A (0,4):  p1 IoU 1 -> p1
    # B (4,8):  p2 IoU 4/4.5 = .889 (GIoU same); p1 GIoU 0; p3 GIoU -(8-7.5)/8 -> p2
    # C (8,20): p3 IoU 3.5/12 = .29 < .5 (GIoU .29, C = U); p2 IoU .5/16, GIoU .03; p1 GIoU -(20-16)/20 -> p3
    # D (20,30): IoU 0 with all; GIoU p3 -(21.5-13.5)/21.5 = -.37, p2 -(26-14.5)/26 = -.44, p1 -(30-14)/30 -> p3
    assert [(g, p) for g, p, _, _ in m["pairs"]] == [("A", "p1"), ("B", "p2"), ("C", "p3"), ("D", "p3")]
    assert [(gi, pi) for _, _, gi, pi in m["pairs"]] == [(0, 0), (1, 1), (2, 2), (3, 2)]
    # temporal: preds p1, p2 matched -> P 2/3; GT A, B -> R 2/4
    assert (m["precision"], m["recall"]) == (pytest.approx(2 / 3), 0.5)


def test_caption_pairing_corrected_requires_a_match():
    m = clip_matches(PAIR_PRED, PAIR_REF, "corrected")
    np.testing.assert_allclose(m["pred_segments"], [[0, 3.5], [3.5, 8], [8, 11.5]])
    # A (0,4) vs (0,3.5): 3.5/4 = .875 -> p1;  B (4,8) vs (3.5,8): 4/4.5 -> p2
    # C (8,20) vs (8,11.5): 3.5/12 < .5 -> dropped;  D: IoU 0 with all -> dropped
    assert [(g, p) for g, p, _, _ in m["pairs"]] == [("A", "p1"), ("B", "p2")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        both = evaluate_both([PAIR_PRED], [PAIR_REF], with_captions=False)
    assert (both["paper"]["n_pairs"], both["corrected"]["n_pairs"]) == (4, 2)
    assert both["corrected"]["pairs"] == [("c", "A", "p1"), ("c", "B", "p2")]


# ---------------------------------------------------------------------------------------------------------------
# caption scores
# ---------------------------------------------------------------------------------------------------------------
SAME = [
    ("you open the fridge door", "you open the fridge door"),
    ("she cuts a red onion slowly", "she cuts a red onion slowly"),
]
WRONG = [
    ("you open the fridge door", "a dog runs across green grass"),
    ("she cuts a red onion slowly", "the man drives his car home"),
]


@pytest.mark.skipif(shutil.which("java") is None, reason="needs a Java runtime for METEOR")
def test_caption_scores_with_java():
    # The only test that starts the METEOR JVM (about 20 s on a busy 2-core machine); later calls reuse it.
    same = caption_scores(SAME)
    # ROUGE-L: LCS = whole sentence -> 1.  CIDEr-D: identical pairs with no n-gram shared between the two
    # references -> cosine 1 for n = 1..4 (all sentences have >= 4 words), no length penalty -> 10 * 1.
    assert same["ROUGE_L"] == 1.0
    assert same["CIDEr"] == pytest.approx(10.0)
    assert same["METEOR"] == pytest.approx(1.0, abs=1e-3)
    wrong = caption_scores(WRONG)  # no word in common
    assert (wrong["METEOR"], wrong["ROUGE_L"], wrong["CIDEr"]) == (0.0, 0.0, 0.0)
    # empty candidate (placeholder) and a partial match, through evaluate_clips on the same JVM
    r = ref(references=[[(4, "you open the fridge door")]])
    out = evaluate_clips([ClipPrediction("c", {7: "you open the door<|eot_id|>"})], [r])
    assert out["n_pairs"] == 1
    # ROUGE-L: LCS 4, P = 4/4, R = 4/5 -> (1 + 1.44) * 1 * .8 / (.8 + 1.44 * 1) = 1.952 / 2.24
    assert out["ROUGE_L"] == pytest.approx(1.952 / 2.24)
    assert 0.0 < out["METEOR"] < 1.0
    assert caption_scores([("a b c", "")])["METEOR"] == 0.0


def test_caption_scores_without_java(monkeypatch, no_meteor):
    monkeypatch.setattr(C, "java_available", lambda: False)
    with pytest.warns(RuntimeWarning, match="METEOR skipped: no Java runtime"):
        out = caption_scores(SAME)
    assert math.isnan(out["METEOR"])
    assert out["ROUGE_L"] == 1.0 and out["CIDEr"] == pytest.approx(10.0)


def test_caption_scores_java_failure(monkeypatch):
    # pycocoevalcap's real Meteor wrapper talking to a subprocess that exits at once (no JVM is started): the
    # broken pipe / empty reply must become NaN + a warning, and dropping the wrapper (whose lock stays held
    # after the failure) must not hang.
    import subprocess
    import sys
    import threading

    from pycocoevalcap.meteor.meteor import Meteor

    def dead_meteor():
        m = Meteor.__new__(Meteor)
        m.lock = threading.Lock()
        m.meteor_p = subprocess.Popen(
            [sys.executable, "-c", "pass"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        m.meteor_p.wait()
        return m

    monkeypatch.setattr(C, "java_available", lambda: True)
    monkeypatch.setattr(C, "_meteor_scorer", None)
    monkeypatch.setattr(C, "_new_meteor", dead_meteor)
    with pytest.warns(RuntimeWarning, match="METEOR skipped: the Java subprocess failed"):
        out = caption_scores(WRONG)
    assert math.isnan(out["METEOR"]) and out["ROUGE_L"] == 0.0
    assert C._meteor_scorer is None  # dropped, so the next call starts a fresh JVM


def test_zero_pairs_give_zeros_without_java(no_meteor):
    assert caption_scores([]) == {"METEOR": 0.0, "ROUGE_L": 0.0, "CIDEr": 0.0}
    # a clip with no predictions contributes no pairs -> zeros, Java never started
    with pytest.warns(RuntimeWarning, match="no predictions"):
        out = evaluate_clips([], [ref(references=[[(4, "a")]])])
    assert (out["METEOR"], out["CIDEr"], out["n_pairs"], out["t_f1"]) == (0.0, 0.0, 0, 0.0)


# ---------------------------------------------------------------------------------------------------------------
# pairing predictions with references
# ---------------------------------------------------------------------------------------------------------------
def test_evaluate_clips_pairs_by_clip_id():
    ra = ref("a", [[(2, "x")]])  # paper: f = 3 -> (0, 2) matches; f = 9 -> (0, 5) does not (IoU 2/5)
    rb = ref("b", [[(5, "y")]])  # f = 9 -> (0, 5) matches
    preds = [ClipPrediction("b", {9: "y"}), ClipPrediction("a", {3: "x"})]
    out = evaluate_clips(preds, [ra, rb], with_captions=False)
    assert list(out["per_clip"]["clip_id"]) == ["a", "b"]
    assert list(out["per_clip"]["f1"]) == [1.0, 1.0]
    # by position it would have scored a with b's prediction: F1 0
    swapped = [ClipPrediction("a", {9: "y"}), ClipPrediction("b", {3: "x"})]
    assert evaluate_clips(swapped, [ra, rb], with_captions=False)["t_f1"] == 0.0
    with pytest.warns(RuntimeWarning) as rec:
        out = evaluate_clips(
            [ClipPrediction("zzz", {1: "q"}), ClipPrediction("a", {3: "x"})], [ra, rb], with_captions=False
        )
    msgs = " | ".join(str(w.message) for w in rec)
    assert "'b'" in msgs and "no predictions" in msgs and "'zzz'" in msgs
    assert out["per_clip"].set_index("clip_id")["f1"].to_dict() == {"a": 1.0, "b": 0.0}
    assert out["n_clips"] == 2 and out["t_f1"] == 0.5
    with pytest.raises(ValueError):
        evaluate_clips([ClipPrediction("a", {}), ClipPrediction("a", {})], [ra], with_captions=False)


# ---------------------------------------------------------------------------------------------------------------
# what the `paper` scoring reads, exactly as the original evaluator
# ---------------------------------------------------------------------------------------------------------------
def test_egoexo4d_paper_keeps_invisible_descriptions_corrected_drops_them(tmp_path, no_meteor):
    """The original evaluator keeps ``ego_visible == False`` descriptions in its GT (and in the clip window)."""
    from conftest import write_dataset

    from flownar.data.readers import FlowNarData
    from flownar.eval.runner import clip_references

    def desc(t, text, vis=True):
        return {"timestamp": t, "text": text, "ego_visible": vis}

    ann = {
        "val": {
            "take1": [
                {"descriptions": [desc(0.5, "hidden.", False), desc(2.0, "You stir.")]},
                {"descriptions": [desc(3.0, "You pour.")]},
            ]
        }
    }
    data = FlowNarData(write_dataset(tmp_path, "egoexo4d", {"take1": 12}, ann), "egoexo4d")
    (r,) = clip_references(data)
    pred = ClipPrediction(r.clip_id, {2: "You stir.", 4: "You pour."})
    # paper: t0 = 0, prediction times (k + 1) / 2 + 0.5 = 2.0, 3.0 -> segments (0, 2), (2, 3); GT (0, .5),
    # (.5, 2), (0, 3): pred (0, 2) matches (.5, 2) [.75] and (0, 3) [.67]; (2, 3) matches nothing [<= .33]
    paper = clip_matches(pred, r, scoring="paper")
    assert len(paper["gt_segments"]) == 3 and "hidden." in paper["gt_texts"]
    assert (paper["precision"], paper["recall"]) == pytest.approx((0.5, 2 / 3))
    # corrected: visible only, t0 = 0.5, times k / 2 + 1 / 2 = 1.5, 2.5 -> (.5, 1.5), (1.5, 2.5); GT (.5, 2), (.5, 3)
    corr = clip_matches(pred, r, scoring="corrected")
    assert len(corr["gt_segments"]) == 2 and "hidden." not in corr["gt_texts"]
    assert (corr["precision"], corr["recall"]) == pytest.approx((0.5, 0.5))


def test_paper_scores_gt_texts_as_annotated(tmp_path):
    from conftest import write_dataset

    from flownar.data.readers import FlowNarData
    from flownar.eval.runner import clip_references

    ann = {"val": {"v": [{"time": 1.0, "text": " You cut the onion. "}, {"time": 3.0, "text": "You stop."}]}}
    data = FlowNarData(write_dataset(tmp_path, "ek100", {"v": 10}, ann), "ek100")
    (r,) = clip_references(data)
    pred = ClipPrediction(r.clip_id, {1: "You cut the onion."})
    assert clip_matches(pred, r, scoring="paper")["gt_texts"] == [" You cut the onion. ", "You stop."]
    assert clip_matches(pred, r, scoring="corrected")["gt_texts"] == ["You cut the onion.", "You stop."]
    assert data.streams("val")[0].narrations[0].text == "You cut the onion."  # training sees the stripped text


def test_paper_scores_the_text_as_the_original_decodes_it():
    """The original decodes narrations keeping special tokens and removes only the EOS (and ``</s>``)."""
    r = ref(references=[[(4.0, "you open the door")]])
    pred = ClipPrediction("c", {7: "you open the door"}, raw_predictions={7: " you open<|x|> the door<|eot_id|>"})
    assert clip_matches(pred, r, scoring="paper")["pred_texts"] == ["you open<|x|> the door"]
    assert clip_matches(pred, r, scoring="corrected")["pred_texts"] == ["you open the door"]
    assert clip_matches(ClipPrediction("c", {7: "a b"}), r, scoring="paper")["pred_texts"] == ["a b"]  # no raw


@pytest.mark.skipif(shutil.which("java") is None, reason="needs a Java runtime for METEOR")
def test_empty_narration_is_scored_as_the_original():
    """An empty narration goes to METEOR as an empty string (pycocoevalcap scores it as zero words), not as a
    placeholder word, which would change the corpus score."""
    pairs = [("you open the fridge door", "you open the door"), ("she cuts a red onion slowly", "")]
    ours = caption_scores(pairs)["METEOR"]
    gts = {i: [g] for i, (g, _) in enumerate(pairs)}
    res = {i: [p] for i, (_, p) in enumerate(pairs)}
    original, _ = C._meteor_scorer.compute_score(gts, res)  # pycocoevalcap's wrapper on the raw strings
    assert ours == pytest.approx(float(original), abs=1e-9)
    with_word, _ = C._meteor_scorer.compute_score(gts, {0: res[0], 1: ["<empty>"]})
    assert ours != pytest.approx(float(with_word), abs=1e-6)


def test_narrator_records_the_raw_decoding():

    import torch

    from flownar.data.chat import ChatTokenizer
    from flownar.data.tokenizer import train_word_tokenizer
    from flownar.models import FlowNarForCausalLM, config_for
    from flownar.profiles import get as get_profile
    from flownar.stream import Narrator

    tok = train_word_tokenizer(["You open the fridge.", "You take the jar."])
    chat = ChatTokenizer(tok, frame_num_tokens=3, num_m_tokens=4)
    torch.manual_seed(0)
    model = FlowNarForCausalLM(config_for("videollm-online", chat, 8, size="micro")).eval()
    events = Narrator(model, chat, max_new_tokens=3).narrate(torch.randn(4, 3, 8))
    for e in events:
        assert e.raw_text == tok.decode(
            e.token_ids + ([chat.eos_id] if len(e.token_ids) < 3 else []), skip_special_tokens=False
        )
    assert (
        get_profile("paper").narration_cap,
        get_profile("default").narration_cap,
        get_profile(None).narration_cap,
    ) == (
        100,
        32,
        32,
    )


def test_temporal_prf_by_position_in_units_of_the_training_cap():
    """GT ends at 5, 15, 25 and 45 s with a 10-s cap: one segment per bin 0-1x, 1-2x, 2-4x, >4x. Predictions at
    the first two GT times (corrected scoring: frame time) match the first two segments only."""
    from flownar.eval.metrics import temporal_prf_by_position

    r = ref(references=[[(5.0, "a"), (15.0, "b"), (25.0, "c"), (45.0, "d")]], dataset="ek100")
    t = temporal_prf_by_position([ClipPrediction("c", {10: "a", 30: "b"})], [r], cap_seconds=10.0)
    assert list(t.index) == ["0-1x", "1-2x", "2-4x", ">4x"]
    assert t["gt_segments"].tolist() == [1, 1, 1, 1] and t["predictions"].tolist() == [1, 1, 0, 0]
    assert t.loc["0-1x", "f1"] == 1.0 and t.loc["1-2x", "f1"] == 1.0
    assert t.loc["2-4x", "recall"] == 0.0 and t.loc["2-4x", "f1"] == 0.0 and math.isnan(t.loc["2-4x", "precision"])
    assert t["clips"].tolist() == [1, 1, 1, 1]
    # a clip that is never narrated counts its GT, predictions none
    t2 = temporal_prf_by_position([], [r], cap_seconds=10.0)
    assert t2["recall"].tolist() == [0.0] * 4 and t2["predictions"].sum() == 0


def test_corrected_scoring_matches_identical_zero_length_segments():
    """corrected (fix 5): two zero-length segments at the same time are identical (IoU 1); paper keeps the
    original's 0. An EK100 clip starts at its first narration, so its first GT segment is empty: predictions at
    exactly the GT times score F1 = 1 corrected, and miss that segment under paper's formula."""
    gt = np.array([[5.0, 5.0], [5.0, 9.0]])
    pred = np.array([[5.0, 5.0], [5.5, 5.5]])
    assert iou_matrix(gt, pred)[0, 0] == 0.0
    assert iou_matrix(gt, pred, points=True)[0, 0] == 1.0
    assert iou_matrix(gt, pred, points=True)[0, 1] == 0.0  # another point: still 0
    assert iou_matrix(gt, pred, points=True)[1, 0] == 0.0  # a point inside a segment: still 0
    r = ClipReference("c", [[(5.0, "a"), (9.0, "b"), (12.0, "c")]], 5.0, 10, "ek100")
    p = ClipPrediction("c", {0: "a", 8: "b", 14: "c"})  # frames 10, 18, 24 at 2 fps = 5, 9, 12 s
    assert clip_matches(p, r, "corrected")["f1"] == 1.0
    pr, rc, f1 = temporal_prf(clip_matches(p, r, "corrected")["gt_segments"], [[5.0, 5.0], [5.0, 9.0], [9.0, 12.0]])
    assert rc == pytest.approx(2 / 3)  # without points the empty first segment never matches
