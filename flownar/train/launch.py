"""Launching runs: several systems at once on the CPU (:func:`ensure_trained_all`), a run unless it is done
(:func:`ensure_trained`), DeepSpeed on several GPUs (:func:`deepspeed_command`), and the command line
(``flownar train`` / ``python -m flownar.train``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import fields
from pathlib import Path

import torch

from .. import systems as registry
from ..data.layouts import DATASETS
from ..errors import FlowNarError
from ..report import display_path
from .config import TRAIN_PROFILES, TrainConfig, check_paper_setup, parse_overrides, settings_diff, train_config
from .loop import train

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


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
            print(f"{system:16s} {sec:7.1f} s  -> {display_path(run)}", flush=True)
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
            print(f"{system:16s} {sec:7.1f} s  -> {display_path(run)}", flush=True)
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
        same = not settings_diff(json.loads(saved.read_text()), cfg)
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
        **parse_overrides(args.set),
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
