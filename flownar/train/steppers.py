"""What differs between a plain run and a DeepSpeed one (forward, backward, the optimizer step, checkpoints): the
two steppers the training loop drives."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .config import TrainConfig


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
