"""The fast streaming forward: a preallocated KV cache with in-place compaction, and a Llama step that writes into it.

Why not transformers' ``DynamicCache``: it grows by ``torch.cat`` of the whole cache at every step (a copy that
costs more than the step itself once the cache is long) and DCM's deletions re-allocate it with ``index_select``.
Here each layer owns one buffer ``(1, kv_heads, capacity, head_dim)``:

* ``append`` writes the new keys/values at ``[length, length + n)`` in place and returns views of ``[0, length + n)``;
  the buffer doubles only when it is full (amortised O(1); counted in ``reallocations``);
* ``compact(keep)`` removes cached tokens in place: only the kept tokens *after the first removed one* move, so
  DCM's pruning after a narration moves just the narration text that follows the pruned segment.

:func:`forward_step` runs the decoder on new token embeddings against this cache. It calls the model's own modules
(norms, projections, MLP, rotary embedding; LoRA layers work unchanged) and does exactly what transformers'
Llama forward does with sdpa attention: a test holds its logits to the teacher-forced forward. Differences are
bookkeeping only: no mask factory, no per-call cache objects, one additive mask shared by all layers of a step
(none for single-token steps). VideoLLM-MoD's routed layers cache only the tokens they compute, so each layer
keeps its own length.

Contiguous positions (streaming-vlm: every token's position is its index in the cache, re-indexed after each
eviction, as StreamingVLM): the cache holds un-rotated keys, and each step rotates the cached keys at their slots
(0, 1, ...) and its queries at theirs (``start`` must then be the cache's length). One extra elementwise pass over
a bounded window per layer; exact, with no rotation error piling up over re-indexings.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .models.dcm_attention import rotate


class StaticKVCache:
    """Per-layer preallocated keys/values ``(1, kv_heads, capacity, head_dim)`` with a fill length per layer."""

    def __init__(
        self,
        num_layers: int,
        kv_heads: int,
        head_dim: int,
        *,
        capacity: int = 1024,
        device=None,
        dtype=torch.float32,
        growth: float = 2.0,
        weights: "StepWeights | None" = None,
    ):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.kv_heads, self.head_dim, self.growth = kv_heads, head_dim, growth
        self.device, self.dtype = torch.device(device or "cpu"), dtype
        self.keys = [self._empty(capacity) for _ in range(num_layers)]
        self.values = [self._empty(capacity) for _ in range(num_layers)]
        self.lengths = [0] * num_layers
        self.reallocations = 0
        self.weights = weights  # the model's StepWeights for forward(); None: call the layers' modules

    @classmethod
    def for_model(
        cls, config, *, capacity: int = 1024, device=None, dtype=torch.float32, weights: "StepWeights | None" = None
    ) -> "StaticKVCache":
        return cls(
            config.num_hidden_layers,
            config.num_key_value_heads,
            config.attention_head_dim,
            capacity=capacity,
            device=device,
            dtype=dtype,
            weights=weights,
        )

    # the KVStore interface (what the Narrator uses)
    def forward(
        self, model, embeds: torch.Tensor, start: int, frame_positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Run the decoder on new tokens at positions ``start, start + 1, ...``, caching them here
        (:func:`forward_step`, with the :class:`StepWeights` given at construction, if any)."""
        return forward_step(model, embeds, None, self, frame_positions, weights=self.weights, start=start)

    def delete(self, keep: np.ndarray) -> None:
        self.compact(keep)

    def _empty(self, capacity: int) -> torch.Tensor:
        """A zero-filled buffer. Not ``torch.empty``: the captured step attends over the whole capacity with the
        unused slots masked, and a masked slot holding a NaN bit pattern still poisons the output (its softmax weight
        is 0, and 0 x NaN = NaN)."""
        return torch.zeros(1, self.kv_heads, capacity, self.head_dim, device=self.device, dtype=self.dtype)

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def __len__(self) -> int:
        return max(self.lengths)

    def reserve(self, layer: int, needed: int) -> None:
        """Make room for ``needed`` tokens in ``layer`` (grows by ``growth`` x, copying only the filled part)."""
        cap = self.keys[layer].shape[2]
        if needed <= cap:
            return
        new_cap = max(needed, int(cap * self.growth))
        n = self.lengths[layer]
        for bufs in (self.keys, self.values):
            new = self._empty(new_cap)
            new[:, :, :n] = bufs[layer][:, :, :n]
            bufs[layer] = new
        self.reallocations += 1

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k, v`` ``(1, kv_heads, n, head_dim)`` after the cached tokens; return views of all of them."""
        n0, n = self.lengths[layer], k.shape[2]
        self.reserve(layer, n0 + n)
        K, V = self.keys[layer], self.values[layer]
        K[:, :, n0 : n0 + n] = k
        V[:, :, n0 : n0 + n] = v
        self.lengths[layer] = n0 + n
        return K[:, :, : n0 + n], V[:, :, : n0 + n]

    def compact(self, keep: np.ndarray) -> int:
        """Remove the cached tokens where ``keep`` (bool, one per cached token) is False, in every layer, in place.

        All layers must hold the same tokens (true for every system with deletions). Returns how many were removed.
        """
        n = self.lengths[0]
        if any(length != n for length in self.lengths) or keep.shape != (n,):
            raise ValueError(f"compact: keep has shape {keep.shape} for layer lengths {sorted(set(self.lengths))}")
        dropped = np.flatnonzero(~keep)
        if dropped.size == 0:
            return 0
        first = int(dropped[0])
        tail = np.flatnonzero(keep[first:]) + first  # kept tokens that have to move down
        m = tail.size
        if m:
            idx = torch.from_numpy(tail).to(self.device, non_blocking=True)
            for bufs in (self.keys, self.values):
                for buf in bufs:
                    # index_select gathers into a temporary of m tokens, so source and target may overlap
                    buf[:, :, first : first + m] = buf[:, :, :n].index_select(2, idx)
        self.lengths = [first + m] * len(self.lengths)
        return int(dropped.size)

    def used_bytes(self) -> int:
        """Bytes of the cached (valid) keys and values: sum over layers of 2 x length x kv_heads x head_dim x size."""
        per = self.kv_heads * self.head_dim * self.keys[0].element_size() * 2
        return sum(self.lengths) * per

    def allocated_bytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.keys + self.values)


class SlotTags:
    """What each cached token is (kind code, segment id, narration id, frame index): numpy arrays that grow and
    compact with the cache, so the cache policies' deletions are vectorised rather than Python loops over the
    cache."""

    KINDS = ("other", "frames", "memory", "narration")
    FIELDS = ("kind", "segment", "narration", "frame")

    def __init__(self, capacity: int = 1024):
        self.kind = np.zeros(capacity, np.int8)
        self.segment = np.full(capacity, -1, np.int64)
        self.narration = np.full(capacity, -1, np.int64)
        self.frame = np.full(capacity, -1, np.int64)  # the frame being fed when the token came (read for "frames")
        self.n = 0

    def add_codes(self, kinds: np.ndarray, segments, narrations, frames=-1) -> None:
        """Append tags: ``kinds`` as codes (indices into :attr:`KINDS`), one segment, narration id and frame per
        token (scalars broadcast)."""
        m = len(kinds)
        if self.n + m > self.kind.size:
            cap = max(self.n + m, 2 * self.kind.size)
            for name in self.FIELDS:
                old = getattr(self, name)
                new = np.full(cap, -1 if name != "kind" else 0, old.dtype)
                new[: self.n] = old[: self.n]
                setattr(self, name, new)
        sl = slice(self.n, self.n + m)
        self.kind[sl] = kinds
        self.segment[sl] = segments
        self.narration[sl] = narrations
        self.frame[sl] = frames
        self.n += m

    def keep_mask(
        self, *, segment: int | None = None, narration: int | None = None, frames_upto: int | None = None
    ) -> np.ndarray:
        """Everything but the tokens of ``segment``, of ``narration``, and of the frames ``<= frames_upto``."""
        keep = np.ones(self.n, bool)
        if segment is not None:
            keep &= self.segment[: self.n] != segment
        if narration is not None:
            keep &= self.narration[: self.n] != narration
        if frames_upto is not None:
            keep &= ~((self.kind[: self.n] == 1) & (self.frame[: self.n] <= frames_upto))
        return keep

    def compact(self, keep: np.ndarray) -> None:
        m = int(keep.sum())
        for name in self.FIELDS:
            arr = getattr(self, name)
            arr[:m] = arr[: self.n][keep]
        self.n = m

    def counts(self) -> dict[str, int]:
        c = np.bincount(self.kind[: self.n], minlength=len(self.KINDS))
        return {k: int(c[i]) for i, k in enumerate(self.KINDS) if c[i]}


class HFCacheStore:
    """transformers' ``DynamicCache`` behind the same interface as :class:`StaticKVCache`: transformers' own forward
    on a growing cache that deletions rebuild with ``index_select`` (what the original code does). The reference
    engine of the logits tests and the baseline of the speed benchmark."""

    def __init__(self, config):
        from transformers import DynamicCache

        self.cache = DynamicCache(config=config)

    def forward(
        self, model, embeds: torch.Tensor, start: int, frame_positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        from .models.hf_compat import CACHE_ARG

        position_ids = torch.arange(start, start + embeds.shape[1], device=embeds.device)[None]
        with model.streaming_routing(frame_positions):
            out = model.model(
                inputs_embeds=embeds, position_ids=position_ids, use_cache=True, **{CACHE_ARG: self.cache}
            )
        return out.last_hidden_state

    def delete(self, keep: np.ndarray) -> None:
        idx = None
        for layer in self.cache.layers:
            if idx is None:
                idx = torch.from_numpy(np.flatnonzero(keep)).to(layer.keys.device)
            layer.keys = layer.keys.index_select(-2, idx)
            layer.values = layer.values.index_select(-2, idx)

    def used_bytes(self) -> int:
        return sum(
            l.keys.numel() * l.keys.element_size() + l.values.numel() * l.values.element_size()
            for l in self.cache.layers
            if getattr(l, "keys", None) is not None and l.keys.numel()
        )

    def allocated_bytes(self) -> int | None:
        return None  # transformers owns the allocation


#: The key/value stores a :class:`~flownar.stream.Narrator` can run on (``engine=``).
ENGINES = ("static", "hf")


def make_kv_store(
    engine: str, config, *, capacity: int = 2048, device=None, dtype=torch.float32, weights: "StepWeights | None" = None
):
    """A fresh key/value store: ``"static"`` (:class:`StaticKVCache`, the fast path, on ``weights`` if given) or
    ``"hf"`` (:class:`HFCacheStore`). Both implement ``forward(model, embeds, start, frame_positions) -> hidden``
    (new tokens at positions ``start, start + 1, ...``), ``delete(keep)``, ``used_bytes()`` and
    ``allocated_bytes()``."""
    if engine == "static":
        return StaticKVCache.for_model(config, capacity=capacity, device=device, dtype=dtype, weights=weights)
    if engine == "hf":
        return HFCacheStore(config)
    raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")


def tail_causal_mask(n: int, total: int, dtype, device) -> torch.Tensor:
    """Additive ``(n, total)`` mask for ``n`` new queries after ``total - n`` cached keys: every cached key is
    visible, the new ones causally."""
    mask = torch.zeros(n, total, dtype=dtype, device=device)
    mask[:, total - n :] = torch.full((n, n), float("-inf"), dtype=dtype, device=device).triu(1)
    return mask


# ---------------------------------------------------------------------------------------------- the step's weights
class _Projections:
    """The four matmuls of one decoder layer: q/k/v (fused into one), o, gate/up (fused into one), down.

    Fused when all seven projections are plain ``nn.Linear`` (else, e.g. with LoRA layers or ``fuse=False``, the
    modules are called): concatenated copies of the weights, stored transposed ``(in, out)`` so that a step is
    ``x @ W`` on a row-major matrix. On the CPU that layout matters more than the fusion: MKL packs a
    ``nn.Linear`` weight ``(out, in)`` anew at every call, and for the few rows of a streaming step that packing,
    read from L3 cache, costs 2-3x the product itself (measured: a 128 x 688 weight, 1 row, 56 us as ``F.linear``
    vs 19 us as ``x @ W``, with 40 such weights in turn so that none stays in L2). The outputs equal the separate
    projections' up to float rounding (the parity tests hold the engine to the teacher-forced forward)."""

    def __init__(self, layer, fuse: bool):
        attn, mlp = layer.self_attn, layer.mlp
        self.modules = (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj)
        self.fused = fuse and all(type(m) is nn.Linear for m in self.modules)
        self.q_out, self.kv_out = attn.q_proj.out_features, attn.k_proj.out_features
        if self.fused:
            q, k, v, o, g, u, d = self.modules
            self.qkv_w, self.qkv_b = _stack_t(q, k, v)  # (H, q_out + 2 kv_out)
            self.o_w, self.o_b = _stack_t(o)  # (q_out, H)
            self.gate_up_w, self.gate_up_b = _stack_t(g, u)  # (H, 2 I)
            self.down_w, self.down_b = _stack_t(d)  # (I, H)

    def qkv(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(1, n, H) -> q (1, n, q_out), k, v (1, n, kv_out)."""
        if self.fused:
            return _mm(h, self.qkv_w, self.qkv_b).split((self.q_out, self.kv_out, self.kv_out), dim=-1)
        return tuple(_linear(m, h) for m in self.modules[:3])

    def o(self, x: torch.Tensor) -> torch.Tensor:
        return _mm(x, self.o_w, self.o_b) if self.fused else _linear(self.modules[3], x)

    def gate_up(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.fused:
            return _mm(h, self.gate_up_w, self.gate_up_b).chunk(2, dim=-1)
        return _linear(self.modules[4], h), _linear(self.modules[5], h)

    def down(self, x: torch.Tensor) -> torch.Tensor:
        return _mm(x, self.down_w, self.down_b) if self.fused else _linear(self.modules[6], x)

    def nbytes(self) -> int:
        if not self.fused:
            return 0
        return sum(t.numel() * t.element_size() for t in (self.qkv_w, self.o_w, self.gate_up_w, self.down_w))


def _stack_t(*linears: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weights of ``linears`` side by side, transposed: ``(in, sum of out)``, row-major; their biases (or None)."""
    with torch.no_grad():  # a copy for inference, not part of any autograd graph
        w = torch.cat([m.weight for m in linears]).t().contiguous()
        b = None if linears[0].bias is None else torch.cat([m.bias for m in linears])
    return w, b


def _mm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``x @ w (+ b)`` for x (1, n, in) and a row-major w (in, out)."""
    y = x[0] @ w if b is None else torch.addmm(b, x[0], w)
    return y[None]


class _RopeTable:
    """cos/sin of the decoder's rotary embedding for a block of consecutive positions, computed by the model's own
    ``rotary_emb`` (so bit-identical to a per-step call) and sliced by the steps that fall inside it. Streams only
    move forward, so one block is kept (``block`` positions, then the next): memory stays flat however long the
    stream. Rotary types whose frequencies depend on the sequence length (``dynamic``, ``longrope``) are computed
    per step instead."""

    def __init__(self, rotary_emb, block: int = 4096):
        self.rotary_emb, self.block = rotary_emb, block
        rope_type = str(getattr(rotary_emb, "rope_type", "default"))
        self.static = "dynamic" not in rope_type and "longrope" not in rope_type
        self.start, self.cos, self.sin = -1, None, None

    def __call__(self, x: torch.Tensor, start: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin ``(1, n, head_dim)`` for positions ``start .. start + n - 1``, in ``x``'s dtype and device."""
        if not self.static or n > self.block:
            return self.rotary_emb(x, torch.arange(start, start + n, device=x.device)[None])
        inside = self.cos is not None and self.start <= start and start + n <= self.start + self.block
        if not inside or self.cos.dtype != x.dtype or self.cos.device != x.device:
            self.start = start
            pos = torch.arange(start, start + self.block, device=x.device)[None]
            self.cos, self.sin = self.rotary_emb(x, pos)  # (1, block, hd)
        a = start - self.start
        return self.cos[:, a : a + n], self.sin[:, a : a + n]


class StepWeights:
    """A decoder's weights arranged for the per-frame step: fused projections per layer (:class:`_Projections`) and
    a RoPE table. Built once per :class:`~flownar.stream.Narrator`; :meth:`stale` tells when the model's weights
    have changed in place since (an optimizer step, ``load_state_dict``), and the Narrator rebuilds it at the next
    video.

    ``fuse``: ``"auto"`` (default) fuses unless the fused copies would take more than ``FUSE_LIMIT_BYTES``
    (real-size LLMs keep their separate projections: a second copy of most of a 1B model's weights costs more
    memory than the few launches it saves on a GPU), ``True`` / ``False`` force it."""

    FUSE_LIMIT_BYTES = 256 * 2**20

    def __init__(self, model, fuse: bool | str = "auto", compile: bool = False, capture: bool = False):
        dec = model.model
        self.sources = [p for layer in dec.layers for p in _fusable_params(layer)]
        if compile and capture:
            raise ValueError("choose the compiled step or the captured one, not both")
        if fuse == "auto":
            fuse = (
                compile or capture or sum(p.numel() * p.element_size() for p in self.sources) <= self.FUSE_LIMIT_BYTES
            )
        self.layers = [_Projections(layer, bool(fuse)) for layer in dec.layers]
        self.rope = _RopeTable(dec.rotary_emb)
        self.version = self._version()
        self.compiled: CompiledStep | CapturedStep | None = None  # the step that replaces the eager one
        if compile:
            why = CompiledStep.unsupported(model, self)
            if why is not None:
                raise ValueError(f"{model.config.system}: the step cannot be compiled: {why}")
            self.compiled = CompiledStep(model, self)
        if capture:
            why = CapturedStep.unsupported(model, self)
            if why is not None:
                raise ValueError(f"{model.config.system}: the step cannot be captured: {why}")
            self.compiled = CapturedStep(model, self)

    def _version(self) -> tuple[int, ...]:
        return tuple(p._version for p in self.sources) + tuple(p.data_ptr() for p in self.sources)

    def stale(self) -> bool:
        return self._version() != self.version

    @property
    def fused(self) -> bool:
        return any(p.fused for p in self.layers)

    def nbytes(self) -> int:
        """Bytes of the fused copies (0 when not fused)."""
        return sum(p.nbytes() for p in self.layers)


class CompiledStep:
    """The decoder step (all layers and the final norm) as one ``torch.compile`` graph (inductor), over the static
    cache. Eager PyTorch pays a dispatch per op (on this project's CPUs about 5-10 us, about 25 ops per layer), which
    for a model this small costs several times the arithmetic; compiled, the step is a few fused kernels around the
    matmuls. It runs :func:`_layer`, the eager step's own code, so the two differ only by float rounding (tested).

    Used for systems without routing (MoD's routed layers select tokens data-dependently) on fused weights. Shapes
    are dynamic (the cached length and the number of new tokens vary); dynamo still specialises a few cases (the
    first step, where nothing is cached; single-token steps; the first RoPE block), so about four graphs are
    compiled over the first frames (70-90 s on this project's CPU in all, then cached on disk by inductor), and
    again for each model (the weights are constants of the graph)."""

    def __init__(self, model, weights: "StepWeights"):
        self.model, self.weights = model, weights
        self.fn = torch.compile(self._step, dynamic=True, fullgraph=True)

    handles_contiguous = False  # contiguous positions (streaming-vlm) stay on the eager step

    @staticmethod
    def unsupported(model, weights: "StepWeights") -> str | None:
        """Why this model cannot run compiled (None if it can)."""
        if model.config.contiguous_positions:
            return "contiguous positions re-rotate the cached keys at every step (not built into this step)"
        return _static_step_unsupported(model, weights)

    def _step(self, x, cos, sin, keys: list[torch.Tensor], values: list[torch.Tensor], start: int) -> torch.Tensor:
        dec = self.model.model
        n = x.shape[1]
        for layer, proj, K, V in zip(dec.layers, self.weights.layers, keys, values):
            x = _layer(layer, proj, x, cos, sin, [(K, V, start, n, None)])
        return _rms_norm(dec.norm, x)

    def __call__(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: StaticKVCache) -> torch.Tensor:
        start, n = cache.lengths[0], x.shape[1]
        for i in range(len(cache.keys)):
            cache.reserve(i, start + n)
        out = self.fn(x, cos, sin, cache.keys, cache.values, start)
        cache.lengths = [start + n] * len(cache.keys)
        return out


def _static_step_unsupported(model, weights: "StepWeights") -> str | None:
    """What keeps a model off the compiled and the captured step (None if nothing)."""
    if any(getattr(layer, "router", None) is not None for layer in model.model.layers):
        return "MoD's routed layers select tokens data-dependently"
    if not all(p.fused for p in weights.layers):
        return "the projections are not plain nn.Linear (LoRA?) or fuse=False"
    return None


class CapturedStep:
    """The decoder step with static shapes, for CUDA graphs: the new tokens' keys/values are written at a tensor of
    slots (``index_copy_``) and attention runs over the cache's whole capacity under an additive mask (empty slots
    and later tokens masked), so one step's kernels depend only on (new tokens, capacity), not on how many tokens
    are cached. On a CUDA device each (new tokens, capacity, cache buffers) shape is captured once into a
    ``torch.cuda.CUDAGraph`` (the step's few hundred kernel launches become one replay) and replayed with its
    inputs copied into static buffers; the cache's length stays a host integer, so the only host synchronisation
    left per frame is the narrator's speak/skip decision. Elsewhere (CPU) the same static code runs eagerly: the
    tests hold it to the eager step there, and ``make gpu-check`` holds the replayed graphs to it on a GPU.

    Capacity grows by doubling (:class:`StaticKVCache`), so a stream meets a few capacities and a few step sizes
    (a silent frame, the frame after a narration, speaking, one decoded token): a handful of graphs per stream,
    captured again for a new cache (each video's). Systems without routing (not VideoLLM-MoD), fused weights.

    Contiguous positions (streaming-vlm) fit the static shapes too: keys are cached un-rotated as in the eager step,
    and each step rotates the whole capacity at its slots 0..capacity-1 (a RoPE table that depends only on the
    capacity, copied into the graph's inputs); slots past the cached length are masked as always. The queries sit
    at the cache's end, as in the eager step.

    Attention: sdpa over the whole capacity under the additive mask, or, when flash-attn is installed and the model
    is on a GPU in bf16/fp16, ``flash_attn_with_kvcache`` on the same buffers (seen as (1, capacity, kv_heads, hd))
    with ``cache_seqlens`` = the cached length after the step and ``causal=True`` (flash-attn aligns the causal mask
    to the end of the cached keys, which is where the new tokens were written): the kernel then reads only the
    cached slots instead of masking the rest. ``flash`` holds that function (None: sdpa). The flash path is held
    to the eager step on the CPU with a stand-in written from flash-attn's documented semantics
    (tests/test_stream.py); the real kernel runs in tests/test_gpu.py where flash-attn is installed."""

    handles_contiguous = True

    def __init__(self, model, weights: "StepWeights", graphs: bool | None = None):
        self.model, self.weights = model, weights
        self.contiguous = bool(model.config.contiguous_positions)
        param = next(model.parameters())
        device = param.device
        self.graphs = device.type == "cuda" if graphs is None else graphs
        half = param.dtype in (torch.bfloat16, torch.float16)
        self.flash = _flash_kvcache() if device.type == "cuda" and half else None
        self._captured: dict[tuple, tuple] = {}
        self.captures = 0  # graphs captured so far (for benchmarks and tests)

    @staticmethod
    def unsupported(model, weights: "StepWeights") -> str | None:
        """Why this model cannot run captured (None if it can): the compiled step's conditions, contiguous
        positions allowed."""
        return _static_step_unsupported(model, weights)

    def _step(
        self, x, cos, sin, keys: list[torch.Tensor], values: list[torch.Tensor], slots, mask, *key_rope
    ) -> torch.Tensor:
        dec = self.model.model
        for layer, proj, K, V in zip(dec.layers, self.weights.layers, keys, values):
            x = _static_layer(layer, proj, x, cos, sin, K, V, slots, mask, key_rope or None, self.flash)
        return _rms_norm(dec.norm, x)

    def __call__(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: StaticKVCache) -> torch.Tensor:
        start, n = cache.lengths[0], x.shape[1]
        for i in range(len(cache.keys)):
            cache.reserve(i, start + n)
        cap, device = cache.capacity, x.device
        slots = torch.arange(start, start + n, device=device)  # (n,)
        if self.flash is not None:  # the cached length after this step (flash-attn masks the rest itself)
            mask = torch.full((1,), start + n, dtype=torch.int32, device=device)
        else:
            visible = torch.arange(cap, device=device)[None] <= slots[:, None]  # (n, cap): cached and causal
            mask = torch.zeros(n, cap, dtype=x.dtype, device=device).masked_fill_(~visible, float("-inf"))
        args = (x, cos, sin, slots, mask)
        if self.contiguous:  # cos/sin of every slot 0..cap-1, for the cached (un-rotated) keys
            args += self.weights.rope(x, 0, cap)
        if not self.graphs:
            out = self._step(x, cos, sin, cache.keys, cache.values, *args[3:])
        else:
            key = (n, cap, x.dtype, cache.keys[0].data_ptr())
            entry = self._captured.get(key)
            if entry is None:
                entry = self._captured[key] = self._capture(args, cache)
            graph, static, out = entry
            for buf, a in zip(static, args):
                buf.copy_(a)
            graph.replay()
            out = out.clone()  # the graph's output buffer is reused by its next replay
        cache.lengths = [start + n] * len(cache.keys)
        return out

    def _capture(self, args, cache: StaticKVCache):
        """Capture the step for these shapes and this cache's buffers (after one warm-up run on a side stream, as
        torch.cuda.graphs asks). The warm-up writes the same keys/values the replay will, so it changes nothing."""
        static = [a.clone() for a in args]
        x, cos, sin, *rest = static  # rest: slots, mask (and the keys' cos/sin with contiguous positions)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._step(x, cos, sin, cache.keys, cache.values, *rest)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self._step(x, cos, sin, cache.keys, cache.values, *rest)
        self.captures += 1
        return graph, static, out


def _static_layer(layer, proj, x, cos, sin, keys, values, slots, mask, key_rope=None, flash=None) -> torch.Tensor:
    """:func:`_layer` for one stream with static shapes (:class:`CapturedStep`): the ``n`` new tokens' keys/values
    go to ``slots`` (n,) of the full-capacity buffers (1, kv_heads, capacity, hd) and attend to all of them under
    ``mask`` (n, capacity) (additive: 0 where visible). ``key_rope``: contiguous positions: (cos, sin)
    (1, capacity, hd) of slots 0..capacity-1; the new keys are cached un-rotated and the whole buffer is rotated
    for the attention (``cos``/``sin`` then rotate the queries only). ``flash``: flash-attn's
    ``flash_attn_with_kvcache``; ``mask`` is then the cached length after the step, (1,) int32."""
    attn, mlp = layer.self_attn, layer.mlp
    n, hd = x.shape[1], attn.head_dim
    h = _rms_norm(layer.input_layernorm, x)
    q, k, v = proj.qkv(h)  # (1, n, q_out), (1, n, kv_out) x 2
    heads = proj.q_out // hd
    if key_rope is None:
        qk = _rope(torch.cat((q, k), dim=-1).view(1, n, -1, hd), cos, sin).transpose(1, 2)  # (1, heads + kv, n, hd)
    else:  # the queries only; keys are cached un-rotated
        qk = torch.cat((_rope(q.view(1, n, -1, hd), cos, sin), k.view(1, n, -1, hd)), dim=2).transpose(1, 2)
    keys.index_copy_(2, slots, qk[:, heads:])
    values.index_copy_(2, slots, v.view(1, n, -1, hd).transpose(1, 2))
    K = keys if key_rope is None else rotate(keys, *key_rope)  # (1, kv_heads, capacity, hd)
    if flash is not None:  # flash-attn's layout: (batch, seq, heads, hd) views of the same buffers
        o = flash(
            qk[:, :heads].transpose(1, 2),
            K.transpose(1, 2),
            values.transpose(1, 2),
            cache_seqlens=mask,
            softmax_scale=attn.scaling,
            causal=True,
        )  # (1, n, heads, hd)
    else:
        gqa = attn.num_key_value_groups != 1
        o = F.scaled_dot_product_attention(
            qk[:, :heads], K, values, attn_mask=mask, scale=attn.scaling, enable_gqa=gqa
        ).transpose(1, 2)  # (1, n, heads, hd)
    x = x + proj.o(o.reshape(1, n, -1))  # (1, n, heads * hd)
    h = _rms_norm(layer.post_attention_layernorm, x)
    gate, up = proj.gate_up(h)
    return x + proj.down(mlp.act_fn(gate) * up)


def _flash_kvcache():
    """flash-attn's ``flash_attn_with_kvcache`` when the package is installed and loads, else None."""
    try:
        from flash_attn import flash_attn_with_kvcache
    except Exception:  # not installed, or built for another torch / CUDA: sdpa instead
        return None
    return flash_attn_with_kvcache


def _rope_from(dec, x: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (1, m, hd) of positions 0..m-1 from the decoder's rotary embedding."""
    return dec.rotary_emb(x, torch.arange(m, device=x.device)[None])


def _fusable_params(layer) -> list[torch.Tensor]:
    attn, mlp = layer.self_attn, layer.mlp
    mods = (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj)
    return [p for m in mods for p in (m.weight, m.bias) if isinstance(p, torch.Tensor)]


def _linear(mod, x: torch.Tensor) -> torch.Tensor:
    """A plain ``nn.Linear`` is called functionally (no module-call overhead); anything else (LoRA) as a module."""
    if type(mod) is nn.Linear:
        return F.linear(x, mod.weight, mod.bias)
    return mod(x)


def _rms_norm(norm, x: torch.Tensor) -> torch.Tensor:
    """LlamaRMSNorm in one fused op: weight * (x / rms(x)) computed in float32, cast back before the weight."""
    if x.dtype == torch.float32:
        return norm.weight * F.rms_norm(x, (x.shape[-1],), eps=norm.variance_epsilon)
    return norm.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=norm.variance_epsilon).to(x.dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of ``x`` (1, n, heads, hd): ``x cos + rotate_half(x) sin`` with cos/sin (1, n, hd)."""
    half = x.shape[-1] // 2
    rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, :, None] + rot * sin[:, :, None]


def _layer(
    layer,
    proj: _Projections,
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    streams: list[tuple[torch.Tensor, torch.Tensor, int, int, torch.Tensor | None]],
    key_rope: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """One Llama decoder layer on new tokens ``x`` (1, N, H) of one or more streams, one after the other along N.

    ``streams``: per stream ``(keys, values, start, n, mask)``: its ``n`` new tokens' keys/values are written into
    its buffers (1, kv_heads, capacity, hd) at ``[start, start + n)`` and attend to ``[0, start + n)`` of them
    (``mask``: additive (n, start + n), or None = every earlier token, the new ones causally). Norms, projections
    and the MLP run on all N rows at once; the attention is per stream. A pure function of tensors (no cache
    bookkeeping): the eager step, the compiled one (:class:`CompiledStep`) and the batched one
    (:func:`forward_batch`) all run this code.

    ``key_rope``: contiguous positions: (cos, sin) (1, M, hd) of positions 0..M-1; the new keys are cached
    un-rotated and each stream's cached keys are rotated at their slots for its attention (``cos``/``sin`` then
    rotate the queries only, at their slots)."""
    attn, mlp = layer.self_attn, layer.mlp
    N, hd = x.shape[1], attn.head_dim
    h = _rms_norm(layer.input_layernorm, x)
    q, k, v = proj.qkv(h)  # (1, N, q_out), (1, N, kv_out) x 2
    heads = proj.q_out // hd
    if key_rope is None:  # rotate q and k together: (1, N, heads + kv_heads, hd)
        qk = _rope(torch.cat((q, k), dim=-1).view(1, N, -1, hd), cos, sin)
    else:  # contiguous positions: the queries only; keys are cached un-rotated
        qk = torch.cat((_rope(q.view(1, N, -1, hd), cos, sin), k.view(1, N, -1, hd)), dim=2)
    v = v.view(1, N, -1, hd)
    gqa = attn.num_key_value_groups != 1  # a module constant: static under torch.compile
    qk, v = qk.transpose(1, 2), v.transpose(1, 2)  # (1, heads + kv_heads, N, hd), (1, kv_heads, N, hd) views
    outs, a = [], 0
    for keys, values, start, n, mask in streams:
        keys[:, :, start : start + n] = qk[:, heads:, a : a + n]  # (1, kv_heads, n, hd)
        values[:, :, start : start + n] = v[:, :, a : a + n]
        K, V = keys[:, :, : start + n], values[:, :, : start + n]  # (1, kv_heads, start + n, hd) views
        if key_rope is not None:  # every cached key at its slot
            K = rotate(K, key_rope[0][:, : start + n], key_rope[1][:, : start + n])
        if mask is None and n > 1:
            mask = tail_causal_mask(n, start + n, x.dtype, x.device)
        q_s = qk[:, :heads, a : a + n]  # (1, heads, n, hd)
        outs.append(F.scaled_dot_product_attention(q_s, K, V, attn_mask=mask, scale=attn.scaling, enable_gqa=gqa))
        a += n
    o = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)  # (1, heads, N, hd)
    x = x + proj.o(o.transpose(1, 2).reshape(1, N, -1))
    h = _rms_norm(layer.post_attention_layernorm, x)
    gate, up = proj.gate_up(h)
    return x + proj.down(mlp.act_fn(gate) * up)


def _attend(layer, x, cos, sin, cache: StaticKVCache, i: int, mask, proj: _Projections, key_rope=None) -> torch.Tensor:
    """:func:`_layer` on layer ``i`` of one stream's ``cache``: make room, run it, count the new tokens."""
    start, n = cache.lengths[i], x.shape[1]
    cache.reserve(i, start + n)
    x = _layer(layer, proj, x, cos, sin, [(cache.keys[i], cache.values[i], start, n, mask)], key_rope)
    cache.lengths[i] = start + n
    return x


def _routed(layer, x, cos, sin, cache, i, frame_positions, routing_log, proj):
    """VideoLLM-MoD's routed layer in streaming: only text tokens and each frame's top vision tokens are computed
    (and cached); their updates are scaled by the router weight. Routing and merging are the layer's own
    (``FlowNarDecoderLayer.route`` / ``merge``, shared with training); only the attention is this engine's."""
    idx, selected, weight = layer.route(x, frame_positions)
    if routing_log is not None:
        routing_log[i] = idx
    sub = _attend(layer, x[:, idx], cos[:, idx], sin[:, idx], cache, i, None, proj)
    return layer.merge(x, idx, sub, selected, weight)


def forward_step(
    model,
    embeds: torch.Tensor,
    position_ids: torch.Tensor | None,
    cache: StaticKVCache,
    frame_positions: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    routing_log: dict | None = None,
    *,
    weights: StepWeights | None = None,
    start: int | None = None,
) -> torch.Tensor:
    """Run the decoder of a :class:`~flownar.models.FlowNarForCausalLM` on new token embeddings ``(1, n, H)`` at
    ``position_ids`` ``(1, n)``; keys/values go into ``cache``. Returns the final-norm hidden states ``(1, n, H)``.

    ``frame_positions`` ``(F, N)``: positions of the vision tokens among the new ones (MoD routing only).
    ``mask``: an additive ``(n, cached + n)`` mask for the unrouted layers instead of "every cached token, the new
    ones causally" (the oracle feeds a whole stream at once with its DCM mask this way).
    ``routing_log``: if given, ``routing_log[layer] = indices of the new tokens that MoD-routed layer computed``.
    ``weights``: the model's :class:`StepWeights` (fused projections, RoPE table); without it the layers' own
    modules are called. ``start``: the new tokens sit at positions ``start .. start + n - 1`` (then
    ``position_ids`` may be None and the RoPE table is sliced instead of computed)."""
    dec = model.model
    n = embeds.shape[1]
    key_rope = None
    if model.config.contiguous_positions:  # positions = cache slots: a table from 0, the queries at the tail
        start = cache.lengths[0]
        if position_ids is not None or mask is not None or len(set(cache.lengths)) != 1:
            raise ValueError("contiguous positions: the new tokens sit at the cache's end (no position_ids or mask)")
        key_rope = weights.rope(embeds, 0, start + n) if weights is not None else _rope_from(dec, embeds, start + n)
        cos, sin = key_rope[0][:, start:], key_rope[1][:, start:]
    elif start is not None and weights is not None:
        cos, sin = weights.rope(embeds, start, n)
    else:
        if position_ids is None:
            position_ids = torch.arange(start, start + n, device=embeds.device)[None]
        cos, sin = dec.rotary_emb(embeds, position_ids)
    projections = weights.layers if weights is not None else [_Projections(layer, False) for layer in dec.layers]
    # all layers of a system without routing hold the same number of tokens: build the mask once for the step
    shared = mask
    if shared is None and n > 1 and len(set(cache.lengths)) == 1:
        shared = tail_causal_mask(n, cache.lengths[0] + n, embeds.dtype, embeds.device)
    if (
        weights is not None
        and weights.compiled is not None
        and (key_rope is None or weights.compiled.handles_contiguous)
        and mask is None
        and routing_log is None
        and len(set(cache.lengths)) == 1
    ):
        return weights.compiled(embeds, cos, sin, cache)
    x = embeds
    for i, (layer, proj) in enumerate(zip(dec.layers, projections)):
        if getattr(layer, "router", None) is not None:
            x = _routed(layer, x, cos, sin, cache, i, frame_positions, routing_log, proj)
        else:
            m = shared if shared is not None and cache.lengths[i] + n == shared.shape[1] else None
            x = _attend(layer, x, cos, sin, cache, i, m, proj, key_rope)
    return _rms_norm(dec.norm, x)


def forward_batch(
    model, steps: list[tuple[torch.Tensor, int, StaticKVCache]], weights: StepWeights | None = None
) -> list[torch.Tensor]:
    """Decoder steps of several streams in one pass: ``steps`` = per stream ``(embeds (1, n, H), start, cache)``
    (positions ``start, ...``; each stream its own cache). Returns each stream's final-norm hidden states
    ``(1, n, H)``, equal to :func:`forward_step` of that stream alone up to float rounding (tested).

    The streams' new tokens are stacked along the sequence, so every projection and MLP is one matmul over all of
    them (with a dozen streams, a weight read from cache serves a hundred rows instead of ten); attention stays per
    stream, on its own cache. (Measured: the streams' caches as rows of one padded buffer, attended with one sdpa,
    were no faster on CPU than this per-stream loop, so the loop stays.) Systems without routing (not
    VideoLLM-MoD)."""
    dec = model.model
    if any(getattr(layer, "router", None) is not None for layer in dec.layers):
        raise NotImplementedError("MoD's routed layers run one stream at a time")
    ns = [e.shape[1] for e, _, _ in steps]
    x = torch.cat([e for e, _, _ in steps], dim=1)  # (1, N, H)
    device = x.device
    key_rope = None
    if model.config.contiguous_positions:  # positions = cache slots (each stream's new tokens at its end)
        steps = [(e, c.lengths[0], c) for e, _, c in steps]
        m = max(s + n for (_, s, _), n in zip(steps, ns))
        key_rope = weights.rope(x, 0, m) if weights is not None else _rope_from(dec, x, m)
        cos, sin = (torch.cat([t[:, s : s + n] for (_, s, _), n in zip(steps, ns)], dim=1) for t in key_rope)
    else:
        pos = torch.cat([torch.arange(s, s + n, device=device) for (_, s, _), n in zip(steps, ns)])[None]  # (1, N)
        cos, sin = dec.rotary_emb(x, pos)  # (1, N, hd)
    projections = weights.layers if weights is not None else [_Projections(layer, False) for layer in dec.layers]
    starts = []
    for (_, _, cache), n in zip(steps, ns):
        if len(set(cache.lengths)) != 1:
            raise ValueError(f"forward_batch: a cache with layer lengths {sorted(set(cache.lengths))}")
        starts.append(cache.lengths[0])
        for i in range(len(cache.keys)):
            cache.reserve(i, cache.lengths[0] + n)
    masks = [None if n == 1 else tail_causal_mask(n, s + n, x.dtype, device) for s, n in zip(starts, ns)]
    for i, (layer, proj) in enumerate(zip(dec.layers, projections)):
        streams = [(c.keys[i], c.values[i], s, n, m) for (_, _, c), s, n, m in zip(steps, starts, ns, masks)]
        x = _layer(layer, proj, x, cos, sin, streams, key_rope)
    for (_, _, cache), s, n in zip(steps, starts, ns):
        cache.lengths = [s + n] * len(cache.keys)
    return list(_rms_norm(dec.norm, x).split(ns, dim=1))
