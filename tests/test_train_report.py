"""Notebook 01's training figure: every system readable, no layout warning (a warning lands in the committed
notebook's stderr, which nbval compares)."""

import warnings

import numpy as np
import pandas as pd

from flownar.report import save_figure
from flownar.systems import learned, short_name
from flownar.train_report import plot_training_curves


def fake_runs(tmp_path):
    rng = np.random.default_rng(0)
    runs = {}
    for s in learned():
        steps = np.arange(1, 201)
        loss = 5 * np.exp(-steps / 50) + rng.uniform(0, 0.3, steps.size)
        run = tmp_path / s
        run.mkdir()
        pd.DataFrame({"step": steps, "loss": loss, "lm_loss": loss * 0.7, "stream_loss": loss * 0.3}).to_csv(
            run / "train_log.csv", index=False
        )
        runs[s] = run
    return runs


def test_training_figure_draws_every_system_without_warnings(tmp_path):
    runs = fake_runs(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for auc in ({s: 0.5 + i / 20 for i, s in enumerate(runs)}, None):
            fig = plot_training_curves(runs, title="t", auc=auc)
            save_figure(fig, tmp_path / f"fig_{auc is None}", "BANNER")
            if auc:
                labels = [t.get_text() for t in fig.axes[3].get_yticklabels()]
            else:
                labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
            assert len(labels) == len(learned()) and "Flash-VStream memory (ours)" in labels
            assert (tmp_path / f"fig_{auc is None}.png").stat().st_size > 0


def test_short_name_keeps_whose_it_is():
    assert short_name("StreamingVLM-style cache (ours: sinks + recent frames + recent text)") == (
        "StreamingVLM-style cache (ours)"
    )
    assert short_name("DCM only (no CLAM)") == "DCM only (no CLAM)"
    assert short_name("FlowNar") == "FlowNar"
