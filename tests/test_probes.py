"""The world's probes (flownar.data.probes): the embedded default is learnable and measurable as world v4 intends."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from flownar.data.probes import _fit_linear, roc_auc, segment_frames, verb_habit, world_probes
from flownar.data.readers import FlowNarData
from flownar.data.synth import write_synthetic_dataset


@pytest.fixture(scope="module")
def default_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("w") / "ek100"
    write_synthetic_dataset(root, layout="ek100", profile="default", seed=0, progress=False)
    return FlowNarData(root, "ek100")


def test_world_v4_meets_its_probe_targets(default_world):
    """What the data card promises: timing decidable but not certain, the object of a local segment legible from its
    frames, memory segments not (no better than the verb habit + 0.15), and the habit answering <= 35 % of them."""
    p = world_probes(default_world)["value"]
    assert 0.90 <= p["timing probe (ROC AUC, one frame, all tokens)"] <= 0.98
    assert p["noun probe, local segments"] >= 0.90
    assert p["verb probe, local segments"] >= 0.90
    assert p["noun probe, memory segments"] <= p["verb habit names the noun, memory segments"] + 0.15
    assert p["verb habit names the noun, memory segments"] <= 0.35
    assert p["verb habit names the noun, local segments"] < p["noun probe, local segments"] - 0.3


def test_probe_pieces():
    assert roc_auc([0.1, 0.2, 0.3, 0.4], np.array([0, 0, 1, 1], bool)) == 1.0
    # a separable two-class and a three-class problem are fitted exactly
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 5, generator=g)
    y = (X[:, 0] > 0).long()
    assert ((_fit_linear(X, y, 2)(X)[:, 0] > 0).long() == y).float().mean() > 0.97
    y3 = torch.bucketize(X[:, 1], torch.tensor([-0.5, 0.5]))
    assert (_fit_linear(X, y3, 3)(X).argmax(1) == y3).float().mean() > 0.9
    # the habit: the verb's most frequent noun, ties to the alphabetically first
    train = pd.DataFrame(
        {"verb": ["take", "take", "take", "open", "open"], "noun": ["cup", "cup", "jar", "fridge", "drawer"]}
    )
    assert verb_habit(train) == {"take": "cup", "open": "drawer"}
    # a segment's frames: from its start to its narration frame, a quick one its nearest frame
    assert list(segment_frames({"start": 1.0, "end": 3.0}, 2.0, 100)) == [2, 3, 4, 5, 6]
    assert list(segment_frames({"start": 1.0, "end": 1.5}, 2.0, 100)) == [2, 3]
    assert len(segment_frames({"start": 1.1, "end": 1.3}, 2.0, 100)) == 1
    assert math.isclose(roc_auc([0.5, 0.5], np.array([0, 1], bool)), 0.5)


def test_a_second_annotator_adds_the_timing_probe_against_its_times(tmp_path):
    """The timing probe reads the world's narration frames (where the cue is); with Ego4D's jittered second pass it
    is reported against every annotator's times too."""
    probes = {}
    for layout in ("ek100", "ego4d"):
        root = write_synthetic_dataset(tmp_path / layout, layout=layout, profile="smoke", seed=0, progress=False)
        probes[layout] = world_probes(FlowNarData(root, layout))["value"]
    row = "timing probe against every annotator's times (all tokens)"
    assert row in probes["ego4d"].index and row not in probes["ek100"].index
    first = "timing probe (ROC AUC, one frame, all tokens)"
    assert probes["ego4d"][first] == pytest.approx(probes["ek100"][first])  # the same world, the same frames
