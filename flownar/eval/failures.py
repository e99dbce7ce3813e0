"""Failure analysis of self-conditioned narrations (notebook 05).

Per clip: temporal P/R/F1 (corrected scoring: predictions at the time of the emitting frame, the first segment from
the clip start). Per ground-truth segment: matched or missed (best IoU >= 0.5), its duration. Per prediction:
matched or a false alarm, the object (noun) it names and, where the data carries the synthetic world's ground
truth (``flownar_synthetic.json``: the objects visible in each segment), whether that object was grounded at all
at that moment (in view, held, the container in play or the object of the segment in progress; if not: a
fine-grained object hallucination). Whether the *right* object was named, and on which kind of segment, is scored
by :mod:`flownar.eval.content` (only narrations that close a segment count there). On FlowNar-Data the
world-state columns are empty: only the temporal categories (misses by segment duration, false alarms) are counted.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd

from ..systems import display_name
from .metrics import IOU_THRESHOLD, ClipReference, clip_matches
from .predictions import load_predictions
from .runner import clip_references

BRIEF_S = 2.0  # a ground-truth segment shorter than this is a "brief action"


def _world(data) -> dict | None:
    card = data.synthetic_card
    return card if card and "videos" in card else None


def _nouns(card) -> list[str]:
    return sorted(card["vocabulary"]["nouns"], key=len, reverse=True) if card else []


def noun_in(text: str, nouns: list[str]) -> str | None:
    """The vocabulary noun a narration is about: the first one named in ``text`` (whole words; the longest name
    where two start at the same place), so "You take the knife from the drawer." is about the knife."""
    low = text.lower()
    found = [(m.start(), -len(n), n) for n in nouns for m in [re.search(rf"\b{re.escape(n)}\b", low)] if m]
    return min(found)[2] if found else None


def _segment_at(segments: list[dict], t: float) -> dict | None:
    for s in segments:
        if s["start"] <= t < s["end"]:
            return s
    return segments[-1] if segments and t >= segments[-1]["end"] else None


def analyse(data, pred_dir, system: str, split: str = "val", scoring: str = "corrected") -> dict[str, pd.DataFrame]:
    """``clips``, ``gt`` and ``preds`` tables of one system's predictions (see the module docstring)."""
    refs = clip_references(data, split)
    by_id = {p.clip_id: p for p in load_predictions(pred_dir, [r.clip_id for r in refs])}
    clips = {c.clip_id: c for c in data.eval_clips(split)}
    world = _world(data)
    nouns = _nouns(world)
    fps = data.fps
    rows_c, rows_g, rows_p = [], [], []
    for ref in refs:
        m = clip_matches(by_id.get(ref.clip_id), ref, scoring=scoring, fps=fps, eos=None)
        if len(m["gt_segments"]) == 0:
            continue
        clip = clips[ref.clip_id]
        segs = world["videos"].get(clip.video_uid, {}).get("segments", []) if world else []
        iou = m["iou"]
        rows_c.append(
            {
                "system": system,
                "clip_id": ref.clip_id,
                "video_uid": clip.video_uid,
                "f1": m["f1"],
                "precision": m["precision"],
                "recall": m["recall"],
                "n_gt": len(m["gt_segments"]),
                "n_pred": len(m["pred_segments"]),
                "duration_s": clip.num_frames / fps,
            }
        )
        for g, (a, b) in enumerate(m["gt_segments"]):
            best = int(iou[g].argmax()) if iou.shape[1] else -1
            seg = _segment_at(segs, (a + b) / 2) if segs else None
            rows_g.append(
                {
                    "system": system,
                    "clip_id": ref.clip_id,
                    "gt_idx": g,
                    "start": a,
                    "end": b,
                    "duration_s": b - a,
                    "text": m["gt_texts"][g],
                    "matched": bool(iou.shape[1]) and iou[g, best] >= IOU_THRESHOLD,
                    "best_pred": best,
                    "kind": seg["kind"] if seg else None,
                }
            )
        for p, (t, (a, b)) in enumerate(zip(m["pred_times"], m["pred_segments"])):
            text = m["pred_texts"][p]
            noun = noun_in(text, nouns) if nouns else None
            # the segment the narration falls in (or closes: the one ending within a frame of it); grounded: in
            # view, held, the container in play, or that segment's own object (a hidden item named from memory is
            # not a hallucination)
            near = [x for x in segs if abs(x["end"] - t) <= 1.0 / fps]
            seg = min(near, key=lambda x: abs(x["end"] - t)) if near else (_segment_at(segs, t) if segs else None)
            visible = (
                (
                    seg["visible"]
                    + seg.get("held", [])
                    + [seg["noun"]]
                    + ([seg["container"]] if seg.get("container") else [])
                )
                if seg
                else None
            )
            rows_p.append(
                {
                    "system": system,
                    "clip_id": ref.clip_id,
                    "pred_idx": p,
                    "time": t,
                    "start": a,
                    "end": b,
                    "text": text,
                    "matched": bool(iou.shape[0]) and iou[:, p].max() >= IOU_THRESHOLD,
                    "noun": noun,
                    "object_visible": (noun in visible) if (noun and visible is not None) else None,
                }
            )
    return {"clips": pd.DataFrame(rows_c), "gt": pd.DataFrame(rows_g), "preds": pd.DataFrame(rows_p)}


def _rate(s: pd.Series) -> float:
    s = s.dropna()
    return float(s.astype(float).mean()) if len(s) else float("nan")


def category_table(results: dict[str, dict[str, pd.DataFrame]]) -> pd.DataFrame:
    """Counts and rates of the failure categories, one row per system (percentages)."""
    rows = []
    for system, r in results.items():
        gt, pr = r["gt"], r["preds"]
        brief = gt[gt.duration_s < BRIEF_S] if len(gt) else gt
        longer = gt[gt.duration_s >= BRIEF_S] if len(gt) else gt
        named = pr[pr.noun.notna()] if len(pr) else pr
        rows.append(
            {
                "system": display_name(system),
                "narrations": len(pr),
                "GT segments": len(gt),
                "false alarms (%)": 100 * _rate(~pr.matched) if len(pr) else np.nan,
                f"brief GT (<{BRIEF_S:g} s)": len(brief),
                "brief missed (%)": 100 * _rate(~brief.matched) if len(brief) else np.nan,
                "longer missed (%)": 100 * _rate(~longer.matched) if len(longer) else np.nan,
                "object hallucinated (%)": 100 * _rate(~named.object_visible.dropna().astype(bool))
                if len(named)
                else np.nan,
            }
        )
    return pd.DataFrame(rows).set_index("system")


def memory_examples(scored: dict, a: str = "flownar", b: str = "dcm-only", limit: int = 8) -> pd.DataFrame:
    """What two systems said where both closed the same memory segment and said different things, beside the
    ground truth (``scored``: :func:`flownar.eval.content.score_systems`): with and without CLAM by default."""
    if a not in scored or b not in scored:
        return pd.DataFrame()
    keys = ["clip_id", "segment"]
    pa, pb = scored[a], scored[b]
    both = pa[pa.closed.astype(bool)].merge(pb[pb.closed.astype(bool)][keys + ["said"]], on=keys, suffixes=("", "_b"))
    both = both[(both.kind != "local") & (both.said != both.said_b)]
    out = both.assign(
        **{
            "time (s)": both.end,
            "ground truth": both.text,
            "kind": both.kind.str.replace("_item", ""),
            "gap (segments)": both.gap_segments.astype("Int64"),
            f"said by {a}": both.said,
            f"said by {b}": both.said_b,
        }
    )
    cols = ["clip_id", "time (s)", "kind", "gap (segments)", "ground truth", f"said by {a}", f"said by {b}"]
    return out[cols].head(limit).reset_index(drop=True)


def worst_clips(results: dict, system: str, k: int = 2) -> list[str]:
    """The ``k`` clips with the lowest F1 (most ground truth first on ties)."""
    c = results[system]["clips"]
    return c.sort_values(["f1", "n_gt"], ascending=[True, False]).clip_id.head(k).tolist()


def plot_f1_distribution(results: dict):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.6 * len(results) + 2, 3.5))
    data = [results[s]["clips"].f1.to_numpy() * 100 if len(results[s]["clips"]) else np.array([]) for s in results]
    ax.boxplot(data, showmeans=True)
    rng = np.random.default_rng(0)
    for i, d in enumerate(data, 1):
        ax.scatter(i + rng.uniform(-0.12, 0.12, len(d)), d, s=10, alpha=0.6, color="k")
    ax.set_xticks(range(1, len(results) + 1), [display_name(s) for s in results], rotation=15, fontsize=8)
    ax.set(ylabel="per-video temporal F1 (%)", title="F1 per video (corrected scoring)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def _short(text: str) -> str:
    """A narration as a short label: "You take the knife from the drawer." -> "take knife from drawer"."""
    t = re.sub(r"^you\s+", "", text.strip().rstrip("."), flags=re.IGNORECASE)
    return re.sub(r"\bthe\s+", "", t)


def plot_timeline(results: dict, clip_id: str, systems: list[str] | None = None, texts: bool = True):
    """Ground truth vs predictions on a time axis: GT segments (missed ones red), predicted narration times (false
    alarms as red crosses), matched pairs linked; with ``texts`` what was said (below each narration) next to what
    the ground truth says (above each segment's end), in short form."""
    import matplotlib.pyplot as plt

    systems = systems or list(results)
    height = 2.6 if texts else 1.6
    fig, axes = plt.subplots(len(systems), 1, figsize=(12, height * len(systems) + 0.6), sharex=True, squeeze=False)
    for ax, system in zip(axes[:, 0], systems):
        gt = results[system]["gt"]
        pr = results[system]["preds"]
        gt = gt[gt.clip_id == clip_id] if len(gt) else gt
        pr = pr[pr.clip_id == clip_id] if len(pr) else pr
        for r in gt.itertuples():
            ax.barh(
                1,
                r.end - r.start,
                left=r.start,
                height=0.5,
                color="tab:green" if r.matched else "tab:red",
                edgecolor="k",
                linewidth=0.5,
                alpha=0.7,
            )
            if r.matched:
                p = pr[pr.pred_idx == r.best_pred]
                if len(p):
                    ax.plot([r.end, float(p.time.iloc[0])], [0.75, 0.25], color="0.4", lw=0.7)
            if texts:
                ax.text(r.end, 1.3, _short(r.text), rotation=90, fontsize=5, ha="center", va="bottom", color="0.2")
        for r in pr.itertuples():
            ax.plot(r.time, 0, "o" if r.matched else "x", color="tab:blue" if r.matched else "tab:red", ms=6)
            if texts:
                ax.text(r.time, -0.3, _short(r.text), rotation=90, fontsize=5, ha="center", va="top", color="tab:blue")
        ax.set_yticks([0, 1], ["predicted", "ground truth"])
        ax.set_ylim(-2.2 if texts else -0.6, 3.2 if texts else 1.6)
        f1 = results[system]["clips"].set_index("clip_id").f1.get(clip_id, np.nan)
        ax.set_title(
            f"{display_name(system)} on {clip_id}: F1 {100 * f1:.1f}  "
            "(red bars: missed segments; red crosses: false alarms; lines: matched pairs"
            + ("; above: what the ground truth says, below: what was said)" if texts else ")"),
            fontsize=8,
        )
    axes[-1, 0].set_xlabel("video time (s)")
    with warnings.catch_warnings():  # many clips: the layout cannot shrink further; the figure is still drawn whole
        warnings.filterwarnings("ignore", message="Tight layout not applied")
        fig.tight_layout()
    return fig


__all__ = [
    "BRIEF_S",
    "analyse",
    "category_table",
    "memory_examples",
    "worst_clips",
    "plot_f1_distribution",
    "plot_timeline",
    "noun_in",
    "ClipReference",
]
