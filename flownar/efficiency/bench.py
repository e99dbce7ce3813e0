"""The streaming benchmark: the real engine on random weights, replaying one narration schedule for every system;
per-frame wall time and, at 1, 10, 100, ... frames, cached tokens, KV bytes and memory (``flownar bench``)."""

from __future__ import annotations

import gc
import os
import platform
import time
from dataclasses import asdict

import numpy as np
import torch

from .accounting import (
    EK100_SEGMENT_STATS,
    Layout,
    bench_chat,
    bench_config,
    bench_model,
    kv_bytes_per_token,
    narration_schedule,
    simulate_stream,
    stream_macs,
)


# ---------------------------------------------------------------------------------------------------- benchmark
def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _point(narrator, frames: int, base_rss: int, t_all: float) -> dict:
    """The cache and process memory of ``narrator`` after ``frames`` frames (one point of a benchmark run)."""
    st, rss = narrator.state_size(), _rss_bytes()
    return {
        "frames": frames,
        "cache_tokens": st["tokens"],
        "kv_bytes": st["kv_bytes"],
        "kv_allocated_bytes": st.get("kv_allocated_bytes", st["kv_bytes"]),
        "clam_state_bytes": st["clam_state_bytes"],
        "memory_bank_bytes": st.get("memory_bank_bytes", 0),  # flash-vstream: the host-side feature bank
        "rss_bytes": rss,
        "rss_growth_bytes": rss - base_rss,
        "elapsed_s": time.perf_counter() - t_all,
    }


def checkpoints_up_to(n: int) -> list[int]:
    """1, 10, 100, ... up to n (and n itself)."""
    out, c = [], 1
    while c < n:
        out.append(c)
        c *= 10
    return out + [n]


def run_stream_bench(
    model,
    chat,
    schedule: list[int],
    n_frames: int,
    *,
    text_tokens: int = 12,
    engine: str = "static",
    progress: bool = False,
    frame_pool: int = 64,
    seed: int = 0,
    streams: int = 1,
    compile: bool = False,
    capture: bool = False,
    max_seconds: float | None = None,
) -> dict:
    """Push ``n_frames`` random frames through a Narrator replaying ``schedule`` with ``text_tokens``-token
    narrations. Returns per-frame wall times and, at 1, 10, 100, ... frames, the cache and memory.

    ``streams`` > 1: that many streams at once (:func:`flownar.drive.drive_streams`, one batched decoder step per
    round), each replaying the schedule on its own frames; ``fps`` is then all streams' frames over the wall time
    (throughput), ``fps_per_stream`` one stream's, and there are no per-frame times (a round serves every
    stream). ``compile``: the compiled decoder step (:class:`flownar.engine.steps.CompiledStep`; its compilation is done
    on a warm-up stream first and not timed). ``capture``: the static-shape step replayed as CUDA graphs
    (:class:`flownar.engine.steps.CapturedStep`; graphs are captured as new shapes come, and that time is counted).
    ``max_seconds``: stop after this much wall time (one stream); ``frames`` then says how far it got."""
    from ..progress import progress_bar
    from ..stream import Narrator

    cfg = model.config
    dev = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    g = torch.Generator(device="cpu").manual_seed(seed)
    pool = torch.randn(frame_pool, cfg.frame_num_tokens, cfg.vision_hidden_size, generator=g).to(dev, dtype)
    text = [chat.tok.convert_tokens_to_ids("▁the")] * text_tokens
    speak = np.zeros(n_frames, bool)
    speak[[f for f in schedule if f < n_frames]] = True
    cuda = dev.type == "cuda"
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    if streams > 1:
        return _run_streams_bench(model, chat, pool, speak, text, n_frames, engine, streams, progress)
    narrator = Narrator(model, chat, engine=engine, compile=compile, capture=capture)
    if compile:  # compile both step graphs (single-token and longer) before timing
        for i in range(min(n_frames, 40)):
            narrator.push(pool[i % frame_pool], speak=bool(speak[i]) if i else None, script_text=text)
        narrator.finish()
        narrator.reset()
    base_rss = _rss_bytes()
    marks = set(checkpoints_up_to(n_frames))
    times = np.zeros(n_frames)
    points = []
    t_all = time.perf_counter()
    done = n_frames
    for i in progress_bar(range(n_frames), enabled=progress, desc=f"bench {cfg.system}", leave=False, mininterval=2):
        if max_seconds is not None and time.perf_counter() - t_all > max_seconds:
            done = i
            points.append(_point(narrator, i, base_rss, t_all) | _cuda_point(cuda))
            break
        t0 = time.perf_counter()
        narrator.push(pool[i % frame_pool], speak=bool(speak[i]) if i else None, script_text=text)
        if cuda:
            torch.cuda.synchronize()
        times[i] = time.perf_counter() - t0
        if i + 1 in marks:
            points.append(_point(narrator, i + 1, base_rss, t_all) | _cuda_point(cuda))
    total = time.perf_counter() - t_all
    return _one_stream_record(narrator, engine, compile, capture, done, n_frames, total, points, times)


def _one_stream_record(narrator, engine, compile, capture, done, n_frames, total, points, times) -> dict:
    """:func:`run_stream_bench`'s record of one stream."""
    step = narrator.step_weights.compiled if narrator.step_weights is not None else None
    return {
        "system": narrator.model.config.system,
        "engine": engine,
        "compile": compile,
        "capture": capture,
        "graphs_captured": getattr(step, "captures", None) if capture else None,
        "attention": "flash-attn"
        if getattr(step, "flash", None) is not None
        else "sdpa",  # only a captured step has it
        "sdpa_backend": None if getattr(step, "flash", None) is not None else sdpa_backends(narrator, capture),
        "streams": 1,
        "frames": done,
        "frames_asked": n_frames,
        "total_s": total,
        "fps": done / total,
        "fps_per_stream": done / total,
        "narrations": narrator.counters.narrations,
        "points": points,
        "frame_ms": np.round(times[:done] * 1e3, 4).tolist(),
        # the median frame time over the second half of the stream: without capture, warm-up and early refills
        "steady_frame_ms": float(np.median(times[done // 2 : done]) * 1e3) if done >= 2 else None,
        "fused": narrator.step_weights.fused if narrator.step_weights is not None else None,
        "reallocations": getattr(narrator.cache, "reallocations", None),
    }


def sdpa_backends(narrator, capture: bool) -> dict:
    """The sdpa kernel torch picks for this stream's attention at the end of the run (its cache length then): a
    frame step (the frame's tokens and its decision token, under a tail-causal mask) and a one-token step (no mask
    in the eager step; the captured step always passes its (n, capacity) mask). Names as in
    ``torch.nn.attention.SDPBackend``; the fused kernels are FLASH / EFFICIENT / CUDNN, MATH is the slow path."""
    from ..engine.layer import tail_causal_mask
    from ..models.dcm_attention import sdpa_backend

    cfg, weight = narrator.model.config, next(narrator.model.parameters())
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    length = max(1, narrator.tags.n)  # cached tokens
    out = {}
    for name, n in (("frame", narrator.chat.frame_num_tokens + 1), ("token", 1)):
        q = torch.zeros(1, cfg.num_attention_heads, n, hd, dtype=weight.dtype, device=weight.device)
        k = torch.zeros(1, cfg.num_key_value_heads, length + n, hd, dtype=weight.dtype, device=weight.device)
        mask = tail_causal_mask(n, length + n, weight.dtype, weight.device) if n > 1 or capture else None
        out[name] = sdpa_backend(q, k, mask)
    return out


def _cuda_point(cuda: bool) -> dict:
    if not cuda:
        return {}
    return {
        "cuda_max_allocated_bytes": torch.cuda.max_memory_allocated(),
        "cuda_allocated_bytes": torch.cuda.memory_allocated(),
    }


def _run_streams_bench(model, chat, pool, speak, text, n_frames: int, engine: str, streams: int, progress: bool):
    """:func:`run_stream_bench` with several streams at once (see there)."""
    from ..drive import drive_streams, narrators_for
    from ..progress import progress_bar

    cfg = model.config
    narrators = narrators_for(model, chat, streams, engine=engine)
    base_rss = _rss_bytes()
    marks = set(checkpoints_up_to(n_frames))
    points: list[dict] = []
    bar = progress_bar(total=streams * n_frames, enabled=progress, desc=f"bench {cfg.system} x{streams}", leave=False)
    t_all = time.perf_counter()

    def replay(narrator, b: int):
        narrator.reset()
        for i in range(n_frames):
            frame = pool[(i + b) % len(pool)]  # each stream its own frames
            yield from narrator.push_steps(frame, bool(speak[i]) if i else None, text)
            bar.update(1)
            if b == 0 and i + 1 in marks:  # the cache of stream 0 (every stream replays the same schedule)
                points.append(_point(narrator, i + 1, base_rss, t_all))
        return narrator.counters.narrations

    narrations = dict(drive_streams(narrators, [(b, lambda nr, b=b: replay(nr, b)) for b in range(streams)]))
    total = time.perf_counter() - t_all
    bar.close()
    return {
        "system": cfg.system,
        "engine": engine,
        "compile": False,
        "streams": streams,
        "attention": "sdpa",
        "sdpa_backend": sdpa_backends(narrators[0], False),
        "frames": n_frames,
        "total_s": total,
        "fps": streams * n_frames / total,
        "fps_per_stream": n_frames / total,
        "narrations": narrations[0],
        "points": points,
        "frame_ms": [],
        "reallocations": None,
    }


def per_frame_ms(result: dict, at: int, window: int | None = None) -> float:
    """Mean wall time per frame over the ``window`` frames ending at frame ``at`` (default: the last half,
    at most 500)."""
    ms = np.asarray(result["frame_ms"])
    if ms.size == 0:  # several streams at once: no per-frame times
        return float("nan")
    w = window or max(1, min(at // 2, 500))
    return float(ms[max(0, at - w) : at].mean())


def device_name(device: str) -> str:
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def run_bench(
    systems: list[str],
    frames: list[int],
    config: str = "tiny",
    device: str = "cpu",
    dtype: str | None = None,
    engine: str = "static",
    segment_stats: tuple[float, float] = EK100_SEGMENT_STATS,
    text_tokens: int = 12,
    seed: int = 0,
    progress: bool = True,
    count_macs: bool = True,
    streams: int = 1,
    compile: bool = False,
    capture: bool = False,
    max_seconds: float | None = None,
) -> dict:
    """``flownar bench``: for each system, one stream of ``max(frames)`` frames (or per-system lengths when
    ``frames`` is a dict), the same schedule for all. Returns a JSON-able dict of raw results. ``capture`` on a
    device other than CUDA runs without it and says so (``capture: false`` and ``capture_note`` in the record)."""
    lengths = frames if isinstance(frames, dict) else {s: max(frames, default=0) for s in systems}
    for what, v in [*((f"frames ({s})", n) for s, n in lengths.items()), ("streams", streams)]:
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{what} must be a positive whole number, got {v!r}")
    if text_tokens < 1:
        raise ValueError(f"text_tokens must be >= 1 (tokens per replayed narration), got {text_tokens}")
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"max_seconds must be > 0, got {max_seconds}")
    note = None
    if capture and not str(device).startswith("cuda"):
        note = f"--capture needs a CUDA device (CUDA graphs); on {device} every step ran eager, without capture"
        print(note, flush=True)
        capture = False
    dt = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        dtype or ("bfloat16" if str(device).startswith("cuda") else "float32")
    ]
    chat = bench_chat()
    schedule = narration_schedule(max(lengths.values()), *segment_stats, seed=seed)
    layout = Layout.from_chat(chat, text_tokens)
    out = {
        "config": config,
        "device": device_name(device),
        "device_kind": str(device),
        "dtype": str(dt).split(".")[-1],
        "engine": engine,
        "streams": streams,
        "compile": compile,
        "capture": capture,
        **({"capture_note": note} if note else {}),
        "segment_stats_s": list(segment_stats),
        "text_tokens": text_tokens,
        "seed": seed,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "layout": asdict(layout),
        "runs": [],
    }
    for system in systems:
        cfg = bench_config(system, config, chat)
        model = bench_model(cfg, device, dt, seed)
        n = lengths[system]
        res = run_stream_bench(
            model,
            chat,
            schedule,
            n,
            text_tokens=text_tokens,
            engine=engine,
            progress=progress,
            seed=seed,
            streams=streams,
            # MoD's routed layers run eager (CompiledStep / CapturedStep.unsupported); streaming-vlm's re-rotated
            # keys are built into the captured step but not the compiled one
            compile=compile and not (cfg.mod or cfg.contiguous_positions),
            capture=capture and not cfg.mod,
            max_seconds=max_seconds,
        )
        res["params"] = sum(p.numel() for p in model.parameters())
        res["kv_bytes_per_token"] = kv_bytes_per_token(cfg, torch.finfo(dt).bits // 8)
        if count_macs:
            tr = simulate_stream(cfg, layout, schedule, n, finish=False)
            res["macs"] = stream_macs(cfg, tr)
        out["runs"].append(res)
        del model
        gc.collect()
        if str(device).startswith("cuda"):
            torch.cuda.empty_cache()
    return out
