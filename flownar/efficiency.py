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
"""
from __future__ import annotations

import functools
import gc
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .models import SYSTEMS, FlowNarConfig, FlowNarForCausalLM
from .models.config import tiny_llama_kwargs

# ---------------------------------------------------------------------------------------------------- configs
# LLM shapes of the paper's models (public model cards); vocab 128256, rope as Llama-3.x.
REAL_LLMS: dict[str, dict] = {
    "llama-3.2-1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                         intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True, head_dim=64,
                         rope_theta=500000.0, max_position_embeddings=131072,
                         rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0,
                                           high_freq_factor=4.0, original_max_position_embeddings=8192)),
    "llama-3.1-8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                         intermediate_size=14336, vocab_size=128256, tie_word_embeddings=False, head_dim=128,
                         rope_theta=500000.0, max_position_embeddings=131072,
                         rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                           high_freq_factor=4.0, original_max_position_embeddings=8192)),
}
BENCH_CONFIGS = ("micro", "mini", "tiny", "small", *REAL_LLMS)
VISION_DIM = 1024  # SigLIP-L features, as in FlowNar-Data
TINY_VISION_DIM = 64  # the embedded default's synthetic features
FRAME_TOKENS = 10  # 1 CLS + 3x3
MEMORY_TOKENS = 20  # CLAM queries
EK100_SEGMENT_STATS = (3.83, 7.95)  # mean, std of segment duration in s (the FlowNar stream generator's comment)


@functools.lru_cache(maxsize=8)
def bench_chat(frame_tokens: int = FRAME_TOKENS, memory_tokens: int = MEMORY_TOKENS):
    """A word-level ChatTokenizer for benchmarks (its special ids are valid in any vocabulary >= its size)."""
    from .data.chat import ChatTokenizer
    from .data.samples import DEFAULT_SYSTEM_PROMPT, NARRATION_INSTRUCTIONS
    from .data.tokenizer import train_word_tokenizer

    texts = [DEFAULT_SYSTEM_PROMPT, *NARRATION_INSTRUCTIONS, "You pick up the knife and open the drawer."]
    return ChatTokenizer(train_word_tokenizer(texts), frame_num_tokens=frame_tokens, num_m_tokens=memory_tokens)


def bench_config(system: str, config: str, chat, vision_dim: int | None = None) -> FlowNarConfig:
    """A FlowNarConfig of ``system`` at the LLM size ``config`` (a tiny-Llama size or a REAL_LLMS name).

    Feature dim: SigLIP-L's 1024 for the real LLM sizes, the embedded default's 64 for the tiny ones (a 1024-dim
    CLAM would cost more than a tiny LLM itself)."""
    if vision_dim is None:
        vision_dim = VISION_DIM if config in REAL_LLMS else TINY_VISION_DIM
    if system not in SYSTEMS:
        raise ValueError(f"unknown system {system!r}; expected one of {sorted(SYSTEMS)}")
    if config in REAL_LLMS:
        llm = dict(REAL_LLMS[config])
    elif config in ("micro", "mini", "tiny", "small"):
        llm = tiny_llama_kwargs(len(chat.tok), config)
    else:
        raise ValueError(f"unknown bench config {config!r}; expected one of {BENCH_CONFIGS}")
    return FlowNarConfig(system=system, vision_hidden_size=vision_dim, frame_num_tokens=chat.frame_num_tokens,
                         num_m_tokens=chat.num_m_tokens, v_placeholder_id=chat.v_id, m_placeholder_id=chat.m_id,
                         silent_id=chat.silent_id, speak_id=chat.speak_id, eos_token_id=chat.eos_id,
                         bos_token_id=chat.tok.bos_token_id, pad_token_id=chat.tok.pad_token_id,
                         clam_dropout=0.0, attn_implementation="sdpa", **llm)


def bench_model(cfg: FlowNarConfig, device="cpu", dtype=torch.float32, seed: int = 0) -> FlowNarForCausalLM:
    """Random weights of the right shapes (``device="meta"``: shapes only, for counting)."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = FlowNarForCausalLM(cfg)
    return model.to(dtype).eval()


def kv_bytes_per_token(cfg, bytes_per_element: int = 2) -> int:
    """One token's keys and values in all layers: 2 x layers x kv_heads x head_dim x bytes."""
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * hd * bytes_per_element


# ---------------------------------------------------------------------------------------------------- schedule
def narration_schedule(n_frames: int, mean_s: float, std_s: float, fps: float = 2.0, seed: int = 0) -> list[int]:
    """Frames at which a narration is emitted: 0, then the ends of consecutive segments whose durations are
    log-normal with the given mean and standard deviation (seconds), at least one frame long."""
    if mean_s <= 0 or std_s < 0:
        raise ValueError(f"segment statistics must be positive, got mean {mean_s}, std {std_s}")
    rng = np.random.default_rng(seed)
    sigma2 = math.log(1 + (std_s / mean_s) ** 2)
    mu = math.log(mean_s) - sigma2 / 2
    frames, t = [0], 0
    while True:
        t += max(1, int(round(rng.lognormal(mu, math.sqrt(sigma2)) * fps)))
        if t >= n_frames:
            return frames
        frames.append(t)


def segment_stats_from_data(data) -> tuple[float, float]:
    """Mean and std (s) of the gaps between consecutive narrations of a dataset's training streams."""
    gaps = []
    for s in data.streams("train"):
        t = [n.time for n in s.narrations]
        gaps += [b - a for a, b in zip(t, t[1:]) if b > a]
    if not gaps:
        raise ValueError(f"{data.root}: no narration gaps in the training split")
    return float(np.mean(gaps)), float(np.std(gaps))


# ---------------------------------------------------------------------------------------------------- simulator
@dataclass
class Layout:
    """Token counts of the streaming layout (from a ChatTokenizer and the eval prompt)."""

    frame_tokens: int
    memory_tokens: int
    prompt_head: int  # prompt tokens fed at frame 0 before "Assistant:" (frame 0's run included)
    prompt_frame_run: int  # of which frame 0's run "[ V ]\n"
    assistant: int  # "Assistant", ":"
    text: int  # narration text tokens (fixed length in the benchmark)

    @classmethod
    def from_chat(cls, chat, text_tokens: int) -> "Layout":
        from .data.samples import eval_prompt_messages
        from .stream import prompt_plan

        head, tags, tail = prompt_plan(chat, eval_prompt_messages())
        return cls(chat.frame_num_tokens, chat.num_m_tokens, len(head), sum(t[0] == "frames" for t in tags),
                   len(tail), text_tokens)


@dataclass
class StreamTrace:
    """What the engine does over a stream: one row per forward call and the cache after every frame."""

    n: list[int] = field(default_factory=list)  # new tokens per forward
    vision: list[int] = field(default_factory=list)  # of which <v> tokens
    cached: list[int] = field(default_factory=list)  # cached tokens (unrouted layers) before the forward
    cached_routed: list[int] = field(default_factory=list)  # ... in MoD's routed layers
    frame_tokens_after: list[int] = field(default_factory=list)  # cache tokens at the end of each frame
    frame_tokens_after_routed: list[int] = field(default_factory=list)
    frame_tokens_peak: list[int] = field(default_factory=list)  # largest cache during each frame
    frame_forwards: list[int] = field(default_factory=list)  # forwards done by the end of each frame
    frame_memory_blocks: list[int] = field(default_factory=list)  # memory blocks fed by the end of each frame
    narrations: int = 0
    frames: int = 0
    memory_blocks: int = 0


def simulate_stream(cfg, layout: Layout, schedule: list[int], n_frames: int, finish: bool = True) -> StreamTrace:
    """Replay :class:`~flownar.stream.Narrator`'s token bookkeeping for ``system`` flags of ``cfg`` (dcm,
    use_memory, last_k_narration, mod) without a model. Narrations happen at ``schedule`` frames (0 is forced),
    each ``layout.text`` tokens long and fed one per forward (like greedy decoding); ``finish`` forces one at the
    last frame, as ``Narrator.finish`` does."""
    N, Q = layout.frame_tokens, layout.memory_tokens
    k_sel = max(1, math.ceil(cfg.mod_capacity * N)) if cfg.mod else N
    tr = StreamTrace()
    state = {"perm": 0, "perm_r": 0}  # tokens never deleted (all layers / routed layers)
    seg: list[int] = [0, 0]  # current segment's tokens (unrouted, routed): deleted by DCM
    narr: list[list[int]] = []  # FlowNar-C: per kept narration [tokens, routed tokens]
    peak = [0]

    def total():
        return state["perm"] + seg[0] + sum(x[0] for x in narr)

    def total_r():
        return state["perm_r"] + seg[1] + sum(x[1] for x in narr)

    def feed(parts):
        """One forward of tagged parts [(tokens, of which <v>, kind)]; kind: 'perm', 'seg' or 'narr' (the
        narration being written)."""
        n = sum(p[0] for p in parts)
        v = sum(p[1] for p in parts)
        tr.n.append(n)
        tr.vision.append(v)
        tr.cached.append(total())
        tr.cached_routed.append(total_r())
        for pn, pv, kind in parts:
            nr = pn - pv + (pv // N) * k_sel
            if kind == "seg":
                seg[0] += pn
                seg[1] += nr
            elif kind == "narr" and cfg.last_k_narration is not None:
                narr[-1][0] += pn
                narr[-1][1] += nr
            else:
                state["perm"] += pn
                state["perm_r"] += nr
        peak[0] = max(peak[0], total())

    def narrate(run_close: bool):
        if cfg.last_k_narration is not None:
            narr.append([0, 0])
        parts = ([(1, 0, "seg")] if run_close else []) + [(layout.assistant, 0, "narr")]
        feed(parts)
        for _ in range(layout.text):
            feed([(1, 0, "narr")])
        tr.narrations += 1
        if cfg.dcm:
            seg[0] = seg[1] = 0
        elif seg[0]:  # no DCM: the segment becomes permanent
            state["perm"] += seg[0]
            state["perm_r"] += seg[1]
            seg[0] = seg[1] = 0
        if cfg.last_k_narration is not None and len(narr) > cfg.last_k_narration:
            narr.pop(0)

    speak_at = set(schedule)
    pending = False
    last = -1
    for i in range(n_frames):
        peak[0] = total()
        if i == 0:
            run = layout.prompt_frame_run
            feed([(layout.prompt_head - run, 0, "perm"), (run, N, "seg")])
            narrate(run_close=False)
            pending, last = True, 0
        else:
            if pending:
                parts = [(1, 0, "narr"), (1, 0, "narr" if cfg.last_k_narration is not None else "perm")]
                if cfg.use_memory:
                    parts.append((Q + 2, 0, "seg"))
                    tr.memory_blocks += 1
                parts.append((1 + N, N, "seg"))
                pending = False
            else:
                parts = [(1 + N, N, "seg")]
            feed(parts)
            if i in speak_at:
                narrate(run_close=True)
                pending, last = True, i
        tr.frames += 1
        tr.frame_forwards.append(len(tr.n))
        tr.frame_memory_blocks.append(tr.memory_blocks)
        tr.frame_tokens_after.append(total())
        tr.frame_tokens_after_routed.append(total_r())
        tr.frame_tokens_peak.append(peak[0])
    if finish and n_frames and last != n_frames - 1:
        narrate(run_close=True)
        tr.frame_tokens_peak[-1] = max(tr.frame_tokens_peak[-1], peak[0])
    return tr


def cache_bytes(cfg, tokens: int, tokens_routed: int | None = None, bytes_per_element: int = 2) -> int:
    """KV bytes for ``tokens`` cached in every unrouted layer and ``tokens_routed`` in MoD's routed layers."""
    per_layer = kv_bytes_per_token(cfg, bytes_per_element) // cfg.num_hidden_layers
    routed = sum(1 for i in range(cfg.num_hidden_layers) if cfg.mod and i % cfg.mod_every == cfg.mod_every - 1)
    tr = tokens if tokens_routed is None else tokens_routed
    return per_layer * ((cfg.num_hidden_layers - routed) * tokens + routed * tr)


# ---------------------------------------------------------------------------------------------------- MACs
def linear_macs_per_token(cfg) -> int:
    """MACs of one decoder layer's linear maps for one token: q, k, v, o projections and the SwiGLU MLP."""
    H, hd = cfg.hidden_size, getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    return H * (q + 2 * kv) + q * H + 3 * H * cfg.intermediate_size


def attention_macs(cfg, n: int, cached: int) -> int:
    """MACs of one layer's attention for ``n`` new queries over ``cached + n`` keys (QK^T and AV)."""
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return 2 * n * (cached + n) * cfg.num_attention_heads * hd


def clam_macs(cfg, n_tokens: int = None) -> dict[str, int]:
    """CLAM's MACs per frame update (``frame_num_tokens`` tokens) and per read-out, counted by
    ``torch.utils.flop_counter`` on a meta-device CLAM of this config (FLOP / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    from .models.clam import CLAM, CLAMConfig

    n = cfg.frame_num_tokens if n_tokens is None else n_tokens
    with torch.device("meta"):
        clam = CLAM(CLAMConfig(d_model=cfg.vision_hidden_size, n_heads=cfg.clam_heads, n_queries=cfg.num_m_tokens,
                               expand_k=cfg.clam_expand_k, dropout=0.0)).eval()
        x = torch.zeros(1, n, cfg.vision_hidden_size)
        state = clam.init_state(1, dtype=torch.float32)
        out = {}
        for name, fn in (("update", lambda: clam.update(x, state)), ("read", lambda: clam.read(state))):
            with FlopCounterMode(display=False) as fc:
                fn()
            out[name] = fc.get_total_flops() // 2
    return out


def _forward_macs(cfg, trace: StreamTrace) -> dict[str, np.ndarray]:
    """Per-forward MACs of the decoder by part (int64 arrays, one entry per forward of the trace)."""
    L = cfg.num_hidden_layers
    n_routed = sum(1 for i in range(L) if cfg.mod and i % cfg.mod_every == cfg.mod_every - 1)
    N = cfg.frame_num_tokens
    k_sel = max(1, math.ceil(cfg.mod_capacity * N)) if cfg.mod else N
    n = np.asarray(trace.n, np.int64)
    v = np.asarray(trace.vision, np.int64)
    c = np.asarray(trace.cached, np.int64)
    cr = np.asarray(trace.cached_routed, np.int64)
    nr = n - v + (v // N) * k_sel  # tokens a routed layer computes
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    att = 2 * cfg.num_attention_heads * hd
    return {
        "linear": linear_macs_per_token(cfg) * ((L - n_routed) * n + n_routed * nr),
        "attention": att * ((L - n_routed) * n * (c + n) + n_routed * nr * (cr + nr)),
        "router": cfg.hidden_size * n_routed * v if cfg.mod else np.zeros_like(n),
        "lm_head": np.full_like(n, cfg.hidden_size * cfg.vocab_size),
    }


def _input_macs(cfg, frames, memory_blocks, clam: dict | None) -> dict:
    """Connector (frame and memory tokens) and CLAM (update per frame, read per memory block) MACs."""
    D, H = cfg.vision_hidden_size, cfg.hidden_size
    out = {"connector": (D * H + H * H) * (frames * cfg.frame_num_tokens + memory_blocks * cfg.num_m_tokens),
           "clam": 0 * frames}
    if cfg.use_memory:
        clam = clam or clam_macs(cfg)
        out["clam"] = frames * clam["update"] + memory_blocks * clam["read"]
    return out


def stream_macs(cfg, trace: StreamTrace, clam: dict | None = None) -> dict[str, int]:
    """MACs of a traced stream, by part (see the module docstring for the convention)."""
    out = {k: int(x.sum()) for k, x in _forward_macs(cfg, trace).items()}
    out.update({k: int(x) for k, x in _input_macs(cfg, trace.frames, trace.memory_blocks, clam).items()})
    out["total"] = sum(out.values())
    return out


def cumulative_macs(cfg, trace: StreamTrace, clam: dict | None = None) -> np.ndarray:
    """MACs of the stream up to the end of each frame (same convention as :func:`stream_macs`), (frames,)."""
    per_fwd = sum(_forward_macs(cfg, trace).values()).astype(np.float64)
    cum = np.concatenate([[0.0], np.cumsum(per_fwd)])[np.asarray(trace.frame_forwards)]
    frames = np.arange(1, len(trace.frame_forwards) + 1, dtype=np.float64)
    blocks = np.asarray(trace.frame_memory_blocks, np.float64)
    return cum + sum(_input_macs(cfg, frames, blocks, clam).values())


# ---------------------------------------------------------------------------------------------------- paper fit
def paper_cache_fit(paper: "pd.DataFrame", schedule_stats: dict[str, tuple[float, float]], chat=None,
                    text_tokens: int = 12, llm: str = "llama-3.2-1b") -> "pd.DataFrame":
    """Which definition of the paper's Cache column fits its numbers?

    For each dataset and each candidate definition (the cache at the end of the video, its peak or its mean over
    the video; bf16 or fp32 elements; MB or MiB), the stream length is solved so that VideoLLM-online's value is
    matched exactly. The definition is then judged on three predictions at that length: VideoLLM-MoD's and
    FlowNar-C's caches (FlowNar's depends on how many narrations the model chose to make) and, independently,
    VideoLLM-online's MACs per video against the paper's MACs column. Returns one row per (dataset, definition).
    """
    import pandas as pd

    chat = chat or bench_chat()
    layout = Layout.from_chat(chat, text_tokens)
    rows = []
    defs = [(stat, b, unit) for stat in ("final", "peak", "mean") for b in (2, 4) for unit in ("MB", "MiB")]
    which = {"final": 0, "peak": 1, "mean": 2}
    for ds, grp in paper.groupby("dataset"):
        mean_s, std_s = schedule_stats.get(ds, EK100_SEGMENT_STATS)
        vals = {r.method: r.cache_M for r in grp.itertuples()}
        curves, macs = {}, {}
        max_frames = 8_000  # 66 min at 2 fps
        for sysname, method in (("videollm-online", "VideoLLM-online"), ("videollm-mod", "VideoLLM-MoD"),
                                ("flownar-c", "FlowNar-C"), ("flownar", "FlowNar")):
            cfg = bench_config(sysname, llm, chat)
            sched = narration_schedule(max_frames, mean_s, std_s, seed=0)
            tr = simulate_stream(cfg, layout, sched, max_frames, finish=False)
            after = np.asarray(tr.frame_tokens_after, np.float64)
            after_r = np.asarray(tr.frame_tokens_after_routed, np.float64)
            per_layer = kv_bytes_per_token(cfg, 1) / cfg.num_hidden_layers
            n_r = sum(1 for i in range(cfg.num_hidden_layers) if cfg.mod and i % cfg.mod_every == cfg.mod_every - 1)
            elems = per_layer * ((cfg.num_hidden_layers - n_r) * after + n_r * after_r)  # elements after each frame
            # peak: the largest cache up to that frame; mean: the cache averaged over the frames so far
            curves[method] = (elems, np.maximum.accumulate(elems), np.cumsum(elems) / np.arange(1, len(elems) + 1))
            macs[method] = cumulative_macs(cfg, tr)
        for stat, b, unit in defs:
            scale = b / (1e6 if unit == "MB" else 2 ** 20)
            on = curves["VideoLLM-online"][which[stat]] * scale  # increasing with the stream length
            T = int(np.searchsorted(on, vals["VideoLLM-online"]))  # frames at which online matches
            if T >= max_frames:
                continue  # would need a video longer than max_frames: implausible
            pred = {m: float(c[which[stat]][T] * scale) for m, c in curves.items()}
            err = {m: pred[m] / vals[m] - 1 for m in ("VideoLLM-MoD", "FlowNar-C") if m in vals}
            paper_macs = {r.method: r.macs_T for r in grp.itertuples()}
            # MACs per video at the implied length: for "mean" the video is T frames long as well (the mean
            # is over the frames of a T-frame video)
            macs_pred = {m: float(macs[m][T] / 1e12) for m in macs}
            err["MACs VideoLLM-online"] = macs_pred["VideoLLM-online"] / paper_macs["VideoLLM-online"] - 1
            rows.append(dict(dataset=ds, definition=f"{stat}, {'bf16' if b == 2 else 'fp32'}, {unit}",
                             frames=T + 1, minutes=(T + 1) / 2 / 60,
                             **{f"pred {m}": round(p, 1) for m, p in pred.items()},
                             **{f"paper {m}": vals.get(m) for m in pred},
                             **{f"pred MACs {m} (T)": round(x, 2) for m, x in macs_pred.items()},
                             **{f"err {m}": round(100 * e, 1) for m, e in err.items()},
                             mean_abs_err_pct=round(100 * float(np.mean([abs(e) for e in err.values()])), 1)))
    return pd.DataFrame(rows)


def best_definition(fit: "pd.DataFrame") -> str:
    """The definition with the smallest mean absolute error over all datasets."""
    return str(fit.groupby("definition")["mean_abs_err_pct"].mean().idxmin())


# ---------------------------------------------------------------------------------------------------- benchmark
def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def checkpoints_up_to(n: int) -> list[int]:
    """1, 10, 100, ... up to n (and n itself)."""
    out, c = [], 1
    while c < n:
        out.append(c)
        c *= 10
    return out + [n]


def run_stream_bench(model, chat, schedule: list[int], n_frames: int, *, text_tokens: int = 12,
                     engine: str = "static", progress: bool = False, frame_pool: int = 64, seed: int = 0) -> dict:
    """Push ``n_frames`` random frames through a Narrator replaying ``schedule`` with ``text_tokens``-token
    narrations. Returns per-frame wall times and, at 1, 10, 100, ... frames, the cache and memory."""
    from .progress import progress_bar
    from .stream import Narrator

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
    narrator = Narrator(model, chat, engine=engine)
    base_rss = _rss_bytes()
    marks = set(checkpoints_up_to(n_frames))
    times = np.zeros(n_frames)
    points = []
    t_all = time.perf_counter()
    for i in progress_bar(range(n_frames), enabled=progress, desc=f"bench {cfg.system}", leave=False, mininterval=2):
        t0 = time.perf_counter()
        narrator.push(pool[i % frame_pool], speak=bool(speak[i]) if i else None, script_text=text)
        if cuda:
            torch.cuda.synchronize()
        times[i] = time.perf_counter() - t0
        if i + 1 in marks:
            st, rss = narrator.state_size(), _rss_bytes()
            p = {"frames": i + 1, "cache_tokens": st["tokens"], "kv_bytes": st["kv_bytes"],
                 "kv_allocated_bytes": st.get("kv_allocated_bytes", st["kv_bytes"]),
                 "clam_state_bytes": st["clam_state_bytes"], "rss_bytes": rss,
                 "rss_growth_bytes": rss - base_rss, "elapsed_s": time.perf_counter() - t_all}
            if cuda:
                p["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated()
                p["cuda_allocated_bytes"] = torch.cuda.memory_allocated()
            points.append(p)
    total = time.perf_counter() - t_all
    return {"system": cfg.system, "engine": engine, "frames": n_frames, "total_s": total, "fps": n_frames / total,
            "narrations": narrator.counters.narrations, "points": points,
            "frame_ms": np.round(times * 1e3, 4).tolist(), "reallocations": getattr(narrator.cache, "reallocations", None)}


def per_frame_ms(result: dict, at: int, window: int | None = None) -> float:
    """Mean wall time per frame over the ``window`` frames ending at frame ``at`` (default: the last half,
    at most 500)."""
    ms = np.asarray(result["frame_ms"])
    w = window or max(1, min(at // 2, 500))
    return float(ms[max(0, at - w):at].mean())


def device_name(device: str) -> str:
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def run_bench(systems: list[str], frames: list[int], config: str = "tiny", device: str = "cpu",
              dtype: str | None = None, engine: str = "static", segment_stats: tuple[float, float] = EK100_SEGMENT_STATS,
              text_tokens: int = 12, seed: int = 0, progress: bool = True, count_macs: bool = True) -> dict:
    """``flownar bench``: for each system, one stream of ``max(frames)`` frames (or per-system lengths when
    ``frames`` is a dict), the same schedule for all. Returns a JSON-able dict of raw results."""
    dt = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        dtype or ("bfloat16" if str(device).startswith("cuda") else "float32")]
    chat = bench_chat()
    lengths = frames if isinstance(frames, dict) else {s: max(frames) for s in systems}
    schedule = narration_schedule(max(lengths.values()), *segment_stats, seed=seed)
    layout = Layout.from_chat(chat, text_tokens)
    out = {"config": config, "device": device_name(device), "device_kind": str(device), "dtype": str(dt).split(".")[-1],
           "engine": engine, "segment_stats_s": list(segment_stats), "text_tokens": text_tokens, "seed": seed,
           "torch": torch.__version__, "threads": torch.get_num_threads(), "layout": asdict(layout), "runs": []}
    for system in systems:
        cfg = bench_config(system, config, chat)
        model = bench_model(cfg, device, dt, seed)
        n = lengths[system]
        res = run_stream_bench(model, chat, schedule, n, text_tokens=text_tokens, engine=engine, progress=progress,
                               seed=seed)
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


# ---------------------------------------------------------------------------------------------------- report
PAPER_LLM = {"llama-3.2-1b": "1B", "llama-3.1-8b": "8B"}
TABLE_SYSTEMS = ("videollm-online", "videollm-mod", "flownar-c", "flownar", "dcm-only")


def paper_self_conditioned_efficiency() -> "pd.DataFrame":
    """The paper's MACs (T) and Cache (M) columns, all datasets."""
    import pandas as pd

    from .paths import RESOURCES_DIR

    return pd.read_csv(RESOURCES_DIR / "paper_self_conditioned.csv")[["dataset", "method", "macs_T", "cache_M"]]


def paper_fig4() -> "pd.DataFrame":
    """The paper's Fig. 4 points (VRAM vs frames, FPS at 10^4 frames), read off the project page."""
    import pandas as pd

    from .paths import RESOURCES_DIR

    return pd.read_csv(RESOURCES_DIR / "paper_efficiency.csv", comment="#",
                       names=["figure", "method", "llm", "frames", "value", "unit"])


def _definition_scale(definition: str) -> tuple[str, float]:
    stat, dt, unit = [x.strip() for x in definition.split(",")]
    return stat, (2 if dt == "bf16" else 4) / (1e6 if unit == "MB" else 2 ** 20)


def real_scale_table(dataset: str, fit: "pd.DataFrame", definition: str, llm: str = "llama-3.2-1b",
                     segment_stats: tuple[float, float] = EK100_SEGMENT_STATS, text_tokens: int = 12) -> "pd.DataFrame":
    """Per-video MACs and KV cache of every system at the real LLM size, for a video of the length implied by the
    fit (``definition``), beside the paper's columns. Analytic (simulator + formulas), so it is exact and
    deterministic; the formulas are tested against the flop counter and the engine's cache."""
    import pandas as pd

    from .eval.tables import PAPER_DATASET
    from .models import SYSTEM_NAMES

    name = PAPER_DATASET[dataset]
    row = fit[(fit.dataset == name) & (fit.definition == definition)]
    if row.empty:
        raise ValueError(f"no fit for {name} with definition {definition!r}")
    T = int(row.frames.iloc[0])
    stat, scale = _definition_scale(definition)
    chat = bench_chat()
    layout = Layout.from_chat(chat, text_tokens)
    sched = narration_schedule(T, *segment_stats, seed=0)
    paper = paper_self_conditioned_efficiency()
    paper = paper[paper.dataset == name].set_index("method")
    rows = []
    for system in TABLE_SYSTEMS:
        cfg = bench_config(system, llm, chat)
        tr = simulate_stream(cfg, layout, sched, T, finish=False)
        n_r = sum(1 for i in range(cfg.num_hidden_layers) if cfg.mod and i % cfg.mod_every == cfg.mod_every - 1)
        per_layer = kv_bytes_per_token(cfg, 1) / cfg.num_hidden_layers
        elems = per_layer * ((cfg.num_hidden_layers - n_r) * np.asarray(tr.frame_tokens_after, float)
                             + n_r * np.asarray(tr.frame_tokens_after_routed, float))
        cache = {"final": elems[-1], "peak": elems.max(), "mean": elems.mean()}[stat] * scale
        macs = stream_macs(cfg, tr)
        disp = SYSTEM_NAMES[system]
        rows.append({"system": disp, "MACs (T)": macs["total"] / 1e12,
                     "paper: MACs (T)": paper["macs_T"].get(disp, np.nan),
                     "Cache (M)": cache, "paper: Cache (M)": paper["cache_M"].get(disp, np.nan),
                     "cache tokens": tr.frame_tokens_after[-1], "narrations": tr.narrations})
    df = pd.DataFrame(rows).set_index("system")
    on = df.loc[SYSTEM_NAMES["videollm-online"]]
    df.insert(4, "Cache reduction (x)", on["Cache (M)"] / df["Cache (M)"])
    df.insert(5, "paper: Cache reduction (x)", on["paper: Cache (M)"] / df["paper: Cache (M)"])
    df.attrs.update(frames=T, minutes=T / 120, definition=definition, llm=llm)
    return df


def measured_table(results: list[dict]) -> "pd.DataFrame":
    """One row per (benchmark file, system): frames/s, time per frame at 10^2 frames and at the end, memory."""
    import pandas as pd

    from .models import SYSTEM_NAMES

    rows = []
    for res in results:
        on = {r["system"]: r for r in res["runs"]}.get("videollm-online")
        for r in res["runs"]:
            last = r["points"][-1]
            n = r["frames"]
            row = {"source": res.get("label", ""), "device": res["device"], "config": res["config"],
                   "engine": res["engine"], "system": SYSTEM_NAMES.get(r["system"], r["system"]), "frames": n,
                   "FPS": r["fps"], "ms/frame @100": per_frame_ms(r, min(100, n)), "ms/frame @end": per_frame_ms(r, n),
                   "KV (MiB) @end": last["kv_bytes"] / 2 ** 20, "cache tokens @end": last["cache_tokens"]}
            row["time growth (@end / @100)"] = row["ms/frame @end"] / row["ms/frame @100"]
            if on is not None and on["frames"] == n:
                row["FPS / VideoLLM-online"] = r["fps"] / on["fps"]
            if "cuda_max_allocated_bytes" in last:
                row["GPU max allocated (GiB)"] = last["cuda_max_allocated_bytes"] / 2 ** 30
            else:
                row["RSS change (MiB)"] = last["rss_growth_bytes"] / 2 ** 20
            rows.append(row)
    return pd.DataFrame(rows)


def memory_curve(system: str, llm: str, frames: list[int], segment_stats=EK100_SEGMENT_STATS,
                 text_tokens: int = 12, bytes_per_element: int = 2) -> dict[str, np.ndarray]:
    """Analytic GPU memory of the real-size model vs stream length: weights + KV cache (+ CLAM state), in bytes."""
    chat = bench_chat()
    cfg = bench_config(system, llm, chat)
    tr = _system_trace(system, max(frames), tuple(segment_stats), text_tokens)
    kv = np.array([cache_bytes(cfg, tr.frame_tokens_after[f - 1], tr.frame_tokens_after_routed[f - 1],
                               bytes_per_element) for f in frames], float)
    params = sum(p.numel() for p in bench_model(cfg, device="meta").parameters())
    return {"frames": np.asarray(frames), "kv": kv, "weights": params * bytes_per_element}


@functools.lru_cache(maxsize=32)
def _system_trace(system: str, n: int, segment_stats: tuple[float, float], text_tokens: int) -> StreamTrace:
    """Token counts do not depend on the LLM size: one trace per system, shared by every size."""
    chat = bench_chat()
    return simulate_stream(bench_config(system, "micro", chat), Layout.from_chat(chat, text_tokens),
                           narration_schedule(n, *segment_stats), n, finish=False)


def plot_efficiency(results: list[dict], llms=("llama-3.2-1b", "llama-3.1-8b"), segment_stats=EK100_SEGMENT_STATS):
    """The paper's Fig. 4 layout: memory vs stream length (one panel per LLM size: analytic weights + KV in bf16,
    our GPU measurements when given, the paper's points overlaid) and frames per second relative to
    VideoLLM-online (ours measured, the paper's from its bars)."""
    import matplotlib.pyplot as plt

    from .models import SYSTEM_NAMES

    colors = {"videollm-online": "#1f77b4", "videollm-mod": "#ff7f0e", "flownar-c": "#2ca02c", "flownar": "#d62728",
              "dcm-only": "#9467bd"}
    fig4 = paper_fig4()
    fig, axes = plt.subplots(1, len(llms) + 1, figsize=(5 * (len(llms) + 1), 4))
    frames = [1, 10, 100, 1000, 10_000]
    for ax, llm in zip(axes, llms):
        for system in ("videollm-online", "videollm-mod", "flownar-c", "flownar"):
            fr = frames + ([100_000] if system in ("flownar-c", "flownar") else [])
            c = memory_curve(system, llm, fr, segment_stats)
            ax.plot(c["frames"], (c["weights"] + c["kv"]) / 1e9, "-", color=colors[system],
                    label=f"{SYSTEM_NAMES[system]} (analytic)")
            pts = fig4[(fig4.figure == "vram") & (fig4.llm == PAPER_LLM[llm]) & (fig4.method == SYSTEM_NAMES[system])]
            ax.plot(pts.frames, pts.value, "o", mfc="none", color=colors[system], ms=8)
            for res in results:
                if res["config"] != llm:
                    continue
                run = {r["system"]: r for r in res["runs"]}.get(system)
                if run and "cuda_max_allocated_bytes" in run["points"][0]:
                    ax.plot([p["frames"] for p in run["points"]],
                            [p["cuda_max_allocated_bytes"] / 1e9 for p in run["points"]], "x--", color=colors[system])
        both = fig4[(fig4.figure == "vram") & (fig4.llm == PAPER_LLM[llm]) & (fig4.method == "all")]
        ax.plot(both.frames, both.value, "ko", mfc="none", ms=8, label="paper (circles)")
        ax.set(xscale="log", xlabel="frames in the stream", ylabel="GPU memory (GB)",
               title=f"{llm}: weights + KV cache (bf16)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    ax = axes[-1]
    systems = ["videollm-online", "videollm-mod", "flownar-c", "flownar"]
    groups = [("paper 1B (H100)", {SYSTEM_NAMES[s]: fig4[(fig4.figure == "fps") & (fig4.llm == "1B") &
                                                         (fig4.method == SYSTEM_NAMES[s])].value.mean() for s in systems})]
    for res in results:
        fps = {SYSTEM_NAMES[r["system"]]: r["fps"] for r in res["runs"]}
        if SYSTEM_NAMES["videollm-online"] in fps and len({r["frames"] for r in res["runs"]}) == 1:
            groups.append((f"ours: {res['config']}, {res.get('label') or res['device'][:18]}, {res['runs'][0]['frames']} fr.", fps))
    width = 0.8 / len(groups)
    for g, (label, fps) in enumerate(groups):
        base = fps[SYSTEM_NAMES["videollm-online"]]
        vals = [fps.get(SYSTEM_NAMES[s], np.nan) / base for s in systems]
        ax.bar(np.arange(len(systems)) + g * width, vals, width, label=label, alpha=0.85)
    ax.set_xticks(np.arange(len(systems)) + width * (len(groups) - 1) / 2, [SYSTEM_NAMES[s] for s in systems],
                  rotation=15, fontsize=8)
    ax.set(ylabel="frames/s relative to VideoLLM-online", title="speed (same narration schedule)")
    ax.axhline(1, color="k", lw=0.5)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


__all__ = ["REAL_LLMS", "BENCH_CONFIGS", "EK100_SEGMENT_STATS", "bench_chat", "bench_config", "bench_model",
           "kv_bytes_per_token", "narration_schedule", "segment_stats_from_data", "Layout", "StreamTrace",
           "simulate_stream", "cache_bytes", "linear_macs_per_token", "attention_macs", "clam_macs", "stream_macs",
           "paper_cache_fit", "best_definition", "cumulative_macs", "real_scale_table", "measured_table",
           "memory_curve", "plot_efficiency", "paper_fig4", "paper_self_conditioned_efficiency", "run_stream_bench", "run_bench", "per_frame_ms", "checkpoints_up_to", "device_name"]
