"""Training every system: ``flownar train`` / ``python -m flownar.train`` (also under ``deepspeed``).

Embedded default: a tiny Llama trained from scratch (full fine-tuning) on the synthetic data, on CPU.
Paper scale: a local Llama-3.2-1B-Instruct with LoRA (r=128, alpha=256, dropout 0.05 on every attention/MLP
projection and lm_head; connector and CLAM trained in full), bf16, gradient checkpointing, AdamW 2e-4, cosine
schedule with 5% warm-up, gradient clipping 1.0, effective batch 64 (1 per GPU x accumulation), EK100 4 epochs,
Ego4D / EgoExo4D 2; multi-GPU through DeepSpeed ZeRO-2 (``flownar/configs/zero2.json``).

One sample is one sequence (batch 1, as the original), so gradient accumulation makes the effective batch.
The run directory holds the final model (``save_pretrained``; config.json records the system), the tokenizer,
``train_log.csv``, ``fig_loss.{png,pdf}`` and ``checkpoint-<step>/`` folders for resuming.
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
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from . import paths
from .data.chat import ChatTokenizer
from .data.prepare import prepare_dataset
from .data.samples import MAX_NUM_FRAMES, build_stream_samples
from .data.tokenizer import build_tokenizer, load_tokenizer
from .errors import FlowNarError
from .models import SYSTEMS, CheckpointError, FlowNarConfig, FlowNarForCausalLM, config_for, load_model
from .models.masks import expiry_positions

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
    # optimisation
    epochs: float = 2.0
    lr: float = 2e-4
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    grad_accum: int = 16
    max_num_frames: int = MAX_NUM_FRAMES
    max_steps: int = 0  # > 0: stop after this many optimizer steps (smoke tests)
    bf16: bool = False
    gradient_checkpointing: bool = False
    lora_r: int = 128
    lora_alpha: int = 256
    lora_dropout: float = 0.05
    # bookkeeping
    save_every: int = 0  # optimizer steps between checkpoints (0: only at the end)
    log_every: int = 1
    deepspeed: str = ""  # a DeepSpeed config file (e.g. flownar/configs/zero2.json)
    progress: bool = True

    def run_dir(self) -> Path:
        return Path(self.out) if self.out else paths.runs_dir() / self.dataset / self.profile / self.system


# The paper's schedule for `paper`; CPU-sized ones for the embedded profiles.
TRAIN_PROFILES: dict[str, dict] = {
    "smoke": dict(model_size="micro", epochs=4.0, lr=3e-3, grad_accum=1, max_num_frames=240, warmup_ratio=0.1),
    "default": dict(model_size="mini", epochs=1.5, lr=1.5e-3, grad_accum=2, max_num_frames=600, warmup_ratio=0.05),
    "paper": dict(epochs=2.0, lr=2e-4, grad_accum=16, max_num_frames=MAX_NUM_FRAMES, warmup_ratio=0.05, bf16=True,
                  gradient_checkpointing=True),
}
PAPER_EPOCHS = {"ek100": 4.0, "ego4d": 2.0, "egoexo4d": 2.0}


def train_config(system: str, profile: str = "smoke", dataset: str = "ek100", **overrides) -> TrainConfig:
    """The profile's settings for ``system``, then ``overrides`` (unknown keys raise)."""
    if system not in SYSTEMS:
        raise ValueError(f"unknown system {system!r}; expected one of {sorted(SYSTEMS)}")
    if profile not in TRAIN_PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {sorted(TRAIN_PROFILES)}")
    kw = dict(TRAIN_PROFILES[profile])
    if profile == "paper":
        kw["epochs"] = PAPER_EPOCHS.get(dataset, 2.0)
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
        raise FlowNarError("the paper profile fine-tunes a local Llama with LoRA: give its folder (flownar train "
                           "--llm DIR, or make reproduce-<dataset> PROFILE=paper LLM_PATH=DIR)")
    if not Path(cfg.llm_path, "config.json").is_file():
        raise FlowNarError(f"{cfg.llm_path}: not a Hugging Face model folder (no config.json)")
    if not cfg.data_root:
        raise FlowNarError("the paper profile trains on FlowNar-Data: give the dataset folder (flownar train --data "
                           "DIR, or DATA_ROOT=DIR)")


# ---------------------------------------------------------------------------------------------------- data
class StreamDataset(torch.utils.data.Dataset):
    """Encoded narration-stream samples of one split, with their frames and DCM expiry positions."""

    def __init__(self, data, split: str, chat: ChatTokenizer, config: FlowNarConfig, max_num_frames: int,
                 seed: int = 0, cache_features: bool = True):
        self.data, self.chat, self.config = data, chat, config
        self.samples = build_stream_samples(data, split, use_memory=config.use_memory,
                                            max_num_frames=max_num_frames, seed=seed)
        self.cache = {} if cache_features else None

    def __len__(self) -> int:
        return len(self.samples)

    def features(self, uid: str) -> torch.Tensor:
        if self.cache is None:
            return self.data.load_features(uid)
        if uid not in self.cache:
            self.cache[uid] = self.data.load_features(uid)
        return self.cache[uid]

    def __getitem__(self, i: int) -> dict:
        s = self.samples[i]
        enc = self.chat.encode(s)
        frames = self.features(s.video_uid)[s.frames.start : s.frames.stop].float()  # (F, N, D)
        expiry = None
        if self.config.dcm or self.config.last_k_narration is not None:
            expiry = expiry_positions(len(enc.input_ids), enc.spans, self.config.dcm, self.config.last_k_narration)
        return dict(input_ids=enc.input_ids[None], labels=enc.labels[None], frames=frames,
                    mem_frame_indices=enc.mem_frame_indices, expiry=expiry, sample_id=s.sample_id)


def model_inputs(batch: dict, device) -> dict:
    out = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items() if k != "sample_id"}
    return out


# ---------------------------------------------------------------------------------------------------- model
def lora_target_modules() -> str:
    """Every attention/MLP projection of the LLM plus lm_head (CLAM's own projections are not matched)."""
    return r".*model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)|.*lm_head"


def build_model(cfg: TrainConfig, chat: ChatTokenizer, feature_dim: int):
    """From scratch (embedded) or a local Llama with LoRA (paper scale). Returns (model, is_peft)."""
    overrides = dict(num_m_tokens=cfg.num_m_tokens, memory_readout=cfg.memory_readout)
    if cfg.last_k_narration != -1:
        overrides["last_k_narration"] = cfg.last_k_narration
    if not cfg.llm_path:
        torch.manual_seed(cfg.seed)
        config = config_for(cfg.system, chat, feature_dim, size=cfg.model_size, **overrides)
        return FlowNarForCausalLM(config), False
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig

    base = AutoConfig.from_pretrained(cfg.llm_path, local_files_only=True).to_dict()
    for k in ("model_type", "architectures", "transformers_version", "auto_map"):
        base.pop(k, None)
    config = FlowNarConfig(system=cfg.system, vision_hidden_size=feature_dim, frame_num_tokens=chat.frame_num_tokens,
                           v_placeholder_id=chat.v_id, m_placeholder_id=chat.m_id, silent_id=chat.silent_id,
                           speak_id=chat.speak_id, **overrides, **base)
    config.base_model_path = str(Path(cfg.llm_path).resolve())
    torch.manual_seed(cfg.seed)
    dtype = torch.bfloat16 if cfg.bf16 else torch.float32
    model = FlowNarForCausalLM.from_pretrained(cfg.llm_path, config=config, local_files_only=True, dtype=dtype)
    saved = ["connector"] + (["clam"] if config.use_memory else []) + (["router"] if config.mod else [])
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=lora_target_modules(), modules_to_save=saved, bias="none")
    return get_peft_model(model, lora), True


def parameter_counts(model) -> dict:
    """Total / trainable parameters and CLAM's and the connector's share."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    clam = sum(p.numel() for n, p in model.named_parameters() if ".clam." in f".{n}" or n.startswith("clam."))
    conn = sum(p.numel() for n, p in model.named_parameters() if "connector." in n)
    return {"total": total, "trainable": trainable, "clam": clam, "connector": conn}


def save_trained(model, out: Path, chat: ChatTokenizer, is_peft: bool) -> None:
    """Model (or LoRA adapter + fully trained modules) and tokenizer; config.json always records the system."""
    from transformers.utils import logging as hf_logging

    out.mkdir(parents=True, exist_ok=True)
    hf_logging.disable_progress_bar()
    if is_peft:
        model.save_pretrained(out)
        model.get_base_model().config.save_pretrained(out)
    else:
        model.save_pretrained(out)
    chat.tok.save_pretrained(out)


def load_trained(path: str | Path, expect_system: str | None = None, dtype=None):
    """Load a run's model (full or LoRA) and its ChatTokenizer. Refuses another system's checkpoint."""
    path = Path(path)
    if (path / "adapter_config.json").is_file():
        from peft import PeftModel
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(path)
        if expect_system is not None and getattr(cfg, "system", None) != expect_system:
            raise CheckpointError(f"{path}: a {getattr(cfg, 'system', '?')!r} checkpoint, but {expect_system!r} was asked for")
        base = FlowNarForCausalLM.from_pretrained(cfg.base_model_path, config=cfg, local_files_only=True, dtype=dtype)
        # not merged: with tied embeddings (Llama-3.2-1B) merging lm_head's LoRA would also change the input
        # embeddings; the returned model runs the LoRA layers in place
        model = PeftModel.from_pretrained(base, path).get_base_model()
    else:
        model = load_model(path, expect_system=expect_system, dtype=dtype)
    tok = load_tokenizer(path)
    chat = ChatTokenizer(tok, model.config.frame_num_tokens, model.config.num_m_tokens)
    return model, chat


# ---------------------------------------------------------------------------------------------------- loop
def _set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _latest_checkpoint(run: Path) -> Path | None:
    ckpts = sorted(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]) if p.name.split("-")[1].isdigit() else -1)
    return ckpts[-1] if ckpts else None


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()


def train(cfg: TrainConfig, resume: bool = True) -> Path:
    """Train ``cfg.system``; returns the run directory. Resumes from the latest checkpoint when ``resume``."""
    from .progress import progress_bar

    check_paper_setup(cfg)
    run = cfg.run_dir()
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    _set_seed(cfg.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    data = prepare_dataset(cfg.dataset, cfg.data_root or None, cfg.profile, cfg.seed, progress=False)
    tok = build_tokenizer(data, cfg.llm_path or None)
    chat = ChatTokenizer(tok, data.tokens_per_frame, cfg.num_m_tokens)
    model, is_peft = build_model(cfg, chat, data.feature_dim)
    config = model.config
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() else torch.device("cpu")
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if is_peft:
            model.enable_input_require_grads()
    model.to(device)
    dataset = StreamDataset(data, "train", chat, config, cfg.max_num_frames, seed=cfg.seed)
    if len(dataset) == 0:
        raise FlowNarError(f"{data.root}: no training samples")
    my_items = len(range(rank, len(dataset), world))
    steps_per_epoch = max(1, math.ceil(my_items / cfg.grad_accum))
    total_steps = max(1, math.ceil(steps_per_epoch * cfg.epochs))
    if cfg.max_steps > 0:
        total_steps = min(total_steps, cfg.max_steps)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999))
    from transformers import get_cosine_schedule_with_warmup

    sched = get_cosine_schedule_with_warmup(opt, int(cfg.warmup_ratio * total_steps), total_steps)

    engine = None
    if cfg.deepspeed:
        import deepspeed

        ds_config = json.loads(Path(cfg.deepspeed).read_text())
        ds_config["gradient_accumulation_steps"] = cfg.grad_accum
        ds_config["train_micro_batch_size_per_gpu"] = 1
        ds_config["gradient_clipping"] = cfg.grad_clip
        ds_config.setdefault("bf16", {})["enabled"] = bool(cfg.bf16 and device.type == "cuda")
        if not torch.distributed.is_initialized():
            deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
        engine, opt, _, sched = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched, config=ds_config)

    step, start_epoch, start_item = 0, 0, 0
    ckpt = _latest_checkpoint(run) if resume else None
    if ckpt is not None:
        state = json.loads((ckpt / TRAIN_STATE).read_text())
        if state["system"] != cfg.system:
            raise CheckpointError(f"{ckpt}: a {state['system']!r} run, but {cfg.system!r} was asked for")
        if engine is not None:
            engine.load_checkpoint(str(ckpt / "deepspeed"))
        else:
            from safetensors.torch import load_file

            model.load_state_dict(load_file(ckpt / "trainable.safetensors", device=str(device)), strict=False)
            opt.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location=device, weights_only=True))
            sched.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
        step, start_epoch, start_item = state["step"], state["epoch"], state["item"]
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

    model.train()
    bar = progress_bar(total=total_steps, initial=step, desc=f"train {cfg.dataset}/{cfg.system}", enabled=cfg.progress,
                       never=rank != 0)
    t0 = time.time()
    acc = {"loss": 0.0, "lm_loss": 0.0, "stream_loss": 0.0, "n": 0, "tokens": 0}
    epoch, done = start_epoch, step >= total_steps
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16 and engine is None)
    while not done:
        order = _epoch_order(len(dataset), cfg.seed, epoch)[rank::world]
        micro = 0
        for pos in range(start_item if epoch == start_epoch else 0, len(order)):
            batch = model_inputs(dataset[order[pos]], device)
            with autocast:
                out = (engine or model)(**batch)
            loss = out.loss
            if engine is not None:
                engine.backward(loss)
                engine.step()
            else:
                (loss / cfg.grad_accum).backward()
            acc["loss"] += float(loss.detach())
            acc["lm_loss"] += float(out.lm_loss)
            acc["stream_loss"] += float(out.stream_loss)
            acc["n"] += 1
            acc["tokens"] += batch["input_ids"].numel()
            micro += 1
            if micro % cfg.grad_accum != 0 and pos != len(order) - 1:
                continue
            if engine is None:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            if rank == 0 and (step % cfg.log_every == 0 or step == total_steps):
                row = [step, round(epoch + (pos + 1) / len(order), 4)] + \
                      [round(acc[k] / acc["n"], 5) for k in ("loss", "lm_loss", "stream_loss")] + \
                      [sched.get_last_lr()[0], acc["tokens"], round(time.time() - t0, 2)]
                with open(log_path, "a", newline="") as f:
                    csv.writer(f).writerow(row)
                bar.set_postfix(loss=f"{acc['loss'] / acc['n']:.3f}")
                acc = {"loss": 0.0, "lm_loss": 0.0, "stream_loss": 0.0, "n": 0, "tokens": acc["tokens"]}
            if cfg.save_every and step % cfg.save_every == 0 and step < total_steps:
                _save_checkpoint(run, step, epoch, pos + 1, cfg, model, opt, sched, engine, rank)
            if step >= total_steps:
                done = True
                break
        epoch += 1
    bar.close()
    if rank == 0:
        save_trained(engine.module if engine is not None else model, run, chat, is_peft)
        counts = parameter_counts(model)
        (run / "train_summary.json").write_text(json.dumps(
            {"system": cfg.system, "steps": step, "seconds": round(time.time() - t0, 1), "samples": len(dataset),
             "parameters": counts}, indent=2))
        plot_loss(log_path, run / "fig_loss", title=f"{config.display_name} ({cfg.dataset}, {cfg.profile})")
    return run


def _save_checkpoint(run, step, epoch, item, cfg, model, opt, sched, engine, rank) -> None:
    ckpt = run / f"checkpoint-{step}"
    ckpt.mkdir(parents=True, exist_ok=True)
    if engine is not None:
        engine.save_checkpoint(str(ckpt / "deepspeed"))
    elif rank == 0:
        from safetensors.torch import save_file

        trainable = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(trainable, ckpt / "trainable.safetensors")
        torch.save(opt.state_dict(), ckpt / "optimizer.pt")
        torch.save(sched.state_dict(), ckpt / "scheduler.pt")
    if rank == 0:
        (ckpt / TRAIN_STATE).write_text(json.dumps({"system": cfg.system, "step": step, "epoch": epoch, "item": item}))


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


# ---------------------------------------------------------------------------------------------------- CLI
def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--system", required=True, choices=sorted(SYSTEMS))
    p.add_argument("--profile", default="smoke", choices=sorted(TRAIN_PROFILES))
    p.add_argument("--dataset", default="ek100", choices=["ek100", "ego4d", "egoexo4d"])
    p.add_argument("--data", default="", help="dataset root (empty: the embedded synthetic dataset)")
    p.add_argument("--out", default="", help="run directory (default runs/<dataset>/<profile>/<system>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--llm", default="", help="local Llama directory: LoRA fine-tuning (paper scale)")
    p.add_argument("--deepspeed", default="", help="DeepSpeed config, e.g. flownar/configs/zero2.json")
    p.add_argument("--no-resume", action="store_true", help="start over even if checkpoints exist")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a TrainConfig field, e.g. --set epochs=1 --set lr=5e-4")
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
        out[k] = (v.lower() in ("1", "true", "yes")) if t in ("bool", bool) else \
            int(v) if t in ("int", int) else float(v) if t in ("float", float) else v
    return out


def run_from_args(args) -> Path:
    cfg = train_config(args.system, args.profile, args.dataset, data_root=args.data, out=args.out, seed=args.seed,
                       llm_path=args.llm, deepspeed=args.deepspeed, progress=not args.quiet,
                       **_parse_overrides(args.set))
    run = train(cfg, resume=not args.no_resume)
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"trained {cfg.system}: {run}")
    return run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m flownar.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(p)
    args = p.parse_args(argv)
    run_from_args(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())


# ---------------------------------------------------------------------------------------------------- notebooks
# settings that do not change what is trained: how it is launched or shown, and where it is written (the saved
# config is read from that folder; a launched run records its resolved path, a notebook's config may leave it empty)
_LAUNCH_ONLY = ("progress", "deepspeed", "out")


def deepspeed_command(cfg: TrainConfig, num_gpus: int) -> list[str]:
    """The DeepSpeed launcher command that trains ``cfg`` on ``num_gpus`` local GPUs (ZeRO-2 unless ``cfg.deepspeed``
    names another config), with this interpreter; every setting that differs from the profile's is passed with
    ``--set``, so the launched run's ``train_config.json`` equals ``cfg`` up to the launch-only fields."""
    ds = cfg.deepspeed or str(CONFIG_DIR / "zero2.json")
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(num_gpus), "--module", "flownar.train",
           "--system", cfg.system, "--profile", cfg.profile, "--dataset", cfg.dataset, "--data", cfg.data_root,
           "--out", str(cfg.run_dir()), "--seed", str(cfg.seed), "--llm", cfg.llm_path, "--deepspeed", ds, "--quiet"]
    base = train_config(cfg.system, cfg.profile, cfg.dataset)
    passed = {"system", "profile", "dataset", "data_root", "out", "seed", "llm_path", "deepspeed", "progress"}
    for f in fields(TrainConfig):
        v = getattr(cfg, f.name)
        if f.name not in passed and v != getattr(base, f.name):
            cmd += ["--set", f"{f.name}={v}"]
    return cmd


def ensure_trained(cfg: TrainConfig, num_gpus: int | None = None) -> Path:
    """Train unless the run directory already holds a finished model trained with the same settings.

    With a local Llama (paper scale) and more than one visible GPU (``num_gpus``, default: all visible), the run
    is launched with DeepSpeed (:func:`deepspeed_command`) in a subprocess; otherwise it trains in this process.
    """
    check_paper_setup(cfg)
    run = cfg.run_dir()
    saved = run / "train_config.json"
    done = (run / "train_summary.json").is_file() and saved.is_file()
    if done:
        old = json.loads(saved.read_text())
        mine = asdict(cfg)
        if {k: v for k, v in old.items() if k not in _LAUNCH_ONLY} == {k: v for k, v in mine.items() if k not in _LAUNCH_ONLY}:
            return run
    if num_gpus is None:
        num_gpus = torch.cuda.device_count() if cfg.llm_path else 0
    if num_gpus > 1 and "RANK" not in os.environ:
        import subprocess

        cmd = deepspeed_command(cfg, num_gpus)
        print("launching:", " ".join(cmd))
        if subprocess.run(cmd).returncode != 0:
            raise FlowNarError(f"DeepSpeed training of {cfg.system} failed (command above); checkpoints, if any, "
                               f"are in {run} and a rerun resumes from them")
        return run
    return train(cfg, resume=not done)


def training_summary(runs: dict[str, Path]) -> "pd.DataFrame":
    """One row per system: parameters (total, trainable, CLAM's share), steps, samples, final losses."""
    import pandas as pd

    from .models import SYSTEM_NAMES

    rows = []
    for system, run in runs.items():
        s = json.loads((Path(run) / "train_summary.json").read_text())
        log = pd.read_csv(Path(run) / "train_log.csv")
        last = log.tail(max(1, len(log) // 10)).mean(numeric_only=True)  # mean over the last 10% of steps
        p = s["parameters"]
        rows.append({"system": SYSTEM_NAMES.get(system, system), "parameters": p["total"],
                     "trainable": p["trainable"], "CLAM share (%)": 100 * p["clam"] / p["total"],
                     "steps": s["steps"], "train samples": s["samples"],
                     "final loss": last["loss"], "final LM loss": last["lm_loss"],
                     "final decision loss": last["stream_loss"]})
    return pd.DataFrame(rows).set_index("system")


def plot_training_curves(runs: dict[str, Path], title: str = ""):
    """Loss per optimizer step, one line per system (total and narration-LM panels)."""
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    from .models import SYSTEM_NAMES

    df = pd.concat([pd.read_csv(Path(r) / "train_log.csv").assign(system=SYSTEM_NAMES.get(s, s)) for s, r in runs.items()])
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), sharex=True)
    for ax, col, name in zip(axes, ("loss", "lm_loss", "stream_loss"),
                             ("total loss", "narration tokens (LM)", "frame decisions (silent/speak)")):
        sns.lineplot(df, x="step", y=col, hue="system", ax=ax, legend=ax is axes[0])
        ax.set_title(name)
        ax.set_yscale("log")
        ax.set_ylabel("cross-entropy")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
