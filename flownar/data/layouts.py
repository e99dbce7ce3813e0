"""The released FlowNar-Data layouts (one folder per dataset), as the original loaders expect them.

A dataset root looks like::

    <data_root>/
        features_metadata.json                 {video_uid: {"duration": seconds, "path": "<uid>.pt"}}
        features/<feature_folder>/<uid>.pt     (T, tokens_per_frame, feature_dim), bf16, torch.save
        annotations/<files named below>

The feature folder name encodes the frame rate and the token layout (``2fps`` and ``1+3x3`` = 1 CLS + 3x3
pooled tokens). The frame rate is read from that name; tokens per frame and feature dim from the tensors.
Nothing in this module is specific to the synthetic data: the synthetic writer uses these same names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

METADATA_FILE = "features_metadata.json"
# Written by `flownar data synth` beside the released files; never present in FlowNar-Data. Its presence is how
# every table and figure knows to say "embedded synthetic data, not the paper's".
SYNTHETIC_CARD_FILE = "flownar_synthetic.json"
# The embedded world's questions (streaming QA), one file per split in annotations/; FlowNar-Data has none.
QA_FILE = "flownar_qa_{split}.json"


@dataclass(frozen=True)
class Layout:
    name: str
    feature_folder: str
    # split -> annotation file (relative to <data_root>/annotations)
    narration_files: dict[str, str]
    # extra annotation files (relative to <data_root>/annotations)
    summary_file: str | None = None

    def annotation_path(self, root: Path, split: str) -> Path:
        if split not in self.narration_files:
            raise ValueError(f"{self.name}: unknown split {split!r}; expected one of {sorted(self.narration_files)}")
        return Path(root) / "annotations" / self.narration_files[split]

    def feature_dir(self, root: Path) -> Path:
        return Path(root) / "features" / self.feature_folder


_SIGLIP = "1+3x3_google--siglip-large-patch16-384"

LAYOUTS: dict[str, Layout] = {
    "ek100": Layout(
        name="ek100",
        feature_folder=f"videos_2fps_max384_{_SIGLIP}",
        narration_files={"train": "refined_train_narrations.json", "val": "refined_val_narrations.json"},
    ),
    "ego4d": Layout(
        name="ego4d",
        feature_folder=f"full_scale_2fps_max384_{_SIGLIP}",
        narration_files={"train": "refined_narration_stream_train.json", "val": "refined_narration_stream_val.json"},
        summary_file="segment_summaries.json",
    ),
    "egoexo4d": Layout(
        name="egoexo4d",
        feature_folder=f"egocentric_2fps_max384_{_SIGLIP}",
        narration_files={
            "train": "refined_egocentric_atomic_descriptions_gpt_train.json",
            "val": "refined_egocentric_atomic_descriptions_gpt_val.json",
        },
    ),
}


#: The three datasets of the paper, in the order of its tables: the one list every command and table uses.
DATASETS: tuple[str, ...] = tuple(LAYOUTS)


def get_layout(name: str) -> Layout:
    key = name.lower().replace("-", "").replace("_", "")
    aliases = {
        "ek100": "ek100",
        "epickitchens100": "ek100",
        "ego4d": "ego4d",
        "egoexo4d": "egoexo4d",
        "egoexo": "egoexo4d",
    }
    if key not in aliases:
        raise ValueError(f"unknown dataset layout {name!r}; expected one of {sorted(LAYOUTS)}")
    return LAYOUTS[aliases[key]]


_FPS_RE = re.compile(r"(?:^|_)(\d+(?:\.\d+)?)fps(?:_|$)")


def fps_from_folder(folder: str) -> float:
    """Frame rate encoded in a feature folder name, e.g. ``videos_2fps_max384_...`` -> 2.0."""
    m = _FPS_RE.search(folder)
    if not m:
        raise ValueError(f"feature folder {folder!r} does not encode a frame rate (expected '<N>fps' in its name)")
    return float(m.group(1))
