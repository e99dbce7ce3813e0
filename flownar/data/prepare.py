"""One entry point for notebooks and commands: the dataset of a run, real or embedded.

``prepare_dataset(dataset, data_root, profile, seed)`` opens ``data_root`` when it is given (real FlowNar-Data
or any folder in its layout) and otherwise the embedded synthetic dataset for (dataset, profile, seed) under
``paths.embedded_data_root``, writing it first when it is missing or was written with other settings.
"""

from __future__ import annotations

import json
from pathlib import Path

from .. import paths, profiles
from ..errors import DataRootError
from .layouts import METADATA_FILE, SYNTHETIC_CARD_FILE, get_layout
from .readers import FlowNarData


def _card_matches(root: Path, layout: str, profile: str, seed: int) -> bool:
    from .synth import SYNTH_VERSION

    card_path = root / SYNTHETIC_CARD_FILE
    if not card_path.is_file() or not (root / METADATA_FILE).is_file():
        return False
    try:
        card = json.loads(card_path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    want = {
        "generator": "flownar.data.synth",
        "version": SYNTH_VERSION,
        "layout": layout,
        "profile": profile,
        "seed": seed,
    }
    return all(card.get(k) == v for k, v in want.items())


def prepare_dataset(
    dataset: str = "ek100",
    data_root: str | Path | None = None,
    profile: str = "smoke",
    seed: int = 0,
    progress: bool = True,
) -> FlowNarData:
    """Open the run's dataset; write the embedded synthetic one if needed (``data_root`` empty or None)."""
    layout = get_layout(dataset).name
    if data_root:
        return FlowNarData(data_root, layout)
    if profiles.get(profile).real_data:
        raise DataRootError(
            "the paper profile runs on FlowNar-Data: set DATA_ROOT (make) or data_root (notebooks) "
            "to a dataset folder such as FlowNar-Data/ek100"
        )
    from .synth import write_synthetic_dataset

    root = paths.embedded_data_root(layout, profile)
    if not _card_matches(root, layout, profile, seed):
        from filelock import FileLock  # a dependency of torch and transformers (in the lock)

        # several processes (parallel training) may find the same folder stale at once: one writes it, the others
        # wait for the lock and then find it written
        root.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(root.parent / f".{root.name}.lock")):
            if not _card_matches(root, layout, profile, seed):
                write_synthetic_dataset(
                    root, layout=layout, profile=profile, seed=seed, overwrite=True, progress=progress
                )
    return FlowNarData(root, layout)
