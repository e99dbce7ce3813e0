"""The training loop of every system: :func:`train` (``flownar train`` / ``python -m flownar.train``, also under
``deepspeed``).

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

import contextlib
import csv
import json
import math
import os
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import torch

from ..batches import StreamDataset, model_inputs
from ..checkpoint import CheckpointError, save_trained
from ..data.chat import ChatTokenizer
from ..data.prepare import prepare_dataset
from ..data.tokenizer import build_tokenizer
from ..errors import FlowNarError
from ..train_report import plot_loss
from .config import TrainConfig, check_paper_setup
from .model import build_model, parameter_counts
from .resume import TRAIN_STATE, check_run_folder, latest_checkpoint, run_lock, save_checkpoint, set_rng_state, set_seed
from .steppers import DeepSpeedStepper, PlainStepper


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()


def train(cfg: TrainConfig, resume: bool = True) -> Path:
    """Train ``cfg.system``; returns the run directory. Resumes from the latest checkpoint when ``resume``. Holds
    the run folder's lock (:func:`~flownar.train.resume.run_lock`) throughout."""
    check_paper_setup(cfg)
    run = cfg.run_dir()
    rank = int(os.environ.get("RANK", 0))
    with run_lock(run) if rank == 0 else contextlib.nullcontext():  # the ranks of one launch share the folder
        return _train(cfg, resume, run, rank)


def _train(cfg: TrainConfig, resume: bool, run: Path, rank: int) -> Path:
    from ..progress import progress_bar

    world = int(os.environ.get("WORLD_SIZE", 1))
    if check_run_folder(run, cfg, resume):
        if rank == 0:
            print(f"{cfg.system}: already trained with these settings in {run}")
        return run
    set_seed(cfg.seed)
    torch.set_num_threads(cfg.threads if cfg.threads > 0 else max(1, torch.get_num_threads()))
    data, chat, model, is_peft, device = _setup(cfg)
    dataset = StreamDataset(
        data,
        "train",
        chat,
        model.config,
        cfg.max_num_frames,
        seed=cfg.seed,
        content_weight=cfg.content_loss_weight,
        questions=cfg.questions,
    )
    if len(dataset) == 0:
        raise FlowNarError(f"{data.root}: no training samples")
    stepper, total_steps = _optimisation(cfg, model, len(range(rank, len(dataset), world)), device)
    step, start_epoch, start_item = _resume(run, cfg, stepper, rank, total_steps) if resume else (0, 0, 0)
    log = _TrainLog(run, cfg, step, rank)

    model.train()
    bar = progress_bar(
        total=total_steps, initial=step, desc=f"train {cfg.dataset}/{cfg.system}", enabled=cfg.progress, never=rank != 0
    )
    epoch, done = start_epoch, step >= total_steps
    while not done:
        order = epoch_order(len(dataset), cfg.seed, epoch)[rank::world]
        micro = 0
        for pos in range(start_item if epoch == start_epoch else 0, len(order)):
            batch = model_inputs(dataset[order[pos]], device)
            out = stepper.forward(batch)
            stepper.backward(out.loss)
            log.add(out, batch)
            micro += 1
            if micro % cfg.grad_accum != 0 and pos != len(order) - 1:
                continue
            stepper.step()
            step += 1
            bar.update(1)
            if rank == 0 and (step % cfg.log_every == 0 or step == total_steps):
                bar.set_postfix(
                    loss=f"{log.write(step, epoch + (pos + 1) / len(order), stepper.lr()):.3f}", refresh=False
                )
            if cfg.save_every and step % cfg.save_every == 0 and step < total_steps:
                save_checkpoint(run, step, epoch, pos + 1, cfg, stepper, rank)
            if step >= total_steps:
                done = True
                break
        epoch += 1
    bar.close()
    if rank == 0:
        _finish(run, cfg, stepper, model, chat, is_peft, step, len(dataset), log)
    return run


def _setup(cfg: TrainConfig):
    """The run's data, tokenizer, model (moved to its device; gradient checkpointing if asked) and device."""
    data = prepare_dataset(cfg.dataset, cfg.data_root or None, cfg.profile, cfg.seed, progress=False)
    tok = build_tokenizer(data, cfg.llm_path or None, questions=cfg.questions)
    chat = ChatTokenizer(tok, data.tokens_per_frame, cfg.num_m_tokens)
    model, is_peft = build_model(cfg, chat, data.feature_dim)
    device = (
        torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() else torch.device("cpu")
    )
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if is_peft:
            model.enable_input_require_grads()
    model.to(device)
    return data, chat, model, is_peft, device


def _optimisation(cfg: TrainConfig, model, my_items: int, device):
    """AdamW with a cosine schedule and warm-up over the run's optimizer steps, in the stepper of this launch."""
    from transformers import get_cosine_schedule_with_warmup

    steps_per_epoch = max(1, math.ceil(my_items / cfg.grad_accum))
    total_steps = max(1, math.ceil(steps_per_epoch * cfg.epochs))
    if cfg.max_steps > 0:
        total_steps = min(total_steps, cfg.max_steps)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999))
    sched = get_cosine_schedule_with_warmup(opt, int(cfg.warmup_ratio * total_steps), total_steps)
    return (DeepSpeedStepper if cfg.deepspeed else PlainStepper)(model, opt, sched, cfg, device), total_steps


def _resume(run: Path, cfg: TrainConfig, stepper, rank: int, total_steps: int) -> tuple[int, int, int]:
    """Restore the latest complete checkpoint (model, optimizer, schedule, random numbers): (step, epoch, item);
    (0, 0, 0) when there is none."""
    ckpt = latest_checkpoint(run)
    if ckpt is None:
        return 0, 0, 0
    state = json.loads((ckpt / TRAIN_STATE).read_text())
    if state["system"] != cfg.system:
        raise CheckpointError(f"{ckpt}: a {state['system']!r} run, but {cfg.system!r} was asked for")
    stepper.load(ckpt)
    rng = ckpt / f"rng_state_rank{rank}.json"
    if rng.is_file():
        set_rng_state(json.loads(rng.read_text()))
    else:
        warnings.warn(
            f"{rng}: no random-number state saved with this checkpoint; dropout and sampling after "
            "the resume will differ from an uninterrupted run",
            RuntimeWarning,
            stacklevel=2,
        )
    if rank == 0:
        print(f"resuming {cfg.system} from {ckpt.name} (step {state['step']}/{total_steps})")
    return state["step"], state["epoch"], state["item"]


class _TrainLog:
    """``train_config.json`` and ``train_log.csv`` of the run (rank 0 writes), and the losses since the last row."""

    FIELDS = ["step", "epoch", "loss", "lm_loss", "stream_loss", "lr", "tokens", "seconds"]

    def __init__(self, run: Path, cfg: TrainConfig, step: int, rank: int):
        self.path, self.t0 = run / "train_log.csv", time.time()
        self.acc = {"loss": 0.0, "lm_loss": 0.0, "stream_loss": 0.0, "n": 0, "tokens": 0}
        if rank != 0:
            return
        run.mkdir(parents=True, exist_ok=True)
        (run / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))
        if step == 0 or not self.path.exists():
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerow(self.FIELDS)
            return
        with open(self.path, newline="") as f:  # resumed: rows logged after the restored step (a kill after the
            rows = list(csv.reader(f))  # checkpoint) are dropped
        kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step]
        if len(kept) != len(rows):
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerows(kept)

    def add(self, out, batch) -> None:
        a = self.acc
        a["loss"] += float(out.loss.detach())
        a["lm_loss"] += float(out.lm_loss)
        a["stream_loss"] += float(out.stream_loss)
        a["n"] += 1
        a["tokens"] += batch["input_ids"].numel()

    def write(self, step: int, epoch: float, lr: float) -> float:
        """Append the row of ``step`` (mean losses since the last row); returns the mean loss."""
        a = self.acc
        losses = [round(a[k] / a["n"], 5) for k in ("loss", "lm_loss", "stream_loss")]
        row = [step, round(epoch, 4), *losses, lr, a["tokens"], round(time.time() - self.t0, 2)]
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow(row)
        mean = a["loss"] / a["n"]
        self.acc = {"loss": 0.0, "lm_loss": 0.0, "stream_loss": 0.0, "n": 0, "tokens": a["tokens"]}
        return mean


def _finish(run: Path, cfg: TrainConfig, stepper, model, chat, is_peft: bool, step: int, samples: int, log) -> None:
    """The final model and tokenizer, ``train_summary.json`` (written last: a finished run) and the loss figure."""
    save_trained(stepper.module, run, chat, is_peft)
    summary = {
        "system": cfg.system,
        "steps": step,
        "seconds": round(time.time() - log.t0, 1),
        "samples": samples,
        "parameters": parameter_counts(model),
    }
    (run / "train_summary.json").write_text(json.dumps(summary, indent=2))
    plot_loss(log.path, run / "fig_loss", title=f"{model.config.display_name} ({cfg.dataset}, {cfg.profile})")
