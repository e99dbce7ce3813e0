"""How learnable the embedded world is: linear probes on its frames, and the priors a model could use instead.

A probe is a linear classifier (L2-regularised logistic regression, fitted by L-BFGS) trained on the training
split and scored on the validation split. The world is *learnable and measurable* when

* **when** is decidable from one frame but not certain: :func:`completion_probe` (does a narration fall in this
  frame?) scores a ROC AUC of 0.90-0.98 with all tokens;
* **what** is legible: :func:`segment_probes` names the object (noun) and the verb of a local segment from the
  mean of its frames (>= 0.90 for the noun);
* **memory is necessary**: the same probe fitted on memory segments (held / hidden items, whose frames show a
  generic prototype instead of the object) does no better than the *habit* (the verb's most frequent training
  noun) + 0.15, and the habit itself answers at most 35 % of memory segments.

The segment probes read the synthetic card's ground truth, so they exist only on embedded data.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pandas as pd
import torch

from .readers import FlowNarData

#: the probe's L2 weight (on standardised inputs)
L2 = 1e-2


def roc_auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U / (n_pos n_neg), ties counted half); nan without both classes."""
    score, positive = np.asarray(score, dtype=np.float64), np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inv, counts = np.unique(score, return_inverse=True, return_counts=True)
    avg_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based mean rank of each distinct value
    ranks = avg_rank[inv]
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _fit_linear(X: torch.Tensor, y: torch.Tensor, n_classes: int, weight: torch.Tensor | None = None):
    """Softmax regression (binary: one logit) on standardised ``X`` (N, F); returns ``predict(X) -> scores``."""
    mu, sd = X.mean(0), X.std(0) + 1e-6
    Z = (X - mu) / sd
    out = 1 if n_classes == 2 else n_classes
    W = torch.zeros(Z.shape[1], out, requires_grad=True)
    b = torch.zeros(out, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logits = Z @ W + b
        if out == 1:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], y.float(), pos_weight=weight)
        else:
            loss = torch.nn.functional.cross_entropy(logits, y)
        loss = loss + L2 * (W * W).sum()
        loss.backward()
        return loss

    with torch.random.fork_rng():
        opt.step(closure)
    W, b = W.detach(), b.detach()
    return lambda Xv: ((Xv - mu) / sd) @ W + b


def completion_probe(
    data: FlowNarData,
    train_split: str = "train",
    val_split: str = "val",
    tokens: list[int] | None = None,
    max_videos: int = 60,
    labels: str = "world",
) -> float:
    """How decidable "a narration is due in this frame" is from that one frame alone: a linear probe (classes
    balanced) on the frame's tokens (all, or ``tokens``), fitted on ``train_split`` (its first ``max_videos``
    videos) and scored by ROC AUC on ``val_split``. A narration is due in frame ``ceil(t * fps)`` (as the samples
    place it). ``labels``: ``"world"`` takes the narration times of the synthetic card (the frames where the world
    renders its cue; real data has no card and uses its annotations), ``"annotations"`` those of every annotation
    stream of the video pooled (Ego4D's and EgoExo4D's second annotator is jittered: a noisier target). On EK100 the
    two are the same. The embedded world targets 0.90-0.98 with all tokens: decidable, not certain."""
    card = data.synthetic_card if labels == "world" else None

    def xy(split):
        uids = list(dict.fromkeys(s.video_uid for s in data.streams(split)))[:max_videos]
        times: dict[str, list[float]] = {u: [] for u in uids}
        if card is not None and "videos" in card:
            for u in uids:
                times[u] = [seg["end"] for seg in card["videos"][u]["segments"]]
        else:
            for s in data.streams(split):
                if s.video_uid in times:
                    times[s.video_uid] += [n.time for n in s.narrations]
        xs, ys = [], []
        for u in uids:
            x = data.load_features(u).float()  # (T, 10, D)
            x = x if tokens is None else x[:, tokens]
            y = np.zeros(len(x), bool)
            for t in times[u]:
                y[min(max(math.ceil(t * data.fps - 1e-6), 0), len(x) - 1)] = True
            xs.append(x.reshape(len(x), -1))
            ys.append(y)
        return torch.cat(xs), np.concatenate(ys)

    X, Y = xy(train_split)
    pos = float(Y.mean())
    predict = _fit_linear(X, torch.tensor(Y), 2, weight=torch.tensor((1 - pos) / pos))
    Xv, Yv = xy(val_split)
    return roc_auc(predict(Xv)[:, 0].numpy(), Yv)


# ---------------------------------------------------------------------------------------------------- segments
def segment_frames(seg: dict, fps: float, num_frames: int) -> range:
    """The frames inside a segment ``[start, end]`` (its narration frame, the one at ``end``, included); a very
    quick action between two frames gets its nearest frame."""
    j0, j1 = math.ceil(seg["start"] * fps - 1e-6), math.floor(seg["end"] * fps + 1e-6)
    if j1 < j0:
        j0 = j1 = round((seg["start"] + seg["end"]) * fps / 2)
    return range(max(j0, 0), min(j1, num_frames - 1) + 1)


def segment_table(data: FlowNarData, split: str) -> tuple[pd.DataFrame, torch.Tensor]:
    """One row per ground-truth segment of ``split`` (video, verb, noun, kind, memory gap) and the mean of its
    frames, ``(N, 10 * D)``. Needs the synthetic card."""
    card = data.synthetic_card
    if not card or "videos" not in card:
        raise ValueError(f"{data.root}: segment probes need the synthetic world's card (embedded data only)")
    rows, feats = [], []
    for uid in card["splits"][split]:
        x = data.load_features(uid).float()  # (T, 10, D)
        for i, seg in enumerate(card["videos"][uid]["segments"]):
            idx = segment_frames(seg, data.fps, len(x))
            feats.append(x[idx.start : idx.stop].mean(0).reshape(-1))
            rows.append(
                {
                    "video_uid": uid,
                    "segment": i,
                    "verb": seg["verb"],
                    "noun": seg["noun"],
                    "kind": seg["kind"],
                    "memory": seg["kind"] != "local",
                    "gap_segments": seg.get("gap_segments"),
                }
            )
    return pd.DataFrame(rows), torch.stack(feats) if feats else torch.zeros(0)


def verb_habit(train: pd.DataFrame) -> dict[str, str]:
    """The verb's most frequent training noun (ties: the alphabetically first), over every training segment: the
    prior a narrator that ignores the frames would name."""
    counts: dict[str, Counter] = {}
    for v, n in zip(train.verb, train.noun):
        counts.setdefault(v, Counter())[n] += 1
    return {v: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for v, c in counts.items()}


def _probe_accuracy(Xtr, ytr: pd.Series, Xva, yva: pd.Series) -> float:
    if len(ytr) == 0 or len(yva) == 0:
        return float("nan")
    classes = sorted(set(ytr))
    index = {c: i for i, c in enumerate(classes)}
    y = torch.tensor([index[c] for c in ytr])
    if len(classes) == 1:
        pred = [classes[0]] * len(yva)
    else:
        scores = _fit_linear(Xtr, y, max(len(classes), 3))(Xva)
        pred = [classes[i] for i in scores.argmax(1).tolist()]
    return float(np.mean([p == t for p, t in zip(pred, yva)]))


def segment_probes(data: FlowNarData, train_split: str = "train", val_split: str = "val") -> pd.DataFrame:
    """What a segment's own frames say, on the validation split: rows *local* / *memory* segments; columns the
    noun probe and the verb probe (each fitted on the training segments of the same kind), the noun probe fitted
    on local segments and applied to memory ones, the verb habit's noun accuracy and the count."""
    tr, Xtr = segment_table(data, train_split)
    va, Xva = segment_table(data, val_split)
    habit = verb_habit(tr)
    rows = {}
    for name, mem in (("local", False), ("memory", True)):
        a, b = np.array(tr.memory == mem), np.array(va.memory == mem)
        local_tr = np.array(~tr.memory)
        rows[name] = {
            "segments (val)": int(b.sum()),
            "noun probe": _probe_accuracy(Xtr[a], tr.noun[a], Xva[b], va.noun[b]),
            "noun probe fitted on local": _probe_accuracy(Xtr[local_tr], tr.noun[local_tr], Xva[b], va.noun[b]),
            "verb probe": _probe_accuracy(Xtr[a], tr.verb[a], Xva[b], va.verb[b]),
            "verb habit (noun)": float(np.mean([habit.get(v) == n for v, n in zip(va.verb[b], va.noun[b])]))
            if b.any()
            else float("nan"),
        }
    return pd.DataFrame(rows).T


def _streams_per_video(data: FlowNarData, split: str = "train") -> dict[str, list]:
    out: dict[str, list] = {}
    for s in data.streams(split):
        out.setdefault(s.video_uid, []).append(s)
    return out


def world_probes(data: FlowNarData) -> pd.DataFrame:
    """The probes the data card reports, one row each: timing (one frame, all tokens / last token, against the
    world's narration frames; with a second annotator also against every annotator's times), the segment noun and
    verb probes on local segments, the noun probe on memory segments, the verb habit on both."""
    seg = segment_probes(data)
    rows = [
        ("timing probe (ROC AUC, one frame, all tokens)", completion_probe(data), "0.90-0.98"),
        (
            "timing probe (ROC AUC, one frame, last token)",
            completion_probe(data, tokens=[data.tokens_per_frame - 1]),
            "",
        ),
    ]
    if any(len(v) > 1 for v in _streams_per_video(data).values()):  # a second annotator: its jittered times too
        rows.append(
            (
                "timing probe against every annotator's times (all tokens)",
                completion_probe(data, labels="annotations"),
                "",
            )
        )
    rows += [
        ("noun probe, local segments", seg.loc["local", "noun probe"], ">= 0.90"),
        ("verb probe, local segments", seg.loc["local", "verb probe"], ""),
        ("verb habit names the noun, local segments", seg.loc["local", "verb habit (noun)"], ""),
        ("noun probe, memory segments", seg.loc["memory", "noun probe"], "<= habit + 0.15"),
        ("verb habit names the noun, memory segments", seg.loc["memory", "verb habit (noun)"], "<= 0.35"),
    ]
    out = pd.DataFrame(rows, columns=["probe", "value", "target"]).set_index("probe")
    out.attrs["segments"] = seg
    return out


__all__ = [
    "completion_probe",
    "roc_auc",
    "segment_frames",
    "segment_table",
    "segment_probes",
    "verb_habit",
    "world_probes",
]
