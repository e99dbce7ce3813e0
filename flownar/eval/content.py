"""Content and memory: what the narrations say, scored where they close a ground-truth segment (ours, beside the
paper's metrics; embedded data only, since it reads the synthetic world's card).

**The rule** (the one place it is defined): a narration *closes* a ground-truth segment when it is emitted within
one frame of the segment's end (``|t - end| <= 1 / fps``, ``t`` the time of the frame that emitted it, as in the
corrected scoring). Each segment is closed by at most one narration and each narration closes at most one
segment: pairs are taken nearest first (the earlier narration on a tie) while both are free. Only closing
narrations are scored for content; the others are timing errors, which the temporal F1 already counts.

**Scored**: the verb, the noun (the acted-on object) and the pair, parsed from "You <verb> the <noun> ..." (the
second annotator's paraphrases count as their verb). Every rate comes with its ``n`` and a 95 % Wilson interval.

**Groups**: the segment's kind (*local*: the object is in view; *held*: an item put down after being carried,
whose frames show only a generic "held" prototype; *hidden*: an item taken out of a closed container, seen only
when the container was open; *memory* = held + hidden), the memory gap (segments back to where the object was
last seen: 1-2, 3-5, 6-10 and past FlowNar-C's window of the last 10 narrations; seconds: within or past the
training cap) and the position along the stream (where the segment ends, in units of the training cap).

**Reference rows**: the *habit* (given the true verb, the verb's most frequent training noun: what a narrator
that ignores the frames would name; its verb is given, so it has no verb rate) and the world oracle (scored like a
system from its predictions).
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pandas as pd

from .. import systems as registry
from ..data.probes import verb_habit
from .metrics import POSITION_BINS
from .text import parse_narration

HABIT = "habit"
HABIT_NAME = "Verb habit (the verb's most frequent training noun; verb given)"
#: FlowNar-C keeps the last ``last_k_narration`` narrations in its context: a memory gap past it is past its window
WINDOW = int(registry.get("flownar-c").policy.last_k_narrations)
#: memory-gap bins in segments; the last is past FlowNar-C's text window
GAP_BINS = ((1, 2), (3, 5), (6, WINDOW), (WINDOW + 1, 10**9))
KINDS = {"local": "local", "held": "held_item", "hidden": "hidden_item"}
METRICS = ("noun", "verb", "pair")


# ---------------------------------------------------------------------------------------------------- pieces
def wilson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a binomial rate ``k / n`` (nan, nan when n = 0)."""
    if n == 0:
        return float("nan"), float("nan")
    z = NormalDist().inv_cdf(0.5 + level / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def closing_pairs(ends: list[float], times: list[float], fps: float) -> dict[int, int]:
    """The rule: ``{segment index: narration index}`` for each segment (``ends``) closed by a narration
    (``times``) emitted within one frame of its end. Candidate pairs are taken nearest first (then the earlier
    narration, then the earlier segment) while both are free: each narration closes at most one segment."""
    tol = 1.0 / fps + 1e-6
    cands = sorted((abs(t - e), t, g, p) for g, e in enumerate(ends) for p, t in enumerate(times) if abs(t - e) <= tol)
    out, taken = {}, set()
    for _, _, g, p in cands:
        if g not in out and p not in taken:
            out[g] = p
            taken.add(p)
    return out


def _band(x: float) -> str:
    edges = POSITION_BINS
    for a, b in zip(edges[:-1], edges[1:]):
        if a <= x < b:
            return f">{a:g}x" if math.isinf(b) else f"{a:g}-{b:g}x"
    return f"{edges[0]:g}-{edges[1]:g}x"


def gap_bin(gap: float | None) -> str | None:
    if gap is None or (isinstance(gap, float) and math.isnan(gap)):
        return None
    for lo, hi in GAP_BINS:
        if lo <= gap <= hi:
            return f"gap {lo}-{hi}" if hi < 10**9 else f"gap >{WINDOW} (past FlowNar-C's window)"
    return None


# ---------------------------------------------------------------------------------------------------- scoring
def segments_of(data, split: str = "val") -> pd.DataFrame:
    """One row per ground-truth segment of the evaluation clips of ``split`` (from the synthetic card): clip,
    verb, noun, kind, memory gap, position along the stream (units of the training cap) and the verb habit's
    noun. Empty on real data."""
    from ..data.world import training_cap

    card = data.synthetic_card
    if not card or "videos" not in card:
        return pd.DataFrame()
    cap_s = float(card.get("cap_s") or training_cap(card.get("profile", "default")) / data.fps)
    train = pd.DataFrame(
        [s for uid in card["splits"]["train"] for s in card["videos"][uid]["segments"]], columns=["verb", "noun"]
    )
    habit = verb_habit(train)
    rows = []
    for clip in data.eval_clips(split):
        t0, t1 = clip.start_frame / data.fps, (clip.stop_frame - 1) / data.fps
        for i, s in enumerate(card["videos"][clip.video_uid]["segments"]):
            if not t0 <= s["end"] <= t1:
                continue
            rows.append(
                {
                    "clip_id": clip.clip_id,
                    "start_frame": clip.start_frame,
                    "segment": i,
                    "end": s["end"],
                    "text": s["text"],
                    "verb": s["verb"],
                    "noun": s["noun"],
                    "kind": s["kind"],
                    "gap_segments": s.get("gap_segments"),
                    "gap_s": s.get("gap_s"),
                    "position": (s["end"] - t0) / cap_s,
                    "habit_noun": habit.get(s["verb"]),
                }
            )
    df = pd.DataFrame(rows)
    if len(df):
        df["past_cap"] = df.gap_s > cap_s
        df.attrs["cap_s"] = cap_s
    return df


def score_predictions(data, segments: pd.DataFrame, predictions, system: str) -> pd.DataFrame:
    """``segments`` (:func:`segments_of`) with what ``system`` said where it closed them: ``closed``, ``said``,
    ``said_verb``, ``said_noun``, ``verb_ok``, ``noun_ok``, ``pair_ok`` (NaN where not closed). ``predictions``:
    :class:`~flownar.eval.metrics.ClipPrediction` per clip (a clip without one narrated nothing)."""
    card = data.synthetic_card
    verbs, nouns = card["vocabulary"]["verbs"], card["vocabulary"]["nouns"]
    by_id = {str(p.clip_id): p for p in predictions}
    out = []
    for clip_id, segs in segments.groupby("clip_id", sort=False):
        segs = segs.sort_values("end").copy()
        pred = by_id.get(str(clip_id))
        items = sorted(pred.predictions.items()) if pred is not None else []
        start = int(segs.start_frame.iloc[0])
        times = [(start + int(k)) / data.fps for k, _ in items]
        pairs = closing_pairs(segs.end.tolist(), times, data.fps)
        said = [items[pairs[g]][1] if g in pairs else None for g in range(len(segs))]
        segs["closed"] = [g in pairs for g in range(len(segs))]
        segs["said"] = said
        parsed = [parse_narration(t, verbs, nouns) if t is not None else (None, None) for t in said]
        segs["said_verb"] = [v for v, _ in parsed]
        segs["said_noun"] = [n for _, n in parsed]
        out.append(segs)
    df = pd.concat(out) if out else segments.assign(closed=False, said=None, said_verb=None, said_noun=None)
    df = df.assign(system=system)
    closed = df.closed.astype(bool)
    df["verb_ok"] = np.where(closed, df.said_verb == df.verb, np.nan)
    df["noun_ok"] = np.where(closed, df.said_noun == df.noun, np.nan)
    df["pair_ok"] = np.where(closed, (df.said_verb == df.verb) & (df.said_noun == df.noun), np.nan)
    return df


def habit_scores(segments: pd.DataFrame) -> pd.DataFrame:
    """The habit row: every segment "closed", the verb given, the verb's most frequent training noun said."""
    df = segments.assign(system=HABIT, closed=True, said=None, said_verb=segments.verb, said_noun=segments.habit_noun)
    df["verb_ok"] = np.nan
    df["noun_ok"] = (df.said_noun == df.noun).astype(float)
    df["pair_ok"] = df.noun_ok
    return df


def score_systems(data, pred_dirs: dict, split: str = "val") -> dict[str, pd.DataFrame]:
    """Per system (``pred_dirs``: name -> predictions folder; the world oracle's included when given) the scored
    segments, then the habit's. Empty on real data."""
    from .predictions import load_predictions

    segments = segments_of(data, split)
    if segments.empty:
        return {}
    clip_ids = segments.clip_id.unique().tolist()
    out = {s: score_predictions(data, segments, load_predictions(d, clip_ids), s) for s, d in pred_dirs.items()}
    out[HABIT] = habit_scores(segments)
    return out


# ---------------------------------------------------------------------------------------------------- rates
def _groups(df: pd.DataFrame) -> dict[str, pd.Series]:
    """The named subsets of segments every table reports."""
    memory = df.kind != "local"
    g = {
        "all": pd.Series(True, index=df.index),
        "local": df.kind == "local",
        "local, habit wrong": (df.kind == "local") & (df.habit_noun != df.noun),
        "held": df.kind == "held_item",
        "hidden": df.kind == "hidden_item",
        "memory": memory,
        "memory, habit wrong": memory & (df.habit_noun != df.noun),
    }
    for lo, hi in GAP_BINS:
        g[f"memory, {gap_bin(lo)}"] = memory & (df.gap_segments >= lo) & (df.gap_segments <= hi)
    g["memory, within the cap"] = memory & ~df.past_cap.astype(bool)
    g["memory, past the cap"] = memory & df.past_cap.astype(bool)
    for band in sorted({_band(x) for x in df.position}, key=lambda b: float(b.strip(">").split("-")[0].rstrip("x"))):
        in_band = df.position.map(_band) == band
        g[f"local, position {band}"] = (df.kind == "local") & in_band
        g[f"memory, position {band}"] = memory & in_band
    return g


def rates(scored: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Long format: one row per (system, group, metric) with ``k``, ``n`` (closing narrations), ``rate`` and its
    95 % interval ``lo``/``hi`` (fractions), plus ``segments`` (ground-truth segments in the group) and
    ``closed`` (the share of them closed)."""
    rows = []
    for system, df in scored.items():
        for group, mask in _groups(df).items():
            sub = df[mask.to_numpy()]
            closed = sub[sub.closed.astype(bool)]
            for metric in METRICS:
                ok = closed[f"{metric}_ok"].dropna()
                k, n = int(ok.sum()), len(ok)
                lo, hi = wilson(k, n)
                rows.append(
                    {
                        "system": system,
                        "group": group,
                        "metric": metric,
                        "k": k,
                        "n": n,
                        "rate": k / n if n else float("nan"),
                        "lo": lo,
                        "hi": hi,
                        "segments": len(sub),
                        "closed": len(closed) / len(sub) if len(sub) else float("nan"),
                    }
                )
    return pd.DataFrame(rows)


def row_name(system: str) -> str:
    """A table row's name: the system's display name, or the habit's."""
    return HABIT_NAME if system == HABIT else registry.display_name(system)


def _cell(r) -> str:
    if not r.n:
        return ""
    return f"{100 * r.rate:.1f} [{100 * r.lo:.1f}, {100 * r.hi:.1f}] n={r.n}"


def wide(long: pd.DataFrame, groups: list[str], metric: str = "noun") -> pd.DataFrame:
    """Rows systems, columns ``groups``: "rate [95 % interval] n=closing narrations" of ``metric`` (percent)."""
    sel = long[(long.metric == metric) & long.group.isin(groups)]
    table = sel.assign(cell=[_cell(r) for r in sel.itertuples()]).pivot(index="system", columns="group", values="cell")
    order = [s for s in dict.fromkeys(long.system) if s in table.index]
    table = table.loc[order, [g for g in groups if g in table.columns]]
    table.index = [row_name(s) for s in table.index]
    table.index.name = "system"
    return table


CONTENT_GROUPS = ["local", "local, habit wrong", "held", "hidden", "memory", "memory, habit wrong"]


def content_table(long: pd.DataFrame) -> pd.DataFrame:
    """The headline: noun accuracy by kind, then the verb and the pair on local and memory segments, and the share
    of segments closed (timing) per kind."""
    noun = wide(long, CONTENT_GROUPS, "noun").add_prefix("noun: ")
    verb = wide(long, ["local", "memory"], "verb").add_prefix("verb: ")
    pair = wide(long, ["local", "memory"], "pair").add_prefix("pair: ")
    closed = (
        long[(long.metric == "noun") & long.group.isin(["local", "memory"])]
        .pivot(index="system", columns="group", values="closed")
        .mul(100)
        .round(1)
    )
    closed.index = [row_name(s) for s in closed.index]
    closed = closed.add_prefix("closed (%): ")
    return noun.join(verb).join(pair).join(closed)


def memory_gap_table(long: pd.DataFrame) -> pd.DataFrame:
    """Noun accuracy on memory segments by gap (segments back, then within / past the training cap)."""
    groups = [f"memory, {gap_bin(lo)}" for lo, _ in GAP_BINS] + ["memory, within the cap", "memory, past the cap"]
    return wide(long, groups, "noun")


def position_table(long: pd.DataFrame) -> pd.DataFrame:
    """Noun accuracy of local and memory segments by position along the stream (units of the training cap)."""
    groups = [g for g in dict.fromkeys(long.group) if ", position " in g]
    return wide(long, groups, "noun")


def plot_content(long: pd.DataFrame, title: str = ""):
    """Noun accuracy with 95 % intervals: by kind (left) and by memory gap (right), one marker per system; the
    habit and the oracle as reference lines."""
    import matplotlib.pyplot as plt

    panels = [
        ("by kind", ["local", "local, habit wrong", "held", "hidden"]),
        ("memory segments by gap (segments back)", [f"memory, {gap_bin(lo)}" for lo, _ in GAP_BINS]),
    ]
    systems = list(dict.fromkeys(long.system))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4), sharey=True)
    noun = long[long.metric == "noun"].set_index(["system", "group"])
    width = 0.8 / max(len(systems), 1)
    for ax, (name, groups) in zip(axes, panels):
        x = np.arange(len(groups))
        for i, s in enumerate(systems):
            r = noun.loc[s].reindex(groups)
            y, lo, hi = 100 * r.rate.to_numpy(), 100 * r.lo.to_numpy(), 100 * r.hi.to_numpy()
            off = (i - (len(systems) - 1) / 2) * width
            style = {"color": "0.3", "marker": "_", "ms": 14} if s == HABIT else {"marker": "o", "ms": 4}
            if "oracle" in s:
                style = {"color": "k", "marker": "*", "ms": 8}
            err = [np.clip(y - lo, 0, None), np.clip(hi - y, 0, None)]
            ax.errorbar(x + off, y, yerr=err, ls="none", capsize=2, label=row_name(s), **style)
        labels = [
            g.replace("memory, ", "").replace(" (past FlowNar-C's window)", "\n(past FlowNar-C's window)")
            for g in groups
        ]
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("object named right (%), narrations closing a segment")
    handles, labels = axes[0].get_legend_handles_labels()
    if title:
        fig.suptitle(title, fontsize=9)
    # the legend in a band of its own under the panels (the data banner goes below the figure)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    fig.legend(
        handles,
        [registry.short_name(x) for x in labels],
        loc="lower center",
        ncol=5,
        fontsize=7,
        bbox_to_anchor=(0.5, 0.0),
    )
    return fig


__all__ = [
    "GAP_BINS",
    "HABIT",
    "WINDOW",
    "closing_pairs",
    "content_table",
    "habit_scores",
    "memory_gap_table",
    "plot_content",
    "position_table",
    "rates",
    "score_predictions",
    "score_systems",
    "segments_of",
    "wilson",
    "wide",
]
