"""Dataset statistics for notebook 00, beside EK100's published ones (``resources/ek100_published_stats.csv``)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from ..paths import RESOURCES_DIR
from .readers import FlowNarData

_WORD = re.compile(r"[A-Za-z']+")


def segment_durations(data: FlowNarData, split: str) -> np.ndarray:
    """Seconds between consecutive narrations of each stream: the length of the segment each narration closes
    (the quantity behind the streaming engine's ``avg_duration``)."""
    gaps = [np.diff([n.time for n in s.narrations]) for s in data.streams(split)]
    return np.concatenate(gaps) if gaps else np.zeros(0)


def split_statistics(data: FlowNarData, split: str) -> dict:
    streams = data.streams(split)
    d = segment_durations(data, split)
    words = {w.lower() for s in streams for n in s.narrations for w in _WORD.findall(n.text)}
    uids = {s.video_uid for s in streams}
    hours = sum(data.videos[u].duration for u in uids) / 3600
    return {
        "split": split,
        "videos": len(uids),
        "streams": len(streams),
        "narrations": sum(len(s.narrations) for s in streams),
        "narrations per video": sum(len(s.narrations) for s in streams) / max(len(uids), 1),
        "hours": hours,
        "segment duration mean (s)": float(d.mean()) if d.size else float("nan"),
        "segment duration std (s)": float(d.std()) if d.size else float("nan"),
        "segment duration median (s)": float(np.median(d)) if d.size else float("nan"),
        "vocabulary (words)": len(words),
    }


def statistics_table(data: FlowNarData, splits=("train", "val")) -> pd.DataFrame:
    """One row per split with counts, segment-duration moments and vocabulary size."""
    return pd.DataFrame([split_statistics(data, s) for s in splits if s in data.available_splits()]).set_index("split")


def published_ek100_statistics() -> pd.DataFrame:
    """EK100's published numbers (labelled with their source); reference values, never computed here."""
    return pd.read_csv(RESOURCES_DIR / "ek100_published_stats.csv")


def comparison_table(data: FlowNarData) -> pd.DataFrame:
    """Our statistics beside the published EK100 ones, row by row where both exist."""
    ours = statistics_table(data)
    pub = published_ek100_statistics().set_index("statistic")["value"]
    train = ours.loc["train"] if "train" in ours.index else None
    val = ours.loc["val"] if "val" in ours.index else None
    rows = []

    def add(name, value, ref_key=None):
        rows.append(
            {
                "statistic": name,
                "this dataset": value,
                "EK100 published": pub.get(ref_key, np.nan) if ref_key else np.nan,
            }
        )

    if train is not None:
        add("train videos", int(train["videos"]), "train videos")
        add("train narrations per video", round(float(train["narrations per video"]), 1))
        add("train segments", int(train["narrations"]), "train action segments")
    if val is not None:
        add("val videos", int(val["videos"]), "val videos")
        add("val segments", int(val["narrations"]), "val action segments")
    both = pd.concat([ours]).sum(numeric_only=True)
    add("hours", round(float(both["hours"]), 2), "hours")
    if train is not None:
        add("segment duration mean (s)", round(float(train["segment duration mean (s)"]), 2), "segment duration mean")
        add("segment duration std (s)", round(float(train["segment duration std (s)"]), 2), "segment duration std")
        add("vocabulary (words)", int(train["vocabulary (words)"]))
    return pd.DataFrame(rows).set_index("statistic")


def plot_segment_durations(data: FlowNarData, splits=("train", "val"), max_seconds: float = 30.0):
    """Histogram of segment durations per split, with the published mean as a labelled reference line."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    frames = [
        pd.DataFrame({"duration (s)": segment_durations(data, s), "split": s})
        for s in splits
        if s in data.available_splits()
    ]
    df = pd.concat(frames, ignore_index=True)
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    clipped = df.assign(**{"duration (s)": df["duration (s)"].clip(upper=max_seconds)})
    sns.histplot(
        clipped, x="duration (s)", hue="split", bins=60, stat="density", common_norm=False, element="step", ax=ax
    )
    pub = published_ek100_statistics().set_index("statistic")["value"]
    ax.axvline(
        pub["segment duration mean"],
        color="k",
        ls="--",
        lw=1,
        label=f"reported mean {pub['segment duration mean']:.2f} s",
    )
    for (s, g), color in zip(df.groupby("split", sort=False), sns.color_palette()):
        ax.axvline(
            g["duration (s)"].mean(), lw=1.2, ls=":", color=color, label=f"{s} mean {g['duration (s)'].mean():.2f} s"
        )
    ax.set_title(f"Segment durations ({data.dataset}; values above {max_seconds:g} s shown at {max_seconds:g} s)")
    handles, labels = ax.get_legend_handles_labels()
    leg = ax.get_legend()
    if leg is not None:
        ax.legend(
            handles=leg.legend_handles + handles, labels=[t.get_text() for t in leg.get_texts()] + labels, fontsize=8
        )
    fig.tight_layout()
    return fig


def synthetic_world_summary(card: dict, cap_s: float | None = None, window: int = 10) -> pd.DataFrame:
    """Per kind of segment in the synthetic world (local, held_item, hidden_item): how many in each split, and how
    far back the object its narration names was last visible: in segments (``> window``: past FlowNar-C's text
    window of the last 10 narrations) and in seconds (past ``cap_s``, the training cap), with the validation
    counts past each (the memory segments there are to measure)."""
    rows = []
    for video in card["videos"].values():
        for i, seg in enumerate(video["segments"]):
            dep = seg.get("depends_on")
            rows.append(
                {
                    "split": video["split"],
                    "kind": seg["kind"],
                    "gap": (i - dep) if dep is not None else np.nan,
                    "gap_s": seg.get("gap_s") if dep is not None else np.nan,
                }
            )
    df = pd.DataFrame(rows)
    cap_s = float(card.get("cap_s", np.inf)) if cap_s is None else cap_s
    g = df.groupby("kind")
    val = df[df.split == "val"].groupby("kind")
    out = pd.DataFrame(
        {
            "segments (train)": df[df.split == "train"].groupby("kind").size(),
            "segments (val)": val.size(),
            "share (%)": 100 * g.size() / len(df),
            "mean gap (segments)": g["gap"].mean(),
            "max gap": g["gap"].max(),
            "mean gap (s)": g["gap_s"].mean(),
            f"> {window} back (%)": g["gap"].apply(
                lambda x: 100 * (x > window).sum() / x.notna().sum() if x.notna().any() else np.nan
            ),
            "past the cap (%)": g["gap_s"].apply(
                lambda x: 100 * (x > cap_s).sum() / x.notna().sum() if x.notna().any() else np.nan
            ),
            f"val: > {window} back": val["gap"].apply(lambda x: int((x > window).sum())),
            "val: past the cap": val["gap_s"].apply(lambda x: int((x > cap_s).sum())),
        }
    )
    return out.fillna({"segments (train)": 0, "segments (val)": 0}).round(1)


LENGTH_BINS = (0.0, 0.5, 1.0, 2.0, 4.0, np.inf)


def length_regime(data: FlowNarData, cap_frames: int) -> pd.DataFrame:
    """How long the streams are relative to the training cap (``max_num_frames``): training samples are cut at
    the cap; self-conditioned evaluation narrates whole clips (EK100: validation videos; Ego4D: summary intervals;
    EgoExo4D: takes) with no cap. Rows: training streams (before the cut) and evaluation clips; columns: count,
    mean and max length / cap, and the share in each band of length / cap."""
    rows = {}
    lengths = {
        "training streams (cut at the cap)": [
            data.videos[s.video_uid].duration * data.fps / cap_frames for s in data.streams("train")
        ],
        "evaluation clips (no cap)": [c.num_frames / cap_frames for c in data.eval_clips("val")],
    }
    for name, x in lengths.items():
        x = np.asarray(x, dtype=float)
        row = {
            "count": len(x),
            "mean length / cap": x.mean() if len(x) else np.nan,
            "max": x.max() if len(x) else np.nan,
        }
        for a, b in zip(LENGTH_BINS[:-1], LENGTH_BINS[1:]):
            label = f">{a:g}x" if np.isinf(b) else f"{a:g}-{b:g}x"
            row[f"{label} (%)"] = 100 * float(((x >= a) & (x < b)).mean()) if len(x) else np.nan
        rows[name] = row
    return pd.DataFrame(rows).T
