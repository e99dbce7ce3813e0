"""``make gpu-check``: everything this package wants to know from a GPU machine, in one short run that writes files.

Made for a borrowed node with no network: it runs from a checkout with whatever PyTorch / transformers the node
has (``PYTHONPATH=<checkout> python -m flownar.gpu_check``; no ``make setup``, no downloads), skips what needs a
missing optional package (with a message in ``summary.json``), records the versions it ran with, and keeps to a
wall-time budget (``--budget-s``, default 420 s: it fits in 8 minutes with the model builds).

What it writes (``--out``, default ``paper_figures/ek100/bench``):

* ``gpu_check/versions.json``: torch, CUDA, transformers, peft, flash-attn, the GPU;
* ``gpu_check/tests.txt``: ``pytest tests/test_gpu.py`` (the captured step's CUDA graphs against the eager engine,
  the streaming engine against the teacher-forced pass, on the device);
* ``bench_gpu_<llm>_<eager|captured>.json``: the real-size benchmark in ``flownar bench``'s format (notebook 04
  draws every JSON of the bench folder): Llama-3.2-1B shapes for every system and Llama-3.1-8B for VideoLLM-online
  and FlowNar-C, random bf16 weights, the EK100 schedule, 10^4 frames (10^5 for FlowNar-C, whose memory is
  bounded), eager and captured. Each stream stops at its share of the budget; ``frames`` says how far it got;
* ``gpu_check/lora_step.json``: one LoRA training step of FlowNar at Llama-3.2-1B size (r=128, bf16, gradient
  checkpointing) on a 1,200-frame stream (the original's cap): time and peak memory;
* ``gpu_check/summary.json``: what ran, what was skipped and why, seconds per part.

``--smoke`` runs the same parts at toy size on whatever device there is (CPU included), to check the script.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def versions() -> dict:
    out = {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__}
    out["cuda"] = torch.version.cuda
    out["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    for name in ("transformers", "peft", "flash_attn", "deepspeed"):
        try:
            out[name] = importlib.import_module(name).__version__
        except Exception as e:  # missing or broken optional package: say so, go on
            out[name] = f"unavailable ({type(e).__name__})"
    return out


def run_tests(out: Path, timeout: float) -> dict:
    try:
        import pytest  # noqa: F401
    except ImportError:
        return {"skipped": "pytest is not installed"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "test_gpu.py")]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"failed": f"timed out after {timeout:.0f} s"}
    (out / "tests.txt").write_text(proc.stdout + proc.stderr)
    return {"returncode": proc.returncode, "last_line": (proc.stdout.strip().splitlines() or [""])[-1]}


def run_benches(out: Path, plan: list[tuple[str, list[str]]], device: str, seconds: float, smoke: bool) -> dict:
    from .efficiency.bench import run_bench

    done = {}
    for llm, systems in plan:
        frames = {s: (100_000 if s == "flownar-c" else 10_000) for s in systems}
        if smoke:
            frames = {s: 200 for s in systems}
        for mode in ("eager", "captured"):
            res = run_bench(
                systems,
                frames,
                config=llm,
                device=device,
                dtype="bfloat16" if device.startswith("cuda") else "float32",
                progress=False,
                count_macs=False,
                capture=mode == "captured",
                max_seconds=seconds,
            )
            res["gpu_check"] = {"mode": mode, "seconds_per_stream": seconds}
            path = out / f"bench_gpu_{llm}_{mode}.json"
            path.write_text(json.dumps(res))
            done[path.name] = {r["system"]: {"frames": r["frames"], "fps": round(r["fps"], 2)} for r in res["runs"]}
    return done


def lora_step(out: Path, device: str, llm: str, frames: int) -> dict:
    """One optimizer step of FlowNar with LoRA at ``llm`` size on a ``frames``-frame stream sample."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        return {"skipped": "peft is not installed"}
    from .batches import model_inputs
    from .data.samples import Narration, NarrationStream, VideoInfo, make_stream_sample
    from .efficiency.accounting import bench_chat, bench_config, bench_model
    from .models.masks import sample_expiry
    from .train.model import lora_target_modules

    chat = bench_chat()
    cfg = bench_config("flownar", llm, chat)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = bench_model(cfg, device, dtype)
    model.gradient_checkpointing_enable()
    model.config.use_cache = False
    lora = LoraConfig(r=128, lora_alpha=256, lora_dropout=0.05, target_modules=lora_target_modules())
    lora.modules_to_save = ["connector", "clam"]
    model = get_peft_model(model, lora)
    model.train()
    seconds = frames / 2.0
    texts = ("you take the cup", "you open the fridge", "you wash the knife")  # consecutive repeats are merged
    narrations = [Narration(t, texts[i % 3]) for i, t in enumerate(torch.arange(1.0, seconds, 4.0).tolist())]
    stream = NarrationStream("v", "v", narrations)
    s = make_stream_sample(stream, VideoInfo("v", seconds, Path("x")), 2.0, use_memory=True, seed=None)
    enc = chat.encode(s)
    expiry = sample_expiry(enc, cfg)
    batch = dict(
        input_ids=enc.input_ids[None],
        labels=enc.labels[None],
        frames=torch.randn(s.num_frames, cfg.frame_num_tokens, cfg.vision_hidden_size, dtype=dtype),
        mem_frame_indices=enc.mem_frame_indices,
        expiry=expiry,
    )
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    loss = model(**model_inputs(batch, device)).loss
    loss.backward()
    opt.step()
    if cuda:
        torch.cuda.synchronize()
    rec = {
        "llm": llm,
        "tokens": len(enc.input_ids),
        "frames": s.num_frames,
        "loss": float(loss.detach()),
        "step_s": time.perf_counter() - t0,
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "cuda_max_allocated_bytes": torch.cuda.max_memory_allocated() if cuda else None,
    }
    (out / "lora_step.json").write_text(json.dumps(rec, indent=1))
    return rec


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flownar.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "paper_figures" / "ek100" / "bench")
    p.add_argument("--budget-s", type=float, default=420.0, help="wall time for all parts (default 420)")
    p.add_argument("--smoke", action="store_true", help="toy sizes on any device, to check the script")
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.smoke:
        print("gpu-check: no CUDA device here (use --smoke to check the script on the CPU)", file=sys.stderr)
        return 2
    out, sub = args.out, args.out / "gpu_check"
    sub.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    summary: dict = {"versions": versions(), "device": device, "smoke": args.smoke}
    (sub / "versions.json").write_text(json.dumps(summary["versions"], indent=1))

    def part(name, fn):
        t0 = time.perf_counter()
        try:
            summary[name] = fn()
        except Exception as e:  # record and go on: one failing part must not cost the others
            summary[name] = {"failed": f"{type(e).__name__}: {e}"[:2000]}
        summary[name + "_s"] = round(time.perf_counter() - t0, 1)
        (sub / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        print(f"gpu-check: {name} done in {summary[name + '_s']} s", file=sys.stderr)

    budget = args.budget_s
    from . import systems as registry

    all_systems = registry.learned()  # every system, 1B size
    plan = [("llama-3.2-1b", all_systems), ("llama-3.1-8b", ["videollm-online", "flownar-c"])]
    if args.smoke:
        plan = [("micro", ["videollm-online", "flownar-c"])]
    runs = sum(2 * len(systems) for _, systems in plan)
    part("tests", lambda: run_tests(sub, timeout=max(60.0, 0.15 * budget)))
    part("bench", lambda: run_benches(out, plan, device, seconds=0.65 * budget / runs, smoke=args.smoke))
    llm = "micro" if args.smoke else "llama-3.2-1b"
    part("lora_step", lambda: lora_step(sub, device, llm, 60 if args.smoke else 1200))
    summary["total_s"] = round(time.perf_counter() - start, 1)
    (sub / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(json.dumps({k: v for k, v in summary.items() if k != "versions"}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
