"""The decoder step of a stream (all layers and the final norm) on its key/value cache: eager
(:func:`forward_step`), several streams at once (:func:`forward_batch`), compiled (:class:`CompiledStep`) and with
static shapes for CUDA graphs (:class:`CapturedStep`). All run :func:`flownar.engine.layer.layer_forward`.

:func:`forward_step` calls the model's own modules (norms, projections, MLP, rotary embedding; LoRA layers work
unchanged) and does exactly what transformers' Llama forward does with sdpa attention: a test holds its logits to
the teacher-forced forward. Differences are bookkeeping only: no mask factory, no per-call cache objects, one
additive mask shared by all layers of a step (none for single-token steps). VideoLLM-MoD's routed layers cache
only the tokens they compute, so each layer keeps its own length.
"""

from __future__ import annotations

import torch

from .layer import Projections, layer_forward, rms_norm, static_attention, stream_attention, tail_causal_mask


class CompiledStep:
    """The decoder step (all layers and the final norm) as one ``torch.compile`` graph (inductor), over the static
    cache. Eager PyTorch pays a dispatch per op (on this project's CPUs about 5-10 us, about 25 ops per layer), which
    for a model this small costs several times the arithmetic; compiled, the step is a few fused kernels around the
    matmuls. It runs :func:`~flownar.engine.layer.layer_forward`, the eager step's own code, so the two differ
    only by float rounding (tested).

    Used for systems without routing (MoD's routed layers select tokens data-dependently) on fused weights. Shapes
    are dynamic (the cached length and the number of new tokens vary); dynamo still specialises a few cases (the
    first step, where nothing is cached; single-token steps; the first RoPE block), so about four graphs are
    compiled over the first frames (70-90 s on this project's CPU in all, then cached on disk by inductor), and
    again for each model (the weights are constants of the graph)."""

    def __init__(self, model, weights):
        self.model, self.weights = model, weights
        self.fn = torch.compile(self._step, dynamic=True, fullgraph=True)

    handles_contiguous = False  # contiguous positions (streaming-vlm) stay on the eager step

    @staticmethod
    def unsupported(model, weights) -> str | None:
        """Why this model cannot run compiled (None if it can)."""
        if model.config.contiguous_positions:
            return "contiguous positions re-rotate the cached keys at every step (not built into this step)"
        return static_step_unsupported(model, weights)

    def _step(self, x, cos, sin, keys: list[torch.Tensor], values: list[torch.Tensor], start: int) -> torch.Tensor:
        dec = self.model.model
        n = x.shape[1]
        for layer, proj, K, V in zip(dec.layers, self.weights.layers, keys, values):
            x = layer_forward(layer, proj, x, cos, sin, stream_attention(layer.self_attn, [(K, V, start, n, None)]))
        return rms_norm(dec.norm, x)

    def __call__(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache) -> torch.Tensor:
        start, n = cache.lengths[0], x.shape[1]
        for i in range(len(cache.keys)):
            cache.reserve(i, start + n)
        out = self.fn(x, cos, sin, cache.keys, cache.values, start)
        cache.lengths = [start + n] * len(cache.keys)
        return out


def static_step_unsupported(model, weights) -> str | None:
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
    (a silent frame, the frame after a narration, speaking, one decoded token): a handful of graphs per set of
    cache buffers. A graph is keyed on the address of every key and value buffer it bakes in, and the graphs of
    other buffers are dropped when the cache changes (a new video, or a doubling), so a graph is never replayed
    into memory that is not its cache; all graphs share one memory pool. Systems without routing (not
    VideoLLM-MoD), fused weights.

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

    def __init__(self, model, weights, graphs: bool | None = None):
        self.model, self.weights = model, weights
        self.contiguous = bool(model.config.contiguous_positions)
        param = next(model.parameters())
        device = param.device
        self.graphs = device.type == "cuda" if graphs is None else graphs
        half = param.dtype in (torch.bfloat16, torch.float16)
        self.flash = flash_kvcache() if device.type == "cuda" and half else None
        self._captured: dict[tuple, tuple] = {}
        self._buffers: tuple = ()  # the cache buffers the graphs in ``_captured`` write into
        self._pool = None  # one memory pool shared by every graph of this step (not one per graph)
        self.captures = 0  # graphs captured so far (for benchmarks and tests)

    @staticmethod
    def unsupported(model, weights) -> str | None:
        """Why this model cannot run captured (None if it can): the compiled step's conditions, contiguous
        positions allowed."""
        return static_step_unsupported(model, weights)

    def _step(
        self, x, cos, sin, keys: list[torch.Tensor], values: list[torch.Tensor], slots, mask, *key_rope
    ) -> torch.Tensor:
        dec = self.model.model
        for layer, proj, K, V in zip(dec.layers, self.weights.layers, keys, values):
            attend = static_attention(layer.self_attn, K, V, slots, mask, key_rope or None, self.flash)
            x = layer_forward(layer, proj, x, cos, sin, attend, rotate_keys=not key_rope)
        return rms_norm(dec.norm, x)

    def __call__(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache) -> torch.Tensor:
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
            # a graph bakes in the address of every key and value buffer it writes: it may be replayed only on
            # those very buffers. Another cache (the next video, or this one after its buffers doubled) drops
            # every graph of the previous buffers, which are freed or about to be
            buffers = tuple(t.data_ptr() for t in (*cache.keys, *cache.values))
            if buffers != self._buffers:
                self._captured.clear()
                self._buffers = buffers
            key = (n, cap, x.dtype, buffers)
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

    def _capture(self, args, cache):
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
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        with torch.cuda.graph(graph, pool=self._pool):
            out = self._step(x, cos, sin, cache.keys, cache.values, *rest)
        self.captures += 1
        return graph, static, out


def flash_kvcache():
    """flash-attn's ``flash_attn_with_kvcache`` when the package is installed and loads, else None."""
    try:
        from flash_attn import flash_attn_with_kvcache
    except Exception:  # not installed, or built for another torch / CUDA: sdpa instead
        return None
    return flash_attn_with_kvcache


def _rope_from(dec, x: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (1, m, hd) of positions 0..m-1 from the decoder's rotary embedding."""
    return dec.rotary_emb(x, torch.arange(m, device=x.device)[None])


def _attend(layer, x, cos, sin, cache, i: int, mask, proj: Projections, key_rope=None) -> torch.Tensor:
    """:func:`layer_forward` on layer ``i`` of one stream's ``cache``: make room, run it, count the new tokens."""
    start, n = cache.lengths[i], x.shape[1]
    cache.reserve(i, start + n)
    attend = stream_attention(layer.self_attn, [(cache.keys[i], cache.values[i], start, n, mask)], key_rope)
    x = layer_forward(layer, proj, x, cos, sin, attend, rotate_keys=key_rope is None)
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
    cache,
    frame_positions: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    routing_log: dict | None = None,
    *,
    weights=None,
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
    projections = weights.layers if weights is not None else [Projections(layer, False) for layer in dec.layers]
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
    return rms_norm(dec.norm, x)


def forward_batch(model, steps: list[tuple[torch.Tensor, int, object]], weights=None) -> list[torch.Tensor]:
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
    projections = weights.layers if weights is not None else [Projections(layer, False) for layer in dec.layers]
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
        attend = stream_attention(layer.self_attn, streams, key_rope)
        x = layer_forward(layer, proj, x, cos, sin, attend, rotate_keys=key_rope is None)
    for (_, _, cache), s, n in zip(steps, starts, ns):
        cache.lengths = [s + n] * len(cache.keys)
    return list(rms_norm(dec.norm, x).split(ns, dim=1))
