"""The systems this package compares: one record each, in one registry.

A :class:`System` says everything the package needs to know about a system apart from its mechanisms: its key
(the machine name in file names, configs and ``--systems`` options), its names in tables and legends, its colour
in every figure, its config preset (the :class:`~flownar.models.FlowNarConfig` fields that make it: cache policy,
memory, MoD), whether the paper has a row for it, and which systems it is built from (our adaptations are compared
with those in the claims table). Derived facts (is the cache bounded?) come from the preset's
:class:`~flownar.layout.CachePolicy`, computed in one place.

The registry holds the paper's five systems and our two adaptations in table order, then the world oracle (a
reference row of the embedded data: no preset, never trained). A new system is one :func:`register` call, from
anywhere (a test, a notebook, a plug-in module): training, the streaming engine, the teacher-forced pass, the
simulator, ``flownar bench`` and the tables read the registry. Processes started afresh (spawned workers) see only
the systems registered at import time, so a system registered at run time is trained and evaluated in-process.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from .errors import FlowNarError
from .layout import CachePolicy

#: the config fields a preset may set (the rest of a config comes from the LLM and the tokenizer)
PRESET_FIELDS = ("dcm", "use_memory", "last_k_narration", "mod", "memory", "vision_window", "contiguous_positions")


@dataclass(frozen=True)
class System:
    key: str  # machine name: file names, configs, --systems
    name: str  # display name in tables
    colour: str  # in every figure
    preset: Mapping[str, Any] | None = None  # FlowNarConfig fields (None: a reference row, not a model)
    paper: bool = True  # the paper has a row for it (False: this package's adaptation)
    built_from: tuple[str, ...] = ()  # the systems an adaptation is compared with in the claims table
    short: str = ""  # legend name (default: the display name without the explanation after "ours:")
    ablation: bool = False  # a mechanism of another system taken alone: left out of the efficiency figure

    def __post_init__(self):
        if self.preset is not None:
            unknown = set(self.preset) - set(PRESET_FIELDS)
            if unknown:
                raise ValueError(
                    f"system {self.key!r}: unknown preset fields {sorted(unknown)}; known: {PRESET_FIELDS}"
                )
            object.__setattr__(self, "preset", MappingProxyType(dict(self.preset)))
        if not self.short:
            object.__setattr__(self, "short", short_name(self.name))

    @property
    def learned(self) -> bool:
        """A model that is trained (a reference row such as the world oracle is not)."""
        return self.preset is not None

    @property
    def policy(self) -> CachePolicy:
        """The preset's cache policy (what leaves the KV cache, and the position scheme)."""
        if self.preset is None:
            raise ValueError(f"{self.key} is a reference row: it has no cache")
        p = self.preset
        return CachePolicy(
            prune_at_narration=bool(p.get("dcm", False)),
            last_k_narrations=p.get("last_k_narration"),
            vision_window=p.get("vision_window"),
            contiguous_positions=bool(p.get("contiguous_positions", False)),
        )


def short_name(name: str) -> str:
    """A display name without the explanation after a colon: "Flash-VStream memory (ours: FlowNar with Flash
    Memory)" -> "Flash-VStream memory (ours)"; names without one are unchanged."""
    return re.sub(r":[^()]*\)", ")", name)


SYSTEMS: dict[str, System] = {}


def register(system: System, *, replace: bool = False) -> System:
    """Add ``system`` to the registry (after those already there: table order is registration order)."""
    if system.key in SYSTEMS and not replace:
        raise ValueError(f"system {system.key!r} is already registered (replace=True to redefine it)")
    for other in system.built_from:
        if other not in SYSTEMS:
            raise ValueError(f"system {system.key!r} is built from {other!r}, which is not registered")
    SYSTEMS[system.key] = system
    return system


def get(key: str) -> System:
    try:
        return SYSTEMS[key]
    except KeyError:
        raise FlowNarError(f"unknown system {key!r}; expected one of {', '.join(learned())}") from None


def learned() -> list[str]:
    """The keys of every registered model (reference rows left out), in table order."""
    return [k for k, s in SYSTEMS.items() if s.learned]


def select(spec: str | list[str] | None) -> list[str]:
    """``--systems`` / a notebook's ``systems`` parameter: comma-separated keys, or ``all`` / empty for every
    registered model. Unknown keys raise, naming the known ones."""
    if spec is None or (isinstance(spec, str) and spec.strip() in ("", "all")):
        return learned()
    keys = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    for k in keys:
        if not get(k).learned:
            raise FlowNarError(f"{k} is a reference row, not a system to train or run")
    return keys


def display_name(key: str) -> str:
    """The table name of ``key`` (a key that is not registered stands for itself)."""
    return SYSTEMS[key].name if key in SYSTEMS else key


def legend_name(key: str) -> str:
    return SYSTEMS[key].short if key in SYSTEMS else short_name(key)


def colour(key: str) -> str:
    return SYSTEMS[key].colour if key in SYSTEMS else "grey"


def key_of(name: str) -> str:
    """The key of a display name (tables are written with display names); a key is returned as is."""
    if name in SYSTEMS:
        return name
    for k, s in SYSTEMS.items():
        if s.name == name:
            return k
    raise KeyError(name)


# ---------------------------------------------------------------------------------------------------- the systems
# Colours: matplotlib's tab10, in table order (the figures' colours since the systems were added).
for _s in (
    System(
        "videollm-online",
        "VideoLLM-online",
        "#1f77b4",
        dict(dcm=False, use_memory=False, last_k_narration=None, mod=False),
    ),
    System(
        "videollm-mod", "VideoLLM-MoD", "#ff7f0e", dict(dcm=False, use_memory=False, last_k_narration=None, mod=True)
    ),
    System("flownar-c", "FlowNar-C", "#2ca02c", dict(dcm=True, use_memory=True, last_k_narration=10, mod=False)),
    System("flownar", "FlowNar", "#d62728", dict(dcm=True, use_memory=True, last_k_narration=None, mod=False)),
    System(
        "dcm-only",
        "DCM only (no CLAM)",
        "#9467bd",
        dict(dcm=True, use_memory=False, last_k_narration=None, mod=False),
        paper=False,
        ablation=True,
    ),
    System(
        "flash-vstream",
        "Flash-VStream memory (ours: FlowNar with Flash Memory)",
        "#8c564b",
        dict(dcm=True, use_memory=True, last_k_narration=None, mod=False, memory="flash"),
        paper=False,
        built_from=("flownar",),
    ),
    System(
        "streaming-vlm",
        "StreamingVLM-style cache (ours: sinks + recent frames + recent text)",
        "#e377c2",
        dict(dcm=False, use_memory=False, last_k_narration=10, mod=False, vision_window=32, contiguous_positions=True),
        paper=False,
        built_from=("flownar-c",),
    ),
    System("world-oracle", "World oracle (reference: not learned, knows the world)", "#000000", None, paper=False),
):
    register(_s)
del _s
