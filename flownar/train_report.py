"""What training produced, for people: loss curves and a summary table (notebook 01, ``fig_loss`` of each run)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .systems import colour, display_name, legend_name

if TYPE_CHECKING:
    import pandas as pd


def plot_loss(log_csv: Path, stem: Path, title: str = "", banner: str | None = None) -> None:
    """Loss curves (total, narration LM, frame decisions) from a train_log.csv.

    A pyplot-free ``Figure``: switching pyplot's backend here (as this once did) would stop a notebook that trains
    from showing its later figures inline, so its outputs would depend on whether the runs were already trained."""
    import pandas as pd
    from matplotlib.figure import Figure

    from .report import save_figure

    df = pd.read_csv(log_csv)
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    for col, label in (("loss", "total"), ("lm_loss", "narration tokens (LM)"), ("stream_loss", "frame decisions")):
        ax.plot(df["step"], df[col], label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, stem, banner)


def training_summary(runs: dict[str, Path]) -> "pd.DataFrame":
    """One row per system: parameters (total, trainable, CLAM's share), steps, samples, final losses."""
    import pandas as pd

    rows = []
    for system, run in runs.items():
        s = json.loads((Path(run) / "train_summary.json").read_text())
        log = pd.read_csv(Path(run) / "train_log.csv")
        last = log.tail(max(1, len(log) // 10)).mean(numeric_only=True)  # mean over the last 10% of steps
        p = s["parameters"]
        rows.append(
            {
                "system": display_name(system),
                "parameters": p["total"],
                "trainable": p["trainable"],
                "CLAM share (%)": 100 * p["clam"] / p["total"],
                "steps": s["steps"],
                "train samples": s["samples"],
                "final loss": last["loss"],
                "final LM loss": last["lm_loss"],
                "final decision loss": last["stream_loss"],
            }
        )
    return pd.DataFrame(rows).set_index("system")


def plot_training_curves(
    runs: dict[str, Path],
    title: str = "",
    auc: dict[str, float] | None = None,
    content: dict[str, tuple[float, float]] | None = None,
):
    """Loss per optimizer step, one line per system (total, narration-LM and frame-decision panels); with ``auc``
    (system -> validation decision AUC, :func:`flownar.eval.oracle.decision_probe`) a panel beside them shows
    whether each system learned *when* to speak, and its bars (in the curves' colours) are the legend; with
    ``content`` (system -> teacher-forced object accuracy with the frames and with them zeroed,
    :func:`flownar.eval.oracle.content_probe`) one more shows whether it learned *what* to say from what it sees.

    Each curve is a centred rolling mean over 2% of the steps (the raw per-step loss of a batch is too noisy to
    tell seven systems apart); the raw losses stay in each run's ``train_log.csv`` and ``fig_loss``. Systems are
    named in legend form and coloured as in every figure (:mod:`flownar.systems`)."""
    import matplotlib.pyplot as plt
    import matplotlib.ticker as mticker
    import pandas as pd
    import seaborn as sns

    cols = ("loss", "lm_loss", "stream_loss")
    frames = []
    for s, r in runs.items():
        log = pd.read_csv(Path(r) / "train_log.csv")
        window = max(1, len(log) // 50)
        log[list(cols)] = log[list(cols)].rolling(window, center=True, min_periods=1).mean()
        frames.append(log.assign(system=legend_name(s)))
    df = pd.concat(frames)
    palette = {legend_name(s): colour(s) for s in runs}
    # constrained layout: each panel gets the room its own labels need (tight_layout gives every gap the widest)
    extra = int(bool(auc)) + int(bool(content))
    fig, axes = plt.subplots(1, 3 + extra, figsize=(12 + 4 * extra, 3.6), layout="constrained")
    for ax, col, panel in zip(axes, cols, ("total loss", "narration tokens (LM)", "frame decisions (silent/speak)")):
        legend = not extra and ax is axes[0]
        sns.lineplot(df, x="step", y=col, hue="system", palette=palette, ax=ax, legend=legend, lw=1)
        ax.set_title(panel)
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(mticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(mticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(mticker.NullFormatter())
        ax.set_ylabel("cross-entropy (rolling mean)" if ax is axes[0] else "")
    if auc:
        ax = axes[3]
        names = [legend_name(s) for s in auc]
        ax.barh(names, list(auc.values()), color=[palette.get(n, "grey") for n in names])
        ax.axvline(0.5, color="grey", ls=":", lw=1)
        ax.set_xlim(0.4, 1.0)
        ax.invert_yaxis()
        ax.set_title("when to speak: decision AUC (val)")
        for i, v in enumerate(auc.values()):
            ax.text(v, i, f" {v:.3f}", va="center", fontsize=8)
    if content:
        ax = axes[-1]
        names = [legend_name(s) for s in content]
        y = np.arange(len(names))
        seen = [100 * a for a, _ in content.values()]
        blind = [100 * b for _, b in content.values()]
        ax.barh(y - 0.2, seen, 0.4, color=[palette.get(n, "grey") for n in names], label="with the frames")
        ax.barh(y + 0.2, blind, 0.4, color="white", edgecolor="grey", hatch="//", label="frames zeroed")
        ax.set_yticks(y, names if not auc else [""] * len(names))
        ax.set_xlim(0, 100)
        ax.invert_yaxis()
        ax.set_title("what to say: object named, teacher-forced (val, %)")
        ax.legend(fontsize=7, loc="lower right")
        for i, v in enumerate(seen):
            ax.text(v, i - 0.2, f" {v:.0f}", va="center", fontsize=8)
    if title:
        fig.suptitle(title)
    return fig
