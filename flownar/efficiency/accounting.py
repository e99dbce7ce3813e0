"""Efficiency accounting without running a model: model sizes, the narration schedule, the token simulator, KV
bytes and MACs (the conventions are in :mod:`flownar.efficiency`)."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import layout
from ..models import REAL_LLMS, TINY_SIZES, FlowNarConfig, FlowNarForCausalLM, config_for

# ---------------------------------------------------------------------------------------------------- configs
# The real LLM shapes (REAL_LLMS) are model facts: flownar.models.config.
BENCH_CONFIGS = (*TINY_SIZES, *REAL_LLMS)
VISION_DIM = 1024  # SigLIP-L features, as in FlowNar-Data
TINY_VISION_DIM = 64  # the embedded default's synthetic features
FRAME_TOKENS = 10  # 1 CLS + 3x3
MEMORY_TOKENS = 20  # CLAM queries
EK100_SEGMENT_STATS = (3.83, 7.95)  # mean, std of segment duration in s (the FlowNar stream generator's comment)


@functools.lru_cache(maxsize=8)
def bench_chat(frame_tokens: int = FRAME_TOKENS, memory_tokens: int = MEMORY_TOKENS):
    """A word-level ChatTokenizer for benchmarks (its special ids are valid in any vocabulary >= its size)."""
    from ..data.chat import ChatTokenizer
    from ..data.samples import DEFAULT_SYSTEM_PROMPT, NARRATION_INSTRUCTIONS
    from ..data.tokenizer import train_word_tokenizer

    texts = [DEFAULT_SYSTEM_PROMPT, *NARRATION_INSTRUCTIONS, "You pick up the knife and open the drawer."]
    return ChatTokenizer(train_word_tokenizer(texts), frame_num_tokens=frame_tokens, num_m_tokens=memory_tokens)


def bench_config(system: str, config: str, chat, vision_dim: int | None = None) -> FlowNarConfig:
    """A FlowNarConfig of ``system`` at the LLM size ``config`` (a tiny-Llama size or a REAL_LLMS name).

    Feature dim: SigLIP-L's 1024 for the real LLM sizes, the embedded default's 64 for the tiny ones (a 1024-dim
    CLAM would cost more than a tiny LLM itself)."""
    if vision_dim is None:
        vision_dim = VISION_DIM if config in REAL_LLMS else TINY_VISION_DIM
    if config not in BENCH_CONFIGS:
        raise ValueError(f"unknown bench config {config!r}; expected one of {BENCH_CONFIGS}")
    return config_for(system, chat, vision_dim, size=config, clam_dropout=0.0, attn_implementation="sdpa")


def bench_model(cfg: FlowNarConfig, device="cpu", dtype=torch.float32, seed: int = 0) -> FlowNarForCausalLM:
    """Random weights of the right shapes (``device="meta"``: shapes only, for counting)."""
    torch.manual_seed(seed)
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in its dtype (an 8B model built in fp32 first would need twice the memory)
    try:
        with torch.device(device):
            model = FlowNarForCausalLM(cfg)
    finally:
        torch.set_default_dtype(before)
    return model.to(dtype).eval()


def kv_bytes_per_token(cfg, bytes_per_element: int = 2) -> int:
    """One token's keys and values in all layers: 2 x layers x kv_heads x head_dim x bytes."""
    return cfg.kv_bytes_per_token(bytes_per_element)


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
        from ..data.samples import eval_prompt_messages
        from ..stream import prompt_plan

        head, tags, tail = prompt_plan(chat, eval_prompt_messages())
        return cls(
            chat.frame_num_tokens,
            chat.num_m_tokens,
            len(head),
            sum(t[0] == "frames" for t in tags),
            len(tail),
            text_tokens,
        )


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
    answers: int = 0
    frames: int = 0
    memory_blocks: int = 0


_OWNER = {layout.SEGMENT: "seg", layout.NARRATION: "narr", layout.PERMANENT: "perm"}


class _CacheCount:
    """The simulator's cache: token counts [all layers, MoD's routed layers] by who owns them (the pieces of
    :mod:`flownar.layout`): kept for good, the current segment (deleted by DCM), each kept narration (FlowNar-C's
    last k) and each frame of a vision window."""

    def __init__(self, cfg, layout_: Layout, trace: StreamTrace):
        self.cfg, self.lay, self.tr = cfg, layout_, trace
        self.policy = cfg.cache_policy
        self.perm = [0, 0]  # tokens never deleted
        self.seg = [0, 0]  # the current segment's tokens
        self.narr: list[list[int]] = []  # per kept narration, when the policy keeps the last k
        self.frames: dict[int, list[int]] = {}  # a vision window's frames: frame -> counts
        self.frame = 0  # the frame being fed
        self.peak = 0

    def total(self, routed: int = 0) -> int:
        return self.perm[routed] + self.seg[routed] + sum(x[routed] for x in [*self.narr, *self.frames.values()])

    def feed(self, parts: list[tuple[int, int, str]]) -> None:
        """One forward of tagged parts [(tokens, of which <v>, owner)]; owner 'perm', 'seg', 'narr' (the turn being
        written, or whose EOS is fed) or 'next' (a question: the turn after it)."""
        tr, N = self.tr, self.lay.frame_tokens
        windowed = self.policy.last_k_narrations is not None
        tr.n.append(sum(p[0] for p in parts))
        tr.vision.append(sum(p[1] for p in parts))
        tr.cached.append(self.total())
        tr.cached_routed.append(self.total(1))
        for pn, pv, owner in parts:
            routed = pn - pv + (pv // N) * self.cfg.mod_tokens_per_frame
            if owner == "seg" and self.policy.vision_window is not None:  # the frame's tokens, dropped by the window
                into = self.frames.setdefault(self.frame, [0, 0])
            elif owner == "seg":
                into = self.seg
            elif owner in ("narr", "next") and windowed:
                if owner == "next":  # a question opens its answer's turn
                    self.narr.append([0, 0])
                into = self.narr[-1]
            else:
                into = self.perm
            into[0] += pn
            into[1] += routed
        self.peak = max(self.peak, self.total())

    def feed_pieces(self, pieces) -> None:
        size = {"assistant": self.lay.assistant}
        owner = {**_OWNER, "question": "next"}
        self.feed(
            [(sum(size.get(t, 1) for t in p.tokens), p.vision, owner.get(p.kind, owner[p.owner])) for p in pieces]
        )

    def after_turn(self, pending: str | None) -> list:
        """The pieces that feed the pending turn's EOS and newline (and after a narration the memory block)."""
        memory = self.cfg.use_memory
        self.tr.memory_blocks += pending == "narration" and memory
        return self.policy.before_question(pending, self.lay.frame_tokens, self.lay.memory_tokens, memory)

    def _text(self) -> None:
        """A turn's ``layout.text`` tokens, one per forward (greedy decoding)."""
        for _ in range(self.lay.text):
            self.feed_pieces([layout.narration_token()])

    def narrate(self, first: bool, after: str | None = None) -> None:
        """A narration (right ``after`` an answer: the forced one at the end), then the policy's deletions."""
        if self.policy.last_k_narrations is not None:
            self.narr.append([0, 0])
        pieces = layout.speak(first) if after is None else self.after_turn(after) + layout.speak(first=True)
        self.feed_pieces(pieces)
        self._text()
        self.tr.narrations += 1
        segment, old = self.policy.dropped_after_narration(0, self.tr.narrations + self.tr.answers)
        if segment is None:  # no DCM: the segment becomes permanent
            self.perm = [a + b for a, b in zip(self.perm, self.seg)]
        self.seg = [0, 0]
        if old is not None:
            self.narr.pop(0)

    def ask(self, question_tokens: int, pending: str | None) -> None:
        """A question (``question_tokens`` long) and its answer (``layout.text`` tokens), then the window's deletion."""
        self.feed_pieces(self.after_turn(pending) + [layout.question(question_tokens)])
        self._text()
        self.tr.answers += 1
        if self.policy.dropped_after_answer(self.tr.narrations + self.tr.answers) is not None:
            self.narr.pop(0)

    def enter_frame(self, i: int) -> None:
        """Frame ``i`` arrives: the frames that leave a vision window go."""
        self.frame = i
        upto = self.policy.frames_leaving(i)
        if upto is not None:
            for f in [f for f in self.frames if f <= upto]:
                del self.frames[f]
        self.peak = self.total()

    def end_frame(self) -> None:
        tr = self.tr
        tr.frames += 1
        tr.frame_forwards.append(len(tr.n))
        tr.frame_memory_blocks.append(tr.memory_blocks)
        tr.frame_tokens_after.append(self.total())
        tr.frame_tokens_after_routed.append(self.total(1))
        tr.frame_tokens_peak.append(self.peak)


def simulate_stream(
    cfg, layout_: Layout, schedule: list[int], n_frames: int, finish: bool = True, asks: list[tuple[int, int]] = ()
) -> StreamTrace:
    """Replay :class:`~flownar.stream.Narrator`'s token bookkeeping for the system of ``cfg`` (its cache policy,
    memory and MoD routing) without a model. Narrations happen at ``schedule`` frames (0 is forced), each
    ``layout.text`` tokens long and fed one per forward (like greedy decoding); ``finish`` forces one at the last
    frame, as ``Narrator.finish`` does. ``asks``: (frame, question tokens) pairs, a question asked after that frame
    (and its narration) as ``Narrator.ask`` does, its answer ``layout.text`` tokens long."""
    tr = StreamTrace()
    cache = _CacheCount(cfg, layout_, tr)
    N = layout_.frame_tokens
    speak_at = set(schedule)
    questions: dict[int, list[int]] = {}
    for f, n in asks:
        questions.setdefault(f, []).append(n)
    pending, last = None, -1  # pending: the turn whose EOS the next step feeds
    for i in range(n_frames):
        cache.enter_frame(i)
        if i == 0:
            run = layout_.prompt_frame_run
            cache.feed([(layout_.prompt_head - run, 0, "perm"), (run, N, "seg")])
            cache.narrate(first=True)
            pending, last = "narration", 0
        else:
            step = layout.silent_frame(N) if pending is None else cache.after_turn(pending) + [layout.open_frame(N)]
            cache.feed_pieces(step)
            pending = None
            if i in speak_at:
                cache.narrate(first=False)
                pending, last = "narration", i
        for n in questions.get(i, ()):
            cache.ask(n, pending)
            pending = "answer"
        cache.end_frame()
    if finish and n_frames and last != n_frames - 1:
        cache.narrate(first=False, after=pending)
        tr.frame_tokens_peak[-1] = max(tr.frame_tokens_peak[-1], cache.peak)
    return tr


def cache_bytes(cfg, tokens: int, tokens_routed: int | None = None, bytes_per_element: int = 2) -> int:
    """KV bytes for ``tokens`` cached in every unrouted layer and ``tokens_routed`` in MoD's routed layers."""
    per_layer = kv_bytes_per_token(cfg, bytes_per_element) // cfg.num_hidden_layers
    routed = len(cfg.routed_layers)
    tr = tokens if tokens_routed is None else tokens_routed
    return per_layer * ((cfg.num_hidden_layers - routed) * tokens + routed * tr)


# ---------------------------------------------------------------------------------------------------- MACs
def linear_macs_per_token(cfg) -> int:
    """MACs of one decoder layer's linear maps for one token: q, k, v, o projections and the SwiGLU MLP."""
    H, hd = cfg.hidden_size, cfg.attention_head_dim
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    return H * (q + 2 * kv) + q * H + 3 * H * cfg.intermediate_size


def memory_macs(cfg) -> dict[str, int] | None:
    """The memory's MACs per frame update (``frame_num_tokens`` tokens), per read-out, and for the read-out's query
    side (``queries``: weights only, computed once per stream by the engine, at its first read), from its kind
    (:meth:`flownar.models.memory.MemoryKind.macs`; CLAM: counted by the flop counter); None when the system has
    no memory or its memory is not counted (Flash Memory's k-means runs on the host)."""
    kind = cfg.memory_kind
    return kind.macs(cfg) if kind is not None else None


def _forward_macs(cfg, trace: StreamTrace) -> dict[str, np.ndarray]:
    """Per-forward MACs of the decoder by part (int64 arrays, one entry per forward of the trace)."""
    L = cfg.num_hidden_layers
    n_routed = len(cfg.routed_layers)
    N = cfg.frame_num_tokens
    k_sel = cfg.mod_tokens_per_frame
    n = np.asarray(trace.n, np.int64)
    v = np.asarray(trace.vision, np.int64)
    c = np.asarray(trace.cached, np.int64)
    cr = np.asarray(trace.cached_routed, np.int64)
    nr = n - v + (v // N) * k_sel  # tokens a routed layer computes
    hd = cfg.attention_head_dim
    att = 2 * cfg.num_attention_heads * hd
    return {
        "linear": linear_macs_per_token(cfg) * ((L - n_routed) * n + n_routed * nr),
        "attention": att * ((L - n_routed) * n * (c + n) + n_routed * nr * (cr + nr)),
        "router": cfg.hidden_size * n_routed * v if cfg.mod else np.zeros_like(n),
        "lm_head": np.full_like(n, cfg.hidden_size * cfg.vocab_size),
    }


def _input_macs(cfg, frames, memory_blocks, clam: dict | None) -> dict:
    """Connector (frame and memory tokens) and memory (update per frame, read per memory block, the read's query
    side once when there is a memory block) MACs; the memory's under the key ``clam`` whatever its kind."""
    D, H = cfg.vision_hidden_size, cfg.hidden_size
    out = {
        "connector": (D * H + H * H) * (frames * cfg.frame_num_tokens + memory_blocks * cfg.num_m_tokens),
        "clam": 0 * frames,
    }
    clam = clam or memory_macs(cfg)
    if clam is not None:  # flash-vstream: Flash Memory's k-means (host-side) is not counted
        out["clam"] = (
            frames * clam["update"] + memory_blocks * clam["read"] + np.minimum(memory_blocks, 1) * clam["queries"]
        )
    return out


def stream_macs(cfg, trace: StreamTrace, clam: dict | None = None) -> dict[str, int]:
    """MACs of a traced stream, by part (see the module docstring for the convention; flash-vstream: Flash Memory's
    k-means, a data-dependent number of small iterations per frame on the host, is not counted)."""
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
