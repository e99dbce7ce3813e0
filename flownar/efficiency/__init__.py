"""Efficiency of the streaming systems: KV-cache size, MACs per video, memory vs stream length, frames per second.

Speed and memory do not depend on the weights, so the real model sizes are built with random weights
(:func:`bench_model`): Llama-3.2-1B / Llama-3.1-8B shapes on a GPU (bf16) or on the meta device, the embedded
default's ``tiny`` model on CPU. Every system replays the same narration schedule (:func:`narration_schedule`:
segment lengths drawn from a dataset's duration statistics with a fixed seed, narrations of a fixed token length),
so all do identical text work and differ only in what they keep in the cache.

Conventions (stated once, used everywhere):

* **MAC** = one multiply-add (1 MAC = 2 FLOP; ``torch.utils.flop_counter`` reports FLOP).
* **MACs per video** = every linear layer on every fed token (routed MoD layers: only the tokens they compute),
  attention ``n x (L + n) x heads x head_dim x 2`` per layer and forward (``n`` new queries against ``L`` cached
  and ``n`` new keys: what a masked sdpa kernel computes), the LM head on the last token of each forward (the
  decision or the next decoded token), the connector on every frame and memory token, and CLAM (counted by the
  flop counter on the module itself).
* **KV-cache size** = tokens x layers x kv_heads x head_dim x 2 (K and V) x bytes per element, summed per layer
  (MoD's routed layers hold fewer tokens). :func:`paper_cache_fit` checks which reading of the paper's "Cache"
  column (peak or mean over the video, bf16 or fp32, MB or MiB) its numbers fit.

:func:`simulate_stream` replays the engine's token layout without a model (the same bookkeeping as
:class:`flownar.stream.Narrator`, tested against it), which gives cache sizes and MACs for whole videos at any
scale; :func:`run_bench` runs the real engine and measures time and memory.

The package: :mod:`.accounting` (model sizes, schedule, simulator, KV bytes, MACs: no model is run),
:mod:`.bench` (the engine on random weights: time and memory), :mod:`.paper` (the paper's Cache column, the
tables and Fig. 4). Every public name is importable from ``flownar.efficiency`` itself.
"""

from __future__ import annotations

from .accounting import (
    BENCH_CONFIGS,
    EK100_SEGMENT_STATS,
    FRAME_TOKENS,
    MEMORY_TOKENS,
    REAL_LLMS,
    TINY_VISION_DIM,
    VISION_DIM,
    Layout,
    StreamTrace,
    bench_chat,
    bench_config,
    bench_model,
    cache_bytes,
    cumulative_macs,
    kv_bytes_per_token,
    linear_macs_per_token,
    memory_macs,
    narration_schedule,
    segment_stats_from_data,
    simulate_stream,
    stream_macs,
)
from .bench import checkpoints_up_to, device_name, per_frame_ms, run_bench, run_stream_bench
from .paper import (
    PAPER_LLM,
    best_definition,
    measured_table,
    memory_curve,
    paper_cache_fit,
    paper_fig4,
    paper_self_conditioned_efficiency,
    plot_efficiency,
    real_scale_table,
)

__all__ = [
    "BENCH_CONFIGS",
    "EK100_SEGMENT_STATS",
    "FRAME_TOKENS",
    "MEMORY_TOKENS",
    "REAL_LLMS",
    "TINY_VISION_DIM",
    "VISION_DIM",
    "Layout",
    "StreamTrace",
    "bench_chat",
    "bench_config",
    "bench_model",
    "cache_bytes",
    "memory_macs",
    "cumulative_macs",
    "kv_bytes_per_token",
    "linear_macs_per_token",
    "narration_schedule",
    "segment_stats_from_data",
    "simulate_stream",
    "stream_macs",
    "checkpoints_up_to",
    "device_name",
    "per_frame_ms",
    "run_bench",
    "run_stream_bench",
    "PAPER_LLM",
    "best_definition",
    "measured_table",
    "memory_curve",
    "paper_cache_fit",
    "paper_fig4",
    "paper_self_conditioned_efficiency",
    "plot_efficiency",
    "real_scale_table",
]
