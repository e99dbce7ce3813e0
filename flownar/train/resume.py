"""A run folder over time: whether it may be trained into, its checkpoints (complete or not), the random-number
states that make a resumed run equal an uninterrupted one."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import socket
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import CheckpointError
from .config import TrainConfig, settings_diff

TRAIN_STATE = "trainer_state.json"
LOCK = ".train.lock"


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _checkpoint_complete(ckpt: Path) -> bool:
    """A checkpoint is complete when its trainer state (written last) and the optimiser's files are there."""
    if not (ckpt / TRAIN_STATE).is_file():
        return False
    plain = all((ckpt / n).is_file() for n in ("trainable.safetensors", "optimizer.pt", "scheduler.pt"))
    return plain or (ckpt / "deepspeed").is_dir()


def latest_checkpoint(run: Path) -> Path | None:
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


def rng_state() -> dict:
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


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


@contextlib.contextmanager
def run_lock(run: Path):
    """Hold ``run``'s training lock while the body runs: a second training into the same folder is refused while
    the first runs (two runs would interleave their log and checkpoints). The lock is an advisory ``flock`` on
    ``run/.train.lock``, which the system releases when its process ends however it ends, so the file a killed run
    leaves behind is a stale lock: the next training says so and takes it over."""
    run.mkdir(parents=True, exist_ok=True)
    path = run / LOCK
    f = open(path, "a+")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise CheckpointError(
                f"{run}: another flownar train is writing into this folder ({holder}); wait for it to finish, or "
                "train into another folder (--out)"
            ) from None
        f.seek(0)
        stale = f.read().strip()
        if stale:
            print(f"{path}: a lock left by a training that did not finish ({stale}); taking it over", flush=True)
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        f.flush()
        yield
        f.seek(0)
        f.truncate()  # an empty lock file: the last training finished (or stopped with an error) cleanly
    finally:
        f.close()  # closing releases the flock


def check_run_folder(run: Path, cfg: "TrainConfig", resume: bool) -> bool:
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
    diff = settings_diff(old, cfg)
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


def save_checkpoint(run: Path, step: int, epoch: int, item: int, cfg: TrainConfig, stepper, rank: int) -> None:
    ckpt = run / f"checkpoint-{step}"
    ckpt.mkdir(parents=True, exist_ok=True)
    stepper.save(ckpt, rank)
    (ckpt / f"rng_state_rank{rank}.json").write_text(json.dumps(rng_state()))
    if rank == 0:  # written last: its presence marks the checkpoint complete
        tmp = ckpt / f".{TRAIN_STATE}.tmp"
        tmp.write_text(json.dumps({"system": cfg.system, "step": step, "epoch": epoch, "item": item}))
        tmp.replace(ckpt / TRAIN_STATE)
