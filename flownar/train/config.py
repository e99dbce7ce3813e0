"""Training settings: :class:`TrainConfig` (every field of a run, recorded in its ``train_config.json``), the
profiles (``smoke``, ``default``, ``paper``) and the rules that compare a saved run's settings with asked ones."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .. import paths, profiles
from .. import systems as registry
from ..data.samples import MAX_NUM_FRAMES
from ..data.world import training_cap
from ..errors import FlowNarError


@dataclass
class TrainConfig:
    system: str = "flownar"
    dataset: str = "ek100"
    profile: str = "smoke"
    data_root: str = ""  # empty: the embedded synthetic dataset of the profile
    out: str = ""  # empty: runs/<dataset>/<profile>/<system>
    seed: int = 0
    # model
    model_size: str = "tiny"  # from-scratch Llama size (embedded): micro | tiny | small
    llm_path: str = ""  # a local Llama directory: LoRA fine-tuning (paper scale)
    num_m_tokens: int = 20
    last_k_narration: int = -1  # -1: the system's preset
    memory_readout: str = "segment_end"
    flash_clusters: int = -1  # flash-vstream: CSM centroids (-1: the rest of the memory block)
    flash_detail_frames: int = -1  # flash-vstream: retrieved frames (-1: 1 if the block has room)
    vision_window: int = -1  # streaming-vlm: frames kept in the cache (-1: the preset's 32)
    # optimisation
    epochs: float = 2.0
    lr: float = 2e-4
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    content_loss_weight: float = 1.0  # embedded data only: loss weight of the words naming verb and object
    questions: bool = False  # embedded data only: the world's questions asked in the training streams (streaming QA)
    grad_clip: float = 1.0
    grad_accum: int = 16
    max_num_frames: int = MAX_NUM_FRAMES
    max_steps: int = 0  # > 0: stop after this many optimizer steps (smoke tests)
    bf16: bool = False
    gradient_checkpointing: bool = False
    lora_r: int = 128
    lora_alpha: int = 256
    lora_dropout: float = 0.05
    threads: int = 0  # CPU threads of this run (0: torch's default); part of the recipe: sums run in this order
    # bookkeeping
    save_every: int = 0  # optimizer steps between checkpoints (0: only at the end)
    log_every: int = 1
    deepspeed: str = ""  # a DeepSpeed config file (e.g. flownar/configs/zero2.json)
    progress: bool = True

    def run_dir(self) -> Path:
        return Path(self.out) if self.out else paths.run_dir(self.dataset, self.profile, self.system)


# The paper's schedule for `paper`; CPU-sized ones for the embedded profiles.
TRAIN_PROFILES: dict[str, dict] = {
    "smoke": dict(
        model_size="micro",
        epochs=4.0,
        lr=3e-3,
        grad_accum=1,
        max_num_frames=training_cap("smoke"),
        warmup_ratio=0.1,
    ),
    # world v3: capped clips are short, so many small steps (batch 1, no accumulation) fit the CPU budget; one
    # thread per run, two runs at a time (ensure_trained_all)
    "default": dict(
        model_size="mini",
        epochs=10.0,
        lr=1e-3,
        grad_accum=1,
        max_num_frames=training_cap("default"),
        warmup_ratio=0.05,
        threads=1,
    ),
    "paper": dict(
        epochs=2.0,
        lr=2e-4,
        grad_accum=16,
        max_num_frames=MAX_NUM_FRAMES,
        warmup_ratio=0.05,
        bf16=True,
        gradient_checkpointing=True,
    ),
}
PAPER_EPOCHS = {"ek100": 4.0, "ego4d": 2.0, "egoexo4d": 2.0}
# The embedded default: the same number of optimizer steps on every layout. Ego4D (two annotation passes) and
# EgoExo4D (two annotators) have two streams per video, so half the epochs.
DEFAULT_EPOCHS = {"ek100": 10.0, "ego4d": 5.0, "egoexo4d": 5.0}


def train_config(system: str, profile: str = "smoke", dataset: str = "ek100", **overrides) -> TrainConfig:
    """The profile's settings for ``system``, then ``overrides`` (unknown keys raise)."""
    registry.get(system)  # a clear error for an unknown key
    if profile not in TRAIN_PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {sorted(TRAIN_PROFILES)}")
    kw = dict(TRAIN_PROFILES[profile])
    if profile == "paper":
        kw["epochs"] = PAPER_EPOCHS.get(dataset, 2.0)
    elif profile == "default":
        kw["epochs"] = DEFAULT_EPOCHS.get(dataset, kw["epochs"])
    names = {f.name for f in fields(TrainConfig)}
    bad = set(overrides) - names
    if bad:
        raise ValueError(f"unknown training settings {sorted(bad)}")
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(system=system, profile=profile, dataset=dataset, **kw)


def check_paper_setup(cfg: TrainConfig) -> None:
    """The paper profile fine-tunes a local Llama on FlowNar-Data: refuse to start without both."""
    if not profiles.get(cfg.profile).real_data:
        return
    if not cfg.llm_path:
        raise FlowNarError(
            "the paper profile fine-tunes a local Llama with LoRA: give its folder (flownar train "
            "--llm DIR, or make reproduce-<dataset> PROFILE=paper LLM_PATH=DIR)"
        )
    if not Path(cfg.llm_path, "config.json").is_file():
        raise FlowNarError(f"{cfg.llm_path}: not a Hugging Face model folder (no config.json)")
    if not cfg.data_root:
        raise FlowNarError(
            "the paper profile trains on FlowNar-Data: give the dataset folder (flownar train --data "
            "DIR, or DATA_ROOT=DIR)"
        )


# settings that do not change what is trained: how it is launched or shown, and where it is written (the saved
# config is read from that folder; a launched run records its resolved path, a notebook's config may leave it empty)
LAUNCH_ONLY = ("progress", "deepspeed", "out")


PATH_SETTINGS = ("data_root", "llm_path")  # compared as the folders they name: "d", "./d/" and "/abs/d" alike


def _same_setting(key: str, saved, now) -> bool:
    if saved == now:
        return True
    if key in PATH_SETTINGS and saved and now:
        return Path(str(saved)).expanduser().resolve() == Path(str(now)).expanduser().resolve()
    return False


def settings_diff(old: dict, cfg: "TrainConfig") -> dict:
    """The settings in which a saved ``train_config.json`` (``old``) differs from ``cfg``: ``{field: (saved,
    now)}``, launch-only fields aside; path settings (:data:`PATH_SETTINGS`) are compared resolved. A field the
    saved run does not record (added to TrainConfig after it was trained) counts as its default: a run trained
    before the field existed is the run the default describes."""
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    mine = asdict(cfg)
    return {
        k: (old.get(k, defaults.get(k)), v)
        for k, v in mine.items()
        if k not in LAUNCH_ONLY and not _same_setting(k, old.get(k, defaults.get(k)), v)
    }


def parse_overrides(items: list[str]) -> dict:
    types = {f.name: f.type for f in fields(TrainConfig)}
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        if k not in types:
            raise ValueError(f"--set: unknown setting {k!r}; known: {sorted(types)}")
        t = types[k]
        out[k] = (
            (v.lower() in ("1", "true", "yes"))
            if t in ("bool", bool)
            else int(v)
            if t in ("int", int)
            else float(v)
            if t in ("float", float)
            else v
        )
    return out
