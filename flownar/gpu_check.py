"""``make gpu-check``: everything this package wants to know from a GPU machine, in one short run that writes files.

Made for a borrowed node with no network, where only one folder comes back (``$OUT``): it runs from a checkout with
whatever PyTorch / transformers the node has (``PYTHONPATH=<checkout> python -m flownar.gpu_check``; no ``make
setup``, no downloads), skips what needs a missing optional package, records the versions it ran with, and keeps to
one deadline (``--budget-s``, default 420 s) that counts everything: imports, model builds, captures, the tests,
the LoRA step. A part that would not fit in what is left is skipped and says so; a failure is recorded where it
happened (per model size, mode and system) and everything else still runs.

Everything goes under ``--out`` (default ``$OUT`` when that is set, else ``paper_figures/ek100/bench``):

* ``gpu_check/console.log``: every line it printed; ``gpu_check/summary.json``: what ran, what failed or was
  skipped and why, seconds per part, rewritten after every step (a kill keeps what was done);
* ``gpu_check/versions.json``: torch, CUDA, transformers, peft, flash-attn, the GPU, the TF32 settings;
* ``gpu_check/tests.txt``: ``pytest tests/test_gpu.py`` when pytest is there, run *first* (before this process
  touches CUDA: a GPU in exclusive-process mode would refuse the child) with ``NVIDIA_TF32_OVERRIDE=0`` (NVIDIA's
  images force TF32 for fp32 matmuls, which the fp32 tolerances of those tests do not allow);
* ``gpu_check/capture_check.json``: the pytest-free correctness check: the captured step (CUDA graphs) against the
  eager one on the same forced schedule, at micro and Llama-3.2-1B size: the largest logit difference, the argmax
  agreement, the fed tokens; a captured bench row of a size whose check failed is marked ``capture_check: failed``;
* ``gpu_check/sdpa.json``: which of PyTorch's attention kernels accept the engine's shapes (grouped-query heads,
  with and without a mask): the kernel sdpa actually runs is the first that does;
* ``bench_gpu_<llm>_<eager|captured>.json``: the real-size benchmark in ``flownar bench``'s format (notebook 04
  draws every JSON of the bench folder), written after each system: Llama-3.2-1B shapes for every system and
  Llama-3.1-8B for VideoLLM-online and FlowNar-C, random bf16 weights, the EK100 schedule, 10^4 frames (10^5 for
  FlowNar-C), eager first, then captured. Each stream stops at its share of the budget (``frames`` says how far);
  a system that failed has an entry in ``errors``;
* ``gpu_check/lora_step.json``: one LoRA training step of FlowNar at Llama-3.2-1B size (r=128, bf16, gradient
  checkpointing) on a 1,200-frame stream (the original's cap): time and peak memory.

``--smoke`` runs the same parts at toy size on whatever device there is (CPU included), to check the script.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
LLMS = {"llama-3.2-1b": None, "llama-3.1-8b": ["videollm-online", "flownar-c"]}  # None: every learned system


class Run:
    """The run's output folder, console log, summary and deadline."""

    def __init__(self, out: Path, budget_s: float, smoke: bool, device: str):
        self.out, self.sub = out, out / "gpu_check"
        self.sub.mkdir(parents=True, exist_ok=True)
        self.t0, self.budget = time.perf_counter(), budget_s
        self.console = open(self.sub / "console.log", "w")
        self.summary: dict = {"device": device, "smoke": smoke, "budget_s": budget_s, "parts": {}, "errors": []}

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)

    def log(self, msg: str) -> None:
        line = f"[{time.perf_counter() - self.t0:7.1f} s] {msg}"
        print(line, file=sys.stderr, flush=True)
        self.console.write(line + "\n")
        self.console.flush()

    def save(self) -> None:
        self.summary["elapsed_s"] = round(time.perf_counter() - self.t0, 1)
        (self.sub / "summary.json").write_text(json.dumps(self.summary, indent=1, default=str))

    def error(self, where: str, e: BaseException) -> dict:
        rec = {"where": where, "error": f"{type(e).__name__}: {e}"[:1000], "traceback": traceback.format_exc()[-3000:]}
        self.summary["errors"].append(rec)
        self.log(f"FAILED {where}: {rec['error']}")
        return {"failed": rec["error"]}

    def part(self, name: str, fn, need_s: float = 0.0) -> dict:
        """Run one part unless less than ``need_s`` is left; record its result, error or skip, and its time."""
        t0 = time.perf_counter()
        if self.left() < need_s:
            res = {"skipped": f"deadline: {self.left():.0f} s left, the part needs about {need_s:.0f} s"}
            self.log(f"{name}: {res['skipped']}")
        else:
            self.log(f"{name} ...")
            try:
                res = fn()
            except Exception as e:  # record and go on: one failing part must not cost the others
                res = self.error(name, e)
        self.summary["parts"][name] = {"result": res, "seconds": round(time.perf_counter() - t0, 1)}
        self.save()
        return res


def tf32_settings() -> dict:
    """The TF32 switches (reading them does not initialise CUDA)."""
    return {
        "NVIDIA_TF32_OVERRIDE": os.environ.get("NVIDIA_TF32_OVERRIDE"),
        "matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }


def versions() -> dict:
    out = {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__}
    out["cuda"] = torch.version.cuda
    out["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    for name in ("transformers", "peft", "flash_attn", "deepspeed"):
        try:
            out[name] = importlib.import_module(name).__version__
        except Exception as e:  # missing or broken optional package: say so, go on
            out[name] = f"unavailable ({type(e).__name__})"
    return out | {"tf32": tf32_settings()}


def run_tests(sub: Path, timeout: float) -> dict:
    """tests/test_gpu.py in a child process, before this one initialises CUDA; TF32 off for its fp32 checks."""
    try:
        import pytest  # noqa: F401
    except ImportError:
        return {"skipped": "pytest is not installed (the capture check below does not need it)"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "test_gpu.py")]
    env = {**os.environ, "NVIDIA_TF32_OVERRIDE": "0"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired as e:
        (sub / "tests.txt").write_text(_text(e.stdout) + _text(e.stderr) + f"\n[timed out after {timeout:.0f} s]\n")
        return {"failed": f"timed out after {timeout:.0f} s (partial output in tests.txt)"}
    (sub / "tests.txt").write_text(proc.stdout + proc.stderr)
    return {"returncode": proc.returncode, "last_line": (proc.stdout.strip().splitlines() or [""])[-1]}


def _text(b) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


def capture_check(device: str, llm: str, frames: int = 48) -> dict:
    """The captured step against the eager one on the same frames and forced schedule (FlowNar-C: DCM pruning
    and the last-k window change the cache's shape on the way): fed tokens equal, the largest logit difference and
    the argmax agreement over every fed position. Passes with equal tokens and >= 99 % argmax agreement."""
    from .efficiency.accounting import bench_chat, bench_config, bench_model
    from .stream import Narrator

    chat = bench_chat()
    cfg = bench_config("flownar-c", llm, chat)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = bench_model(cfg, device, dtype)
    g = torch.Generator().manual_seed(0)
    pool = torch.randn(frames, cfg.frame_num_tokens, cfg.vision_hidden_size, generator=g).to(device, dtype)
    text = [chat.tok.convert_tokens_to_ids("▁the")] * 6
    runs = []
    for capture in (False, True):
        narrator = Narrator(model, chat, record_logits=True, capture=capture, fuse=True, cache_capacity=64)
        for i in range(frames):
            narrator.push(pool[i], speak=(i % 7 == 6) if i else None, script_text=text)
        runs.append((narrator.fed_ids, torch.cat(narrator.fed_logits).float()))
    (ids_e, lg_e), (ids_c, lg_c) = runs
    agree = float((lg_e.argmax(-1) == lg_c.argmax(-1)).float().mean())
    diff = float((lg_e - lg_c).abs().max())
    return {
        "llm": llm,
        "dtype": str(dtype).split(".")[-1],
        "positions": lg_e.shape[0],
        "same_tokens": ids_e == ids_c,
        "max_abs_logit_diff": diff,
        "argmax_agreement": agree,
        "passed": ids_e == ids_c and agree >= 0.99,
    }


def sdpa_probe(device: str, llm: str, new: int = 11, cached: int = 4096) -> dict:
    """Which sdpa kernels accept the engine's attention at ``llm``'s head layout (GQA): ``enable_gqa`` with the
    additive mask the frame steps and the captured step pass, and without one; and the engine's own call
    (:func:`flownar.models.dcm_attention.gqa_sdpa`, which folds the query heads under a mask on CUDA) with the
    mask. ``runs``: the first kernel in torch's order that accepts it; ``picked``: torch's own choice."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    from .efficiency.accounting import bench_chat, bench_config
    from .models.dcm_attention import gqa_sdpa, sdpa_backend

    cfg = bench_config("flownar-c", llm, bench_chat())
    hd, dtype = cfg.hidden_size // cfg.num_attention_heads, torch.bfloat16
    q = torch.randn(1, cfg.num_attention_heads, new, hd, device=device, dtype=dtype)
    k = torch.randn(1, cfg.num_key_value_heads, cached, hd, device=device, dtype=dtype)
    mask = torch.zeros(new, cached, device=device, dtype=dtype)
    calls = {
        "with mask": lambda: sdpa(q, k, k, attn_mask=mask, enable_gqa=True),
        "no mask": lambda: sdpa(q, k, k, enable_gqa=True),
        "engine (gqa_sdpa), with mask": lambda: gqa_sdpa(q, k, k, mask),
    }
    out = {}
    for name, call in calls.items():
        for b in (
            SDPBackend.FLASH_ATTENTION,
            SDPBackend.EFFICIENT_ATTENTION,
            SDPBackend.CUDNN_ATTENTION,
            SDPBackend.MATH,
        ):
            try:
                with sdpa_kernel([b]):
                    call()
                ok = True
            except Exception:  # "No available kernel": this backend refuses these shapes
                ok = False
            out.setdefault(name, {})[b.name] = ok
    for ok in out.values():
        ok["runs"] = next((name for name, yes in ok.items() if yes), None)
    out["engine (gqa_sdpa), with mask"]["picked"] = sdpa_backend(q, k, mask)
    out["no mask"]["picked"] = sdpa_backend(q, k, None)
    return out


def run_benches(run: Run, plan: list[tuple[str, list[str]]], device: str, smoke: bool, failed_checks: set) -> dict:
    """Every (size, mode, system) stream, eager before captured, each in its own try; the JSON of a (size, mode)
    rewritten after each system. Each stream gets an equal share of what is left."""
    from .efficiency.bench import run_bench

    done = {}
    todo = [(llm, mode, s) for llm, systems in plan for mode in ("eager", "captured") for s in systems]
    files: dict[tuple, dict] = {}
    for k, (llm, mode, system) in enumerate(todo):
        where = f"bench {llm} {mode} {system}"
        share = (run.left() - 20.0) / (len(todo) - k)  # 20 s kept for the summary and the LoRA step's skip
        path = run.out / f"bench_gpu_{llm}_{mode}.json"
        rec = files.setdefault((llm, mode), {"runs": [], "errors": [], "gpu_check": {"mode": mode}})
        if share < 5.0:
            rec["errors"].append({"system": system, "skipped": f"deadline ({run.left():.0f} s left)"})
        else:
            frames = 200 if smoke else (100_000 if system == "flownar-c" else 10_000)
            try:
                res = run_bench(
                    [system],
                    {system: frames},
                    config=llm,
                    device=device,
                    dtype="bfloat16" if device.startswith("cuda") else "float32",
                    progress=False,
                    count_macs=False,
                    capture=mode == "captured",
                    max_seconds=share,
                )
                r = res.pop("runs")[0] | {"seconds_allowed": round(share, 1)}
                if mode == "captured" and llm in failed_checks:
                    r["capture_check"] = "failed"
                rec["runs"].append(r)
                rec.update({k2: v for k2, v in res.items() if k2 not in rec})
                run.log(f"{where}: {r['frames']} frames, {r['fps']:.1f} frames/s")
            except Exception as e:
                rec["errors"].append({"system": system} | run.error(where, e))
        path.write_text(json.dumps(rec))
        done[path.name] = {r["system"]: {"frames": r["frames"], "fps": round(r["fps"], 2)} for r in rec["runs"]}
        run.summary["parts"]["bench"] = {"result": done}
        run.save()
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
    default_out = Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "paper_figures" / "ek100" / "bench"
    p.add_argument("--out", type=Path, default=default_out, help="where everything goes (default: $OUT if set)")
    p.add_argument("--budget-s", type=float, default=420.0, help="wall time for everything (default 420)")
    p.add_argument("--smoke", action="store_true", help="toy sizes on any device, to check the script")
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # does not create a CUDA context
    if device == "cpu" and not args.smoke:
        print("gpu-check: no CUDA device here (use --smoke to check the script on the CPU)", file=sys.stderr)
        return 2
    run = Run(args.out, args.budget_s, args.smoke, device)
    try:
        _parts(run, device, args.smoke)
    finally:
        run.summary["total_s"] = round(time.perf_counter() - run.t0, 1)
        run.save()
        run.log(json.dumps({k: v for k, v in run.summary.items() if k != "versions"}, default=str)[:4000])
        run.console.close()
    return 0


def _parts(run: Run, device: str, smoke: bool) -> None:
    """The parts in order: the tests (before this process touches CUDA), versions, the capture check, the sdpa
    probe, the benches (eager first), the LoRA step."""
    b = run.budget
    run.part("tests", lambda: run_tests(run.sub, timeout=max(10.0, min(0.15 * b, run.left() - 0.6 * b))), 10.0)
    run.summary["versions"] = versions()
    (run.sub / "versions.json").write_text(json.dumps(run.summary["versions"], indent=1))
    run.save()
    sizes = ["micro"] if smoke else ["micro", "llama-3.2-1b"]
    checks = {}
    for llm in sizes:
        checks[llm] = run.part(f"capture_check {llm}", lambda llm=llm: capture_check(device, llm), 5.0)
    (run.sub / "capture_check.json").write_text(json.dumps(checks, indent=1))
    failed = {llm for llm, c in checks.items() if not c.get("passed")}
    if device.startswith("cuda"):
        sdpa = run.part("sdpa", lambda: sdpa_probe(device, "micro" if smoke else "llama-3.2-1b"), 2.0)
        (run.sub / "sdpa.json").write_text(json.dumps(sdpa, indent=1))
    from . import systems as registry

    plan = [("micro", ["videollm-online", "flownar-c"])]
    if not smoke:
        plan = [(llm, systems or registry.learned()) for llm, systems in LLMS.items()]
    run.part("bench", lambda: run_benches(run, plan, device, smoke, failed), 10.0)
    llm = "micro" if smoke else "llama-3.2-1b"
    run.part("lora_step", lambda: lora_step(run.sub, device, llm, 60 if smoke else 1200), 2.0 if smoke else 30.0)


if __name__ == "__main__":
    raise SystemExit(main())
