"""Self-conditioned narration metrics: temporal alignment (precision / recall / F1) and caption quality.

In the self-conditioned protocol a model narrates a validation clip frame by frame on its own outputs; each
narration is emitted at some frame.  This module scores the ``{frame: text}`` predictions of every clip against
the ground-truth (GT) narrations of that clip.  Two scorings are implemented:

``"paper"``
    A re-implementation of the original FlowNar evaluator (``evaluate_metrics.py``), quirks included, so that
    numbers are comparable with the published tables.

``"corrected"``
    The same metric with the original's quirks fixed.  Every difference from ``"paper"``:

    1. **Prediction time.**  paper: ``(frame_idx + 1) / fps + start``, i.e. half a second (one frame at 2 fps)
       *after* the frame at which the narration was emitted, and offset by the clip's ``start`` time, which is
       generally not on the frame grid.  corrected: ``frame_idx / fps + start_frame / fps``, the time of the frame
       that emitted the narration.  Why: the +1 frame shift and the off-grid offset move every predicted boundary
       by up to one frame, which is a systematic bias of the IoU at 2 fps.
    2. **First segment of each chain.**  Point narrations become segments between consecutive times, the first
       one starting at ``t0``.  paper: ``t0 = 0`` (video time 0) for EK100 and EgoExo4D, ``t0`` = the interval
       start for Ego4D.  corrected: ``t0`` = the clip's ``start`` time for every dataset (for Ego4D this is the
       same as paper).  Why: with ``t0 = 0`` the first GT segment and the first predicted segment both span
       the (unobserved) part of the video before the clip, often minutes long, so they match trivially (IoU
       close to 1) whatever the model does; the first segment should cover only the clip itself.
    3. **Caption pairing.**  paper: *every* GT segment is paired with the predicted segment of highest temporal
       GIoU, even when the two do not overlap at all (IoU below the 0.5 threshold, or 0), so caption scores mix
       in text that was emitted at an unrelated time.  corrected: a GT segment is paired with its best-IoU
       prediction only if that IoU >= 0.5 (the same threshold as the temporal metrics); unmatched GT segments
       contribute no pair.  Why: caption metrics should measure what is said about the right moment; timing is
       already measured by t_precision / t_recall / t_f1.  ``n_pairs`` reports how many pairs were scored.

    4. **EgoExo4D ground truth.**  paper: every description, ``ego_visible == False`` included, as the original
       evaluator.  corrected: only the descriptions the egocentric camera sees (``ClipReference.corrected_references``),
       as training uses.  Why: a narrator that sees only the egocentric video cannot narrate what it does not show.

    5. **Zero-length segments.**  paper: IoU = intersection / max(union, 1e-8), so two zero-length segments at
       the same time (the first segment of every chain when ``t0`` is the first narration's time, as 2. makes it
       for EK100 and EgoExo4D, and two narrations at the same time) have IoU 0 and never match.  corrected: they
       are identical segments, IoU 1 (:func:`iou_matrix` ``points``).  Why: otherwise a prediction at exactly the
       GT times scores below 1 (0.77 on the embedded EK100 validation set, whose first segments are all empty).

Everything else is shared by both scorings, each as the original unless listed under *Deliberate differences*:

* Text cleanup of predictions: ``text.strip()``, then remove the EOS string (default ``"<|eot_id|>"``) and
  ``"</s>"`` (strip first, then remove, as the original does: whitespace before the EOS string is kept).  The
  ``paper`` scoring cleans the narration as the original decodes it (``ClipPrediction.raw_predictions``: special
  tokens kept, the EOS included); ``corrected`` cleans the text decoded without special tokens.
* GT texts: paper uses them exactly as annotated (``ClipReference.references``, not stripped); corrected uses the
  stripped texts (``corrected_references`` when given).
* Segments (:func:`point_segments`): for times ``t_1..t_n`` in list order, segment ``k`` is
  ``(t_{k-1}, t_k)`` ordered so that start <= end, with ``t_0`` as above.  The original does not sort the times
  and neither do we (the data readers of this package hand over time-sorted lists).  GT segments are built per
  annotator list (each list has its own chain from ``t_0``) and then pooled; predicted segments are built from
  the predictions sorted by frame index.
* IoU (:func:`iou_matrix`) between every GT and every predicted segment, with the union clipped at 1e-8
  (segments may have zero length).  A pair matches if IoU >= 0.5.
* Per clip (:func:`temporal_prf`): precision = fraction of predicted segments with at least one matching GT
  segment; recall = fraction of GT segments with at least one matching prediction; F1 = harmonic mean (0 if
  P + R = 0).  A clip with no predictions has P = R = F1 = 0.  (The original would crash on such a clip.)
  The reported ``t_precision`` / ``t_recall`` / ``t_f1`` are unweighted means over clips.  A clip with no GT
  narration at all is left out of the means, as the original skips it (a warning says so).
* Caption scores (:func:`flownar.eval.captions.caption_scores`): METEOR, ROUGE-L and CIDEr(-D) from
  pycocoevalcap at corpus level over all (GT text, paired prediction text) pairs of all clips, one reference per
  pair, **without** the PTB tokenizer (texts as they are: whitespace tokens, case and punctuation kept).  Empty
  texts are scored as they are (pycocoevalcap 1.2 scores an empty candidate as zero words).  METEOR needs a Java
  runtime; without one it is NaN and a warning says so.

Deliberate differences from the original pipeline that reach the scored inputs (the scoring itself has none):

* METEOR's input line: every whitespace run in a text (newlines included) becomes one space and the text is
  stripped before it is sent to the jar, as the original's vendored ``meteor.py`` does to its whole line (so the
  scores are the same) except that we do it per text, so a stray ``|||`` or newline in a narration cannot break
  the jar's line protocol.
* The narration cap: the original decodes at most 100 tokens; so does the ``paper`` profile here
  (:attr:`flownar.profiles.Profile.narration_cap`); the embedded profiles cap word-level narrations at 32 tokens.
* Frame of a GT time (:func:`flownar.data.samples.frame_of`): ``ceil(t * fps - 1e-6)`` rather than
  ``ceil(t * fps)``, so that a time written as 1.5000000001 s does not move to the next frame through float error.
  This affects which frame a narration is trained and teacher-forced at, not the self-conditioned scoring.
* The first prompt of a self-conditioned stream is tokenized as in training (the original tokenizes ``'.'`` and
  ``'\n'`` separately there, a layout it never trained on): this changes what the model sees, not the scoring.

Returned metrics are fractions (not percentages).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..data.layouts import DATASETS
from .captions import caption_scores

__all__ = [
    "ClipPrediction",
    "ClipReference",
    "DATASETS",
    "SCORINGS",
    "IOU_THRESHOLD",
    "clean_text",
    "prediction_time",
    "chain_start",
    "point_segments",
    "iou_matrix",
    "giou_matrix",
    "temporal_prf",
    "clip_matches",
    "evaluate_clips",
    "evaluate_both",
    "POSITION_BINS",
    "temporal_prf_by_position",
]

SCORINGS = ("paper", "corrected")
IOU_THRESHOLD = 0.5
_UNION_EPS = 1e-8


# ----------------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class ClipPrediction:
    """The narrations a model emitted on one clip.

    ``predictions`` maps the frame index *relative to the clip start* at which a narration was emitted to the
    decoded text (EOS string included or not).  Keys may be ints or numeric strings (as read back from JSON).
    ``raw_predictions`` (optional, same keys): the text as the original decodes it (special tokens kept, EOS
    included); the ``paper`` scoring uses it when given.
    """

    clip_id: str
    predictions: dict[int, str] = field(default_factory=dict)
    raw_predictions: dict[int, str] | None = None

    def for_scoring(self, scoring: str) -> dict[int, str]:
        return self.raw_predictions if scoring == "paper" and self.raw_predictions is not None else self.predictions


@dataclass
class ClipReference:
    """The ground truth of one clip.

    ``references``: one list of ``(time_seconds, text)`` per annotator (objects with ``.time`` and ``.text``
    attributes are accepted too).  ``start_time``: the original evaluator's ``start`` (EK100: the first GT time
    of the video; EgoExo4D: the minimum first timestamp over annotators; Ego4D: the summary interval start).
    ``start_frame``: absolute frame index of the clip's first frame.  ``dataset``: ``"ek100"``, ``"ego4d"`` or
    ``"egoexo4d"``.  ``corrected_references`` (optional, same shape): the ground truth of the ``corrected``
    scoring when it differs (EgoExo4D: ego-visible descriptions only; texts stripped); default: ``references``.
    """

    clip_id: str
    references: list[list[tuple[float, str]]]
    start_time: float
    start_frame: int
    dataset: str
    corrected_references: list[list[tuple[float, str]]] | None = None

    def for_scoring(self, scoring: str) -> list[list[tuple[float, str]]]:
        if scoring == "corrected" and self.corrected_references is not None:
            return self.corrected_references
        return self.references


def _check_scoring(scoring: str) -> str:
    if scoring not in SCORINGS:
        raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")
    return scoring


def _check_dataset(dataset: str) -> str:
    d = str(dataset).lower()
    if d not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    return d


def _time_text(entry: Any) -> tuple[float, str]:
    if hasattr(entry, "time") and hasattr(entry, "text"):
        return float(entry.time), str(entry.text)
    t, x = entry
    return float(t), str(x)


# ----------------------------------------------------------------------------------------------------------------
# Definitions
# ----------------------------------------------------------------------------------------------------------------
def clean_text(text: str, eos: str | None = "<|eot_id|>") -> str:
    """Cleanup of a predicted narration: ``text.strip()``, then remove every occurrence of ``eos`` and of
    ``"</s>"`` (in this order, as the original: ``" a b <|eot_id|>"`` becomes ``"a b "``)."""
    out = str(text).strip()
    for token in (eos, "</s>"):
        if token:
            out = out.replace(token, "")
    return out


def prediction_time(frame_idx: int, ref: ClipReference, scoring: str = "paper", fps: float = 2.0) -> float:
    """Time in seconds (video time) assigned to a narration emitted at ``frame_idx`` (relative to the clip start).

    paper: ``(frame_idx + 1) / fps + ref.start_time``; corrected: ``frame_idx / fps + ref.start_frame / fps``.
    """
    if _check_scoring(scoring) == "paper":
        return (float(frame_idx) + 1.0) / fps + float(ref.start_time)
    return float(frame_idx) / fps + float(ref.start_frame) / fps


def chain_start(ref: ClipReference, scoring: str = "paper") -> float:
    """``t0``, where the first segment of every chain (GT annotator lists and the predictions) starts.

    paper: 0.0 for EK100 and EgoExo4D (video time 0), ``ref.start_time`` (the interval start) for Ego4D.
    corrected: ``ref.start_time`` for every dataset.
    """
    dataset = _check_dataset(ref.dataset)
    if _check_scoring(scoring) == "paper" and dataset in ("ek100", "egoexo4d"):
        return 0.0
    return float(ref.start_time)


def point_segments(times: Sequence[float], t0: float) -> list[tuple[float, float]]:
    """Point times to segments: with ``t_0 = t0`` and ``times = t_1..t_n`` *in the given order* (not re-sorted,
    as the original), segment ``k`` is ``(t_{k-1}, t_k)`` written so that start <= end.  ``n`` times give ``n``
    segments; equal consecutive times give a zero-length segment."""
    chain = [float(t0)] + [float(t) for t in times]
    return [(a, b) if b >= a else (b, a) for a, b in zip(chain[:-1], chain[1:])]


def _as_segments(x: Any) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 2), dtype=np.float64)
    return arr.reshape(-1, 2)


def _inter_union(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gs, ge = gt[:, 0][:, None], gt[:, 1][:, None]
    ps, pe = pred[:, 0][None, :], pred[:, 1][None, :]
    inter = np.maximum(0.0, np.minimum(ge, pe) - np.maximum(gs, ps))
    union = (ge - gs) + (pe - ps) - inter
    return inter, union


def iou_matrix(gt: Any, pred: Any, points: bool = False) -> np.ndarray:
    """Temporal IoU between every GT segment (rows, ``(G, 2)``) and every predicted segment (columns, ``(P, 2)``):
    ``|A ∩ B| / max(|A ∪ B|, 1e-8)`` with ``|A ∩ B| = max(0, min(ends) - max(starts))`` and
    ``|A ∪ B| = |A| + |B| - |A ∩ B|``.  Returns a ``(G, P)`` array. ``points`` (the ``corrected`` scoring): two
    zero-length segments at the same time are identical, IoU 1 (the original's formula gives them 0)."""
    gt, pred = _as_segments(gt), _as_segments(pred)
    inter, union = _inter_union(gt, pred)
    iou = inter / np.clip(union, _UNION_EPS, None)
    if points:
        same_point = (union <= _UNION_EPS) & (np.abs(gt[:, 0][:, None] - pred[:, 0][None, :]) <= 1e-6)
        iou = np.where(same_point, 1.0, iou)
    return iou


def giou_matrix(gt: Any, pred: Any) -> np.ndarray:
    """Temporal generalized IoU, ``(G, P)``: ``IoU - (|C| - |U|) / max(|C|, 1e-8)`` with ``C`` the smallest
    span enclosing both segments, ``U`` their (unclipped) union and IoU as in :func:`iou_matrix`.  In [-1, 1];
    for disjoint segments it is negative and grows towards 0 as they get closer."""
    gt, pred = _as_segments(gt), _as_segments(pred)
    inter, union = _inter_union(gt, pred)
    iou = inter / np.clip(union, _UNION_EPS, None)
    enclose = np.maximum(gt[:, 1][:, None], pred[:, 1][None, :]) - np.minimum(gt[:, 0][:, None], pred[:, 0][None, :])
    return iou - (enclose - union) / np.clip(enclose, _UNION_EPS, None)


def temporal_prf(
    gt_segments: Any, pred_segments: Any, threshold: float = IOU_THRESHOLD, points: bool = False
) -> tuple[float, float, float]:
    """Per-clip temporal precision, recall and F1.  A GT/prediction pair matches if IoU >= ``threshold``.
    Precision = (# predicted segments matching >= 1 GT segment) / (# predicted segments); recall = (# GT segments
    matched by >= 1 prediction) / (# GT segments); F1 = 2PR / (P + R).  Each is 0 when its denominator is 0."""
    gt, pred = _as_segments(gt_segments), _as_segments(pred_segments)
    if len(gt) == 0 or len(pred) == 0:
        return 0.0, 0.0, 0.0
    matches = iou_matrix(gt, pred, points) >= threshold
    precision = float(np.any(matches, axis=0).sum()) / len(pred)
    recall = float(np.any(matches, axis=1).sum()) / len(gt)
    f1 = 2.0 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return precision, recall, f1


# ----------------------------------------------------------------------------------------------------------------
# One clip
# ----------------------------------------------------------------------------------------------------------------
def clip_matches(
    pred: ClipPrediction | None,
    ref: ClipReference,
    scoring: str = "paper",
    fps: float = 2.0,
    eos: str | None = "<|eot_id|>",
) -> dict:
    """Segments, temporal P/R/F1 and caption pairs of one clip.

    Returns a dict with ``clip_id``; ``gt_segments`` ``(G, 2)`` and ``gt_texts`` (the annotator chains pooled in
    order); ``pred_times`` (seconds, per :func:`prediction_time`), ``pred_segments`` ``(P, 2)`` and
    ``pred_texts`` (cleaned, predictions sorted by frame index); ``t0`` (:func:`chain_start`); ``iou`` ``(G, P)``;
    ``precision``, ``recall``, ``f1`` (:func:`temporal_prf`); ``pairs``: a list of
    ``(gt_text, pred_text, gt_idx, pred_idx)``.  Pairing, paper: every GT segment with the prediction of highest
    GIoU (first on ties), whatever its IoU; corrected: every GT segment whose highest IoU is >= 0.5 with that
    prediction (first on ties), others unpaired.  No predictions: P = R = F1 = 0 and no pairs.
    """
    scoring = _check_scoring(scoring)
    _check_dataset(ref.dataset)
    if pred is not None and str(pred.clip_id) != str(ref.clip_id):
        raise ValueError(f"prediction for clip {pred.clip_id!r} scored against reference {ref.clip_id!r}")
    t0 = chain_start(ref, scoring)

    gt_segments: list[tuple[float, float]] = []
    gt_texts: list[str] = []
    for annotator in ref.for_scoring(scoring):
        entries = [_time_text(e) for e in annotator]
        gt_segments.extend(point_segments([t for t, _ in entries], t0))
        gt_texts.extend(x for _, x in entries)

    items = sorted(
        ((int(k), v) for k, v in (pred.for_scoring(scoring) if pred is not None else {}).items()), key=lambda kv: kv[0]
    )
    pred_times = [prediction_time(k, ref, scoring, fps) for k, _ in items]
    pred_texts = [clean_text(v, eos) for _, v in items]
    pred_segments = point_segments(pred_times, t0)

    gt_arr, pred_arr = _as_segments(gt_segments), _as_segments(pred_segments)
    points = scoring == "corrected"
    iou = iou_matrix(gt_arr, pred_arr, points)
    precision, recall, f1 = temporal_prf(gt_arr, pred_arr, points=points)

    pairs: list[tuple[str, str, int, int]] = []
    if len(gt_arr) and len(pred_arr):
        if scoring == "paper":
            best = giou_matrix(gt_arr, pred_arr).argmax(axis=1)
            keep = np.ones(len(gt_arr), dtype=bool)
        else:
            best = iou.argmax(axis=1)
            keep = iou[np.arange(len(gt_arr)), best] >= IOU_THRESHOLD
        pairs = [(gt_texts[g], pred_texts[int(p)], g, int(p)) for g, p in enumerate(best) if keep[g]]

    return {
        "clip_id": ref.clip_id,
        "dataset": _check_dataset(ref.dataset),
        "scoring": scoring,
        "t0": t0,
        "gt_segments": gt_arr,
        "gt_texts": gt_texts,
        "pred_times": pred_times,
        "pred_segments": pred_arr,
        "pred_texts": pred_texts,
        "iou": iou,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "pairs": pairs,
    }


# ----------------------------------------------------------------------------------------------------------------
# All clips
# ----------------------------------------------------------------------------------------------------------------
def _preview(ids: Sequence[str], n: int = 5) -> str:
    ids = list(ids)
    return ", ".join(map(repr, ids[:n])) + (f", ... ({len(ids)} in all)" if len(ids) > n else "")


def _predictions_by_clip(preds: Iterable[ClipPrediction], refs: list[ClipReference]) -> dict[str, ClipPrediction]:
    """The predictions by clip id, checked against the references: duplicates refused, clips without predictions
    and predictions without a reference warned about (stacklevel: the caller of :func:`evaluate_clips`)."""
    by_id: dict[str, ClipPrediction] = {}
    for p in preds:
        cid = str(p.clip_id)
        if cid in by_id:
            raise ValueError(f"two predictions for clip {cid!r}")
        by_id[cid] = p
    ref_ids = [str(r.clip_id) for r in refs]
    if len(set(ref_ids)) != len(ref_ids):
        dup = sorted({c for c in ref_ids if ref_ids.count(c) > 1})
        raise ValueError(f"duplicate reference clip ids: {_preview(dup)}")
    missing = [c for c in ref_ids if c not in by_id]
    if missing:
        warnings.warn(
            f"{len(missing)} of {len(ref_ids)} clips have no predictions and are scored as clips with no "
            f"narration (P = R = F1 = 0): {_preview(missing)}",
            RuntimeWarning,
            stacklevel=3,
        )
    unknown = sorted(set(by_id) - set(ref_ids))
    if unknown:
        warnings.warn(
            f"predictions for {len(unknown)} clip ids without a reference are ignored: {_preview(unknown)}",
            RuntimeWarning,
            stacklevel=3,
        )
    return by_id


def evaluate_clips(
    preds: Iterable[ClipPrediction],
    refs: Iterable[ClipReference],
    scoring: str = "paper",
    fps: float = 2.0,
    eos: str | None = "<|eot_id|>",
    with_captions: bool = True,
) -> dict:
    """Score all clips with one scoring.

    Predictions and references are paired by ``clip_id`` (not by position).  A reference without a prediction is
    scored as a clip with no predictions (P = R = F1 = 0, no caption pairs) and a warning names it; predictions
    for unknown clip ids are ignored with a warning; a reference without any GT narration is left out (warned),
    as the original skips it.  Returns ``t_precision``, ``t_recall``, ``t_f1`` (unweighted means over clips; NaN
    if no clip was scored), ``METEOR``, ``ROUGE_L``, ``CIDEr`` (:func:`~flownar.eval.captions.caption_scores`
    over the pairs of all clips; NaN with ``with_captions=False``), ``n_clips``, ``n_pairs``, ``n_skipped_no_gt``,
    ``scoring``, ``pairs`` (list of ``(clip_id, gt_text, pred_text)``) and ``per_clip`` (a DataFrame with
    clip_id, dataset, precision, recall, f1, n_pred, n_gt, n_pairs).
    """
    scoring = _check_scoring(scoring)
    refs = list(refs)
    by_id = _predictions_by_clip(preds, refs)
    rows, all_pairs, no_gt = [], [], []
    for ref in refs:
        cid = str(ref.clip_id)
        m = clip_matches(by_id.get(cid, ClipPrediction(cid, {})), ref, scoring=scoring, fps=fps, eos=eos)
        if len(m["gt_segments"]) == 0:
            no_gt.append(cid)
            continue
        rows.append(
            {
                "clip_id": cid,
                "dataset": m["dataset"],
                "precision": m["precision"],
                "recall": m["recall"],
                "f1": m["f1"],
                "n_pred": len(m["pred_segments"]),
                "n_gt": len(m["gt_segments"]),
                "n_pairs": len(m["pairs"]),
            }
        )
        all_pairs.extend((cid, g, p) for g, p, _, _ in m["pairs"])
    if no_gt:
        warnings.warn(
            f"{len(no_gt)} clips have no ground-truth narration and are left out: {_preview(no_gt)}",
            RuntimeWarning,
            stacklevel=2,
        )

    per_clip = pd.DataFrame(
        rows, columns=["clip_id", "dataset", "precision", "recall", "f1", "n_pred", "n_gt", "n_pairs"]
    )

    def mean(col: str) -> float:
        return float(per_clip[col].mean()) if len(per_clip) else float("nan")

    if with_captions:
        caps = caption_scores([(g, p) for _, g, p in all_pairs])
    else:
        caps = {"METEOR": float("nan"), "ROUGE_L": float("nan"), "CIDEr": float("nan")}
    return {
        **caps,
        "t_precision": mean("precision"),
        "t_recall": mean("recall"),
        "t_f1": mean("f1"),
        "n_clips": len(per_clip),
        "n_pairs": len(all_pairs),
        "n_skipped_no_gt": len(no_gt),
        "scoring": scoring,
        "pairs": all_pairs,
        "per_clip": per_clip,
    }


#: Positions along the stream in units of the training cap (the original trains on clips cut at ``max_num_frames``
#: and narrates whole validation videos): 0-1x, 1-2x, 2-4x, beyond.
POSITION_BINS = (0.0, 1.0, 2.0, 4.0, math.inf)


def _bin_label(a: float, b: float) -> str:
    return f">{a:g}x" if math.isinf(b) else f"{a:g}-{b:g}x"


def temporal_prf_by_position(
    preds: Iterable[ClipPrediction],
    refs: Iterable[ClipReference],
    cap_seconds: float,
    scoring: str = "corrected",
    fps: float = 2.0,
    bins: Sequence[float] = POSITION_BINS,
    eos: str | None = "<|eot_id|>",
) -> pd.DataFrame:
    """Temporal precision / recall / F1 along the stream, by where a segment ends relative to the clip's first
    frame, in units of ``cap_seconds`` (the training clips' length): where full-context systems are expected to
    degrade as streams outgrow what training showed.

    A GT segment counts in the bin of its end, and is recalled if any prediction matches it (IoU >= 0.5, as
    :func:`temporal_prf`); a predicted segment counts in the bin of its end, and is precise if it matches any GT
    segment. Counts are pooled over clips (most clips have nothing in the late bins), so P = matched predictions /
    predictions and R = matched GT / GT within the bin (NaN where a bin holds none). Also: GT segments,
    predictions and clips reaching the bin."""
    by_id = {str(p.clip_id): p for p in preds}
    edges = list(bins)
    rows = {i: {"gt": 0, "gt_hit": 0, "pred": 0, "pred_hit": 0, "clips": 0} for i in range(len(edges) - 1)}
    for ref in refs:
        m = clip_matches(by_id.get(str(ref.clip_id)), ref, scoring=scoring, fps=fps, eos=eos)
        start = ref.start_frame / fps
        matches = m["iou"] >= IOU_THRESHOLD  # (G, P)
        gt_bin = np.digitize((m["gt_segments"][:, 1] - start) / cap_seconds, edges[1:-1]) if len(matches) else []
        pr_bin = np.digitize((m["pred_segments"][:, 1] - start) / cap_seconds, edges[1:-1])
        reached = set(gt_bin) | set(pr_bin)
        for i in reached:
            rows[int(i)]["clips"] += 1
        for g, b in enumerate(gt_bin):
            rows[int(b)]["gt"] += 1
            rows[int(b)]["gt_hit"] += bool(matches.shape[1] and matches[g].any())
        for p, b in enumerate(pr_bin):
            rows[int(b)]["pred"] += 1
            rows[int(b)]["pred_hit"] += bool(matches.shape[0] and matches[:, p].any())
    out = []
    for i, r in rows.items():
        prec = r["pred_hit"] / r["pred"] if r["pred"] else float("nan")
        rec = r["gt_hit"] / r["gt"] if r["gt"] else float("nan")
        f1 = (
            2 * prec * rec / (prec + rec)
            if r["pred"] and r["gt"] and prec + rec > 0
            else (0.0 if r["gt"] else float("nan"))
        )
        out.append(
            {
                "position": _bin_label(edges[i], edges[i + 1]),
                "precision": prec,
                "recall": rec,
                "f1": f1,
                "gt_segments": r["gt"],
                "predictions": r["pred"],
                "clips": r["clips"],
            }
        )
    return pd.DataFrame(out).set_index("position")


def evaluate_both(preds: Iterable[ClipPrediction], refs: Iterable[ClipReference], **kw) -> dict[str, dict]:
    """:func:`evaluate_clips` with both scorings: ``{"paper": ..., "corrected": ...}`` (``kw``: fps, eos,
    with_captions)."""
    preds, refs = list(preds), list(refs)
    return {s: evaluate_clips(preds, refs, scoring=s, **kw) for s in SCORINGS}
