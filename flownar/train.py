"""Training every system: ``flownar train`` / ``python -m flownar.train`` (also under ``deepspeed``).

Embedded default: a tiny Llama trained from scratch (full fine-tuning) on the synthetic data, on CPU.
Paper scale: a local Llama-3.2-1B-Instruct with LoRA (r=128, alpha=256, dropout 0.05 on every attention/MLP
projection and lm_head; connector and CLAM trained in full), bf16, gradient checkpointing, AdamW 2e-4, cosine
schedule with 5% warm-up, gradient clipping 1.0, effective batch 64 (1 per GPU x accumulation), EK100 4 epochs,
Ego4D / EgoExo4D 2; multi-GPU through DeepSpeed ZeRO-2 (``flownar/configs/zero2.json``).

One sample is one sequence (batch 1, as the original), so gradient accumulation makes the effective batch.
The run directory holds the final model (``save_pretrained``; config.json records the system; see
:mod:`flownar.checkpoint`), the tokenizer, ``train_log.csv``, ``fig_loss.{png,pdf}`` and ``checkpoint-<step>/``
folders for resuming. The loop reads straight through; what differs between a plain run and a DeepSpeed one
(forward, backward, the optimizer step, checkpoints) is in the two steppers, :class:`PlainStepper` and
:class:`DeepSpeedStepper`.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import sys
import time
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from . import paths
from . import systems as registry
from .batches import StreamDataset, model_inputs
from .checkpoint import CheckpointError, load_trained, save_trained
from .data.chat import ChatTokenizer
from .data.layouts import DATASETS
from .data.prepare import prepare_dataset
from .data.samples import MAX_NUM_FRAMES
from .data.synth import training_cap
from .data.tokenizer import build_tokenizer
from .errors import FlowNarError
from .models import FlowNarForCausalLM, config_for
from .train_report import plot_loss, plot_training_curves, training_summary

# moved elsewhere, still importable from here: load_trained/save_trained (flownar.checkpoint), StreamDataset/
# model_inputs (flownar.batches), plot_loss/plot_training_curves/training_summary (flownar.train_report)
__all__ = [
    "TrainConfig",
    "TRAIN_PROFILES",
    "train_config",
    "train",
    "ensure_trained",
    "ensure_trained_all",
    "deepspeed_command",
    "build_model",
    "parameter_counts",
    "load_trained",
    "save_trained",
    "StreamDataset",
    "model_inputs",
    "plot_loss",
    "plot_training_curves",
    "training_summary",
    "CheckpointError",
]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
TRAIN_STATE = "trainer_state.json"


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
        model_size="micro", epochs=4.0, lr=3e-3, grad_accum=1, max_num_frames=training_cap("smoke"), warmup_ratio=0.1
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
    if cfg.profile != "paper":
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


# ---------------------------------------------------------------------------------------------------- model
def lora_target_modules() -> str:
    """Every attention/MLP projection of the LLM plus lm_head (CLAM's own projections are not matched)."""
    return r".*model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)|.*lm_head"


def build_model(cfg: TrainConfig, chat: ChatTokenizer, feature_dim: int):
    """From scratch (embedded) or a local Llama with LoRA (paper scale). Returns (model, is_peft)."""
    overrides = dict(num_m_tokens=cfg.num_m_tokens, memory_readout=cfg.memory_readout)
    if cfg.last_k_narration != -1:
        overrides["last_k_narration"] = cfg.last_k_narration
    for name in ("flash_clusters", "flash_detail_frames", "vision_window"):
        if getattr(cfg, name) != -1:
            overrides[name] = getattr(cfg, name)
    if not cfg.llm_path:
        torch.manual_seed(cfg.seed)
        config = config_for(cfg.system, chat, feature_dim, size=cfg.model_size, **overrides)
        return FlowNarForCausalLM(config), False
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig

    base = AutoConfig.from_pretrained(cfg.llm_path, local_files_only=True).to_dict()
    config = config_for(cfg.system, chat, feature_dim, llm=base, **overrides)
    config.base_model_path = str(Path(cfg.llm_path).resolve())
    torch.manual_seed(cfg.seed)
    dtype = torch.bfloat16 if cfg.bf16 else torch.float32
    model = FlowNarForCausalLM.from_pretrained(cfg.llm_path, config=config, local_files_only=True, dtype=dtype)
    kind = config.memory_kind
    memory = [kind.module_name] if kind is not None and kind.module_name else []
    saved = ["connector"] + memory + (["router"] if config.mod else [])
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=lora_target_modules(),
        modules_to_save=saved,
        bias="none",
    )
    return get_peft_model(model, lora), True


def parameter_counts(model) -> dict:
    """Total / trainable parameters and CLAM's and the connector's share."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    clam = sum(p.numel() for n, p in model.named_parameters() if ".clam." in f".{n}" or n.startswith("clam."))
    conn = sum(p.numel() for n, p in model.named_parameters() if "connector." in n)
    return {"total": total, "trainable": trainable, "clam": clam, "connector": conn}


# ---------------------------------------------------------------------------------------------------- loop
def _set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _checkpoint_complete(ckpt: Path) -> bool:
    """A checkpoint is complete when its trainer state (written last) and the optimiser's files are there."""
    if not (ckpt / TRAIN_STATE).is_file():
        return False
    plain = all((ckpt / n).is_file() for n in ("trainable.safetensors", "optimizer.pt", "scheduler.pt"))
    return plain or (ckpt / "deepspeed").is_dir()


def _latest_checkpoint(run: Path) -> Path | None:
    """The newest complete checkpoint; newer incomplete ones (a kill while saving) are skipped with a warning."""
    ckpts = sorted(
        (p for p in run.glob("checkpoint-*") if p.name.split("-")[1].isdigit()), key=lambda p: int(p.name.split("-")[1])
    )
    for ckpt in reversed(ckpts):
        if _checkpoint_complete(ckpt):
            return ckpt
        warnings.warn(
            f"{ckpt}: incomplete checkpoint (interrupted while saving?), skipped; resuming from the previous one",
            RuntimeWarning,
            stacklevel=2,
        )
    return None


def _rng_state() -> dict:
    """Every random-number state training consumes (Python, NumPy, torch CPU and CUDA), as JSON."""
    py = random.getstate()
    npy = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [npy[0], npy[1].tolist(), int(npy[2]), int(npy[3]), float(npy[4])],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def _set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def _settings_diff(old: dict, cfg: "TrainConfig") -> dict:
    """The settings in which a saved ``train_config.json`` (``old``) differs from ``cfg``: ``{field: (saved,
    now)}``, launch-only fields aside. A field the saved run does not record (added to TrainConfig after it was
    trained) counts as its default: a run trained before the field existed is the run the default describes."""
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    mine = asdict(cfg)
    return {
        k: (old.get(k, defaults.get(k)), v)
        for k, v in mine.items()
        if k not in _LAUNCH_ONLY and old.get(k, defaults.get(k)) != v
    }


def _check_run_folder(run: Path, cfg: "TrainConfig", resume: bool) -> bool:
    """Before anything is written: may ``cfg`` be trained into ``run``? Returns True when ``run`` already holds
    this very run, finished (nothing to do). A folder holding a run of other settings is never touched: the error
    says what differs and how to proceed."""
    saved = run / "train_config.json"
    if not saved.is_file():
        return False
    old = json.loads(saved.read_text())
    if old.get("system") != cfg.system:
        raise CheckpointError(
            f"{run}: a {old.get('system')!r} run, but {cfg.system!r} was asked for; train into another folder (--out)"
        )
    diff = _settings_diff(old, cfg)
    if diff:
        what = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(diff.items()))
        raise CheckpointError(
            f"{run}: holds a run trained with other settings ({what}); train into another folder "
            "(--out), or delete this one to retrain here"
        )
    finished = (run / "train_summary.json").is_file()
    if finished and not resume:
        raise CheckpointError(f"{run}: holds this run, finished; delete the folder to train it again from scratch")
    return finished


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()


class PlainStepper:
    """Optimisation in this process: backward of ``loss / grad_accum`` after every sample; at each accumulation
    boundary gradient clipping, the optimizer and the scheduler step."""

    def __init__(self, model, opt, sched, cfg: TrainConfig, device: torch.device):
        self.model, self.opt, self.sched, self.cfg = model, opt, sched, cfg
        self.params = [p for g in opt.param_groups for p in g["params"]]
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16)
        self.device = device

    @property
    def module(self):
        return self.model

    def forward(self, batch: dict):
        with self.autocast:
            return self.model(**batch)

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.cfg.grad_accum).backward()

    def step(self) -> None:
        torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)

    def lr(self) -> float:
        return self.sched.get_last_lr()[0]

    def save(self, ckpt: Path, rank: int) -> None:
        if rank != 0:
            return
        from safetensors.torch import save_file

        trainable = {n: p.detach().cpu().contiguous() for n, p in self.model.named_parameters() if p.requires_grad}
        save_file(trainable, ckpt / "trainable.safetensors")
        torch.save(self.opt.state_dict(), ckpt / "optimizer.pt")
        torch.save(self.sched.state_dict(), ckpt / "scheduler.pt")

    def load(self, ckpt: Path) -> None:
        from safetensors.torch import load_file

        self.model.load_state_dict(load_file(ckpt / "trainable.safetensors", device=str(self.device)), strict=False)
        self.opt.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location=self.device, weights_only=True))
        self.sched.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))


class DeepSpeedStepper(PlainStepper):
    """Optimisation by a DeepSpeed engine (ZeRO-2 on GPUs; gloo on CPU in the tests): the engine accumulates,
    clips and steps by itself (``engine.step()`` after every backward acts only at accumulation boundaries)."""

    def __init__(self, model, opt, sched, cfg: TrainConfig, device: torch.device):
        import deepspeed

        ds_config = json.loads(Path(cfg.deepspeed).read_text())
        ds_config["gradient_accumulation_steps"] = cfg.grad_accum
        ds_config["train_micro_batch_size_per_gpu"] = 1
        ds_config["gradient_clipping"] = cfg.grad_clip
        ds_config.setdefault("bf16", {})["enabled"] = bool(cfg.bf16 and device.type == "cuda")
        if not torch.distributed.is_initialized():
            deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
        self.engine, opt, _, sched = deepspeed.initialize(
            model=model, optimizer=opt, lr_scheduler=sched, config=ds_config
        )
        self.model, self.opt, self.sched, self.cfg, self.device = model, opt, sched, cfg, device

    @property
    def module(self):
        return self.engine.module

    def forward(self, batch: dict):
        return self.engine(**batch)

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)
        self.engine.step()

    def step(self) -> None:
        pass  # done by the engine in backward()

    def save(self, ckpt: Path, rank: int) -> None:
        self.engine.save_checkpoint(str(ckpt / "deepspeed"))

    def load(self, ckpt: Path) -> None:
        self.engine.load_checkpoint(str(ckpt / "deepspeed"))


def train(cfg: TrainConfig, resume: bool = True) -> Path:
    """Train ``cfg.system``; returns the run directory. Resumes from the latest checkpoint when ``resume``."""
    from transformers import get_cosine_schedule_with_warmup

    from .progress import progress_bar

    check_paper_setup(cfg)
    run = cfg.run_dir()
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if _check_run_folder(run, cfg, resume):
        if rank == 0:
            print(f"{cfg.system}: already trained with these settings in {run}")
        return run
    _set_seed(cfg.seed)
    torch.set_num_threads(cfg.threads if cfg.threads > 0 else max(1, torch.get_num_threads()))
    data = prepare_dataset(cfg.dataset, cfg.data_root or None, cfg.profile, cfg.seed, progress=False)
    tok = build_tokenizer(data, cfg.llm_path or None)
    chat = ChatTokenizer(tok, data.tokens_per_frame, cfg.num_m_tokens)
    model, is_peft = build_model(cfg, chat, data.feature_dim)
    config = model.config
    device = (
        torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() else torch.device("cpu")
    )
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if is_peft:
            model.enable_input_require_grads()
    model.to(device)
    dataset = StreamDataset(
        data, "train", chat, config, cfg.max_num_frames, seed=cfg.seed, content_weight=cfg.content_loss_weight
    )
    if len(dataset) == 0:
        raise FlowNarError(f"{data.root}: no training samples")
    my_items = len(range(rank, len(dataset), world))
    steps_per_epoch = max(1, math.ceil(my_items / cfg.grad_accum))
    total_steps = max(1, math.ceil(steps_per_epoch * cfg.epochs))
    if cfg.max_steps > 0:
        total_steps = min(total_steps, cfg.max_steps)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999))
    sched = get_cosine_schedule_with_warmup(opt, int(cfg.warmup_ratio * total_steps), total_steps)
    stepper = (DeepSpeedStepper if cfg.deepspeed else PlainStepper)(model, opt, sched, cfg, device)

    step, start_epoch, start_item = 0, 0, 0
    ckpt = _latest_checkpoint(run) if resume else None
    if ckpt is not None:
        state = json.loads((ckpt / TRAIN_STATE).read_text())
        if state["system"] != cfg.system:
            raise CheckpointError(f"{ckpt}: a {state['system']!r} run, but {cfg.system!r} was asked for")
        stepper.load(ckpt)
        step, start_epoch, start_item = state["step"], state["epoch"], state["item"]
        rng = ckpt / f"rng_state_rank{rank}.json"
        if rng.is_file():
            _set_rng_state(json.loads(rng.read_text()))
        else:
            warnings.warn(
                f"{rng}: no random-number state saved with this checkpoint; dropout and sampling after "
                "the resume will differ from an uninterrupted run",
                RuntimeWarning,
                stacklevel=2,
            )
        if rank == 0:
            print(f"resuming {cfg.system} from {ckpt.name} (step {step}/{total_steps})")

    run.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        (run / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    log_path = run / "train_log.csv"
    log_fields = ["step", "epoch", "loss", "lm_loss", "stream_loss", "lr", "tokens", "seconds"]
    if rank == 0 and (step == 0 or not log_path.exists()):
        with open(log_path, "w", newline="") as f:
            csv.writer(f).writerow(log_fields)
    elif rank == 0:  # resumed: rows logged after the restored step (a kill after the checkpoint) are dropped
        with open(log_path, newline="") as f:
            rows = list(csv.reader(f))
        kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step]
        if len(kept) != len(rows):
            with open(log_path, "w", newline="") as f:
                csv.writer(f).writerows(kept)

    model.train()
    bar = progress_bar(
        total=total_steps, initial=step, desc=f"train {cfg.dataset}/{cfg.system}", enabled=cfg.progress, never=rank != 0
    )
    t0 = time.time()
    acc = {"loss": 0.0, "lm_loss": 0.0, "stream_loss": 0.0, "n": 0, "tokens": 0}
    epoch, done = start_epoch, step >= total_steps
    while not done:
        order = _epoch_order(len(dataset), cfg.seed, epoch)[rank::world]
        micro = 0
        for pos in range(start_item if epoch == start_epoch else 0, len(order)):
            batch = model_inputs(dataset[order[pos]], device)
            out = stepper.forward(batch)
            stepper.backward(out.loss)
            acc["loss"] += float(out.loss.detach())
            acc["lm_loss"] += float(out.lm_loss)
            acc["stream_loss"] += float(out.stream_loss)
            acc["n"] += 1
            acc["tokens"] += batch["input_ids"].numel()
            micro += 1
            if micro % cfg.grad_accum != 0 and pos != len(order) - 1:
                continue
            stepper.step()
            step += 1
            bar.update(1)
            if rank == 0 and (step % cfg.log_every == 0 or step == total_steps):
                row = (
                    [step, round(epoch + (pos + 1) / len(order), 4)]
                    + [round(acc[k] / acc["n"], 5) for k in ("loss", "lm_loss", "stream_loss")]
                    + [stepper.lr(), acc["tokens"], round(time.time() - t0, 2)]
                )
                with open(log_path, "a", newline="") as f:
                    csv.writer(f).writerow(row)
                bar.set_postfix(loss=f"{acc['loss'] / acc['n']:.3f}", refresh=False)  # printed at the next update
                acc = {"loss": 0.0, "lm_loss": 0.0, "stream_loss": 0.0, "n": 0, "tokens": acc["tokens"]}
            if cfg.save_every and step % cfg.save_every == 0 and step < total_steps:
                _save_checkpoint(run, step, epoch, pos + 1, cfg, stepper, rank)
            if step >= total_steps:
                done = True
                break
        epoch += 1
    bar.close()
    if rank == 0:
        save_trained(stepper.module, run, chat, is_peft)
        counts = parameter_counts(model)
        (run / "train_summary.json").write_text(
            json.dumps(
                {
                    "system": cfg.system,
                    "steps": step,
                    "seconds": round(time.time() - t0, 1),
                    "samples": len(dataset),
                    "parameters": counts,
                },
                indent=2,
            )
        )
        plot_loss(log_path, run / "fig_loss", title=f"{config.display_name} ({cfg.dataset}, {cfg.profile})")
    return run


def _save_checkpoint(run: Path, step: int, epoch: int, item: int, cfg: TrainConfig, stepper, rank: int) -> None:
    ckpt = run / f"checkpoint-{step}"
    ckpt.mkdir(parents=True, exist_ok=True)
    stepper.save(ckpt, rank)
    (ckpt / f"rng_state_rank{rank}.json").write_text(json.dumps(_rng_state()))
    if rank == 0:  # written last: its presence marks the checkpoint complete
        tmp = ckpt / f".{TRAIN_STATE}.tmp"
        tmp.write_text(json.dumps({"system": cfg.system, "step": step, "epoch": epoch, "item": item}))
        tmp.replace(ckpt / TRAIN_STATE)


# ------------------------------------------------------------------------------------------ launching (notebooks, make)
# settings that do not change what is trained: how it is launched or shown, and where it is written (the saved
# config is read from that folder; a launched run records its resolved path, a notebook's config may leave it empty)
_LAUNCH_ONLY = ("progress", "deepspeed", "out")


def deepspeed_command(cfg: TrainConfig, num_gpus: int) -> list[str]:
    """The DeepSpeed launcher command that trains ``cfg`` on ``num_gpus`` local GPUs (ZeRO-2 unless ``cfg.deepspeed``
    names another config), with this interpreter; every setting that differs from the profile's is passed with
    ``--set``, so the launched run's ``train_config.json`` equals ``cfg`` up to the launch-only fields."""
    ds = cfg.deepspeed or str(CONFIG_DIR / "zero2.json")
    cmd = [
        sys.executable,
        "-m",
        "deepspeed.launcher.runner",
        "--num_gpus",
        str(num_gpus),
        "--module",
        "flownar.train",
        "--system",
        cfg.system,
        "--profile",
        cfg.profile,
        "--dataset",
        cfg.dataset,
        "--data",
        cfg.data_root,
        "--out",
        str(cfg.run_dir()),
        "--seed",
        str(cfg.seed),
        "--llm",
        cfg.llm_path,
        "--deepspeed",
        ds,
        "--quiet",
    ]
    base = train_config(cfg.system, cfg.profile, cfg.dataset)
    passed = {"system", "profile", "dataset", "data_root", "out", "seed", "llm_path", "deepspeed", "progress"}
    for f in fields(TrainConfig):
        v = getattr(cfg, f.name)
        if f.name not in passed and v != getattr(base, f.name):
            cmd += ["--set", f"{f.name}={v}"]
    return cmd


def _ensure_trained_worker(cfg: TrainConfig) -> tuple[str, str, float]:
    t0 = time.time()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    return cfg.system, str(ensure_trained(cfg)), time.time() - t0


#: a system's training time relative to most others' on the CPU (embedded default, world v4: streaming-vlm 450 s,
#: the others 173-262 s), so that several runs at once start with the longest
TRAIN_COST = {"streaming-vlm": 1.8}


def ensure_trained_all(cfgs: list[TrainConfig], workers: int | None = None) -> dict[str, tuple[Path, float]]:
    """:func:`ensure_trained` for several systems: ``{system: (run directory, seconds)}``. On CPU with
    single-threaded runs (the embedded profiles), up to ``workers`` (default: the CPU count) train at once in
    separate processes, each printing a line when done; a run's result does not depend on which process trains
    it. Otherwise (GPUs, paper scale) one after the other."""
    out: dict[str, tuple[Path, float]] = {}
    if workers is None:
        workers = os.cpu_count() or 1
    parallel = workers > 1 and len(cfgs) > 1 and all(c.threads == 1 and not c.llm_path for c in cfgs)
    if not parallel:
        for cfg in cfgs:
            system, run, sec = _ensure_trained_worker(cfg)
            out[system] = (Path(run), sec)
            print(f"{system:16s} {sec:7.1f} s  -> {run}", flush=True)
        return out
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # the longest runs first (the pool takes them in order): the last one to start is a short one
    order = sorted(cfgs, key=lambda c: -TRAIN_COST.get(c.system, 1.0))
    with ProcessPoolExecutor(max_workers=min(workers, len(cfgs)), mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(_ensure_trained_worker, cfg) for cfg in order]
        for fut in as_completed(futures):
            system, run, sec = fut.result()
            out[system] = (Path(run), sec)
            print(f"{system:16s} {sec:7.1f} s  -> {run}", flush=True)
    return {c.system: out[c.system] for c in cfgs}


def ensure_trained(cfg: TrainConfig, num_gpus: int | None = None) -> Path:
    """Train unless the run directory already holds a finished model trained with the same settings.

    With a local Llama (paper scale) and more than one visible GPU (``num_gpus``, default: all visible), the run
    is launched with DeepSpeed (:func:`deepspeed_command`) in a subprocess; otherwise it trains in this process.
    """
    check_paper_setup(cfg)
    run = cfg.run_dir()
    saved = run / "train_config.json"
    done = (run / "train_summary.json").is_file() and saved.is_file()
    if saved.is_file():
        same = not _settings_diff(json.loads(saved.read_text()), cfg)
        if same and done:
            return run
        if not same:  # trained with other settings: keep it beside, train this one into a fresh folder
            aside = run.with_name(run.name + ".previous")
            if aside.exists():
                import shutil

                shutil.rmtree(aside)
            run.rename(aside)
            print(f"{run} held a run of other settings: moved to {aside.name}, training anew")
            done = False
    if num_gpus is None:
        num_gpus = torch.cuda.device_count() if cfg.llm_path else 0
    if num_gpus > 1 and "RANK" not in os.environ:
        import subprocess

        cmd = deepspeed_command(cfg, num_gpus)
        print("launching:", " ".join(cmd))
        if subprocess.run(cmd).returncode != 0:
            raise FlowNarError(
                f"DeepSpeed training of {cfg.system} failed (command above); checkpoints, if any, "
                f"are in {run} and a rerun resumes from them"
            )
        return run
    return train(cfg, resume=not done)


# ---------------------------------------------------------------------------------------------------- CLI
def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--system", required=True, choices=registry.learned())
    p.add_argument("--profile", default="smoke", choices=sorted(TRAIN_PROFILES))
    p.add_argument("--dataset", default="ek100", choices=DATASETS)
    p.add_argument("--data", default="", help="dataset root (empty: the embedded synthetic dataset)")
    p.add_argument("--out", default="", help="run directory (default runs/<dataset>/<profile>/<system>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--llm", default="", help="local Llama directory: LoRA fine-tuning (paper scale)")
    p.add_argument("--deepspeed", default="", help="DeepSpeed config, e.g. flownar/configs/zero2.json")
    p.add_argument("--no-resume", action="store_true", help="start over even if checkpoints exist")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a TrainConfig field, e.g. --set epochs=1 --set lr=5e-4",
    )
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # the deepspeed launcher's


def _parse_overrides(items: list[str]) -> dict:
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


def run_from_args(args) -> Path:
    cfg = train_config(
        args.system,
        args.profile,
        args.dataset,
        data_root=args.data,
        out=args.out,
        seed=args.seed,
        llm_path=args.llm,
        deepspeed=args.deepspeed,
        progress=not args.quiet,
        **_parse_overrides(args.set),
    )
    run = train(cfg, resume=not args.no_resume)
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"trained {cfg.system}: {run}")
    return run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m flownar.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_train_arguments(p)
    args = p.parse_args(argv)
    run_from_args(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
