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
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


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
    ):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.kv_heads, self.head_dim, self.growth = kv_heads, head_dim, growth
        self.device, self.dtype = torch.device(device or "cpu"), dtype
        self.keys = [self._empty(capacity) for _ in range(num_layers)]
        self.values = [self._empty(capacity) for _ in range(num_layers)]
        self.lengths = [0] * num_layers
        self.reallocations = 0

    @classmethod
    def for_model(cls, config, *, capacity: int = 1024, device=None, dtype=torch.float32) -> "StaticKVCache":
        return cls(
            config.num_hidden_layers,
            config.num_key_value_heads,
            config.attention_head_dim,
            capacity=capacity,
            device=device,
            dtype=dtype,
        )

    # the KVStore interface (what the Narrator uses)
    def forward(
        self, model, embeds: torch.Tensor, position_ids: torch.Tensor, frame_positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Run the decoder on new tokens, caching them here (:func:`forward_step`)."""
        return forward_step(model, embeds, position_ids, self, frame_positions)

    def delete(self, keep: np.ndarray) -> None:
        self.compact(keep)

    def _empty(self, capacity: int) -> torch.Tensor:
        return torch.empty(1, self.kv_heads, capacity, self.head_dim, device=self.device, dtype=self.dtype)

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
    """What each cached token is (kind code, segment id, narration id): numpy arrays that grow and compact with the
    cache, so DCM's deletions are vectorised rather than Python loops over the cache."""

    KINDS = ("other", "frames", "memory", "narration")

    def __init__(self, capacity: int = 1024):
        self.kind = np.zeros(capacity, np.int8)
        self.segment = np.full(capacity, -1, np.int64)
        self.narration = np.full(capacity, -1, np.int64)
        self.n = 0

    def add(self, kinds: list[str], segments: list[int], narrations: list[int]) -> None:
        m = len(kinds)
        if self.n + m > self.kind.size:
            cap = max(self.n + m, 2 * self.kind.size)
            for name in ("kind", "segment", "narration"):
                old = getattr(self, name)
                new = np.full(cap, -1 if name != "kind" else 0, old.dtype)
                new[: self.n] = old[: self.n]
                setattr(self, name, new)
        sl = slice(self.n, self.n + m)
        self.kind[sl] = [self.KINDS.index(k) for k in kinds]
        self.segment[sl] = segments
        self.narration[sl] = narrations
        self.n += m

    def keep_mask(self, *, segment: int | None = None, narration: int | None = None) -> np.ndarray:
        keep = np.ones(self.n, bool)
        if segment is not None:
            keep &= self.segment[: self.n] != segment
        if narration is not None:
            keep &= self.narration[: self.n] != narration
        return keep

    def compact(self, keep: np.ndarray) -> None:
        m = int(keep.sum())
        for name in ("kind", "segment", "narration"):
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
        self, model, embeds: torch.Tensor, position_ids: torch.Tensor, frame_positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        from .models.hf_compat import CACHE_ARG

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


def make_kv_store(engine: str, config, *, capacity: int = 2048, device=None, dtype=torch.float32):
    """A fresh key/value store: ``"static"`` (:class:`StaticKVCache`, the fast path) or ``"hf"``
    (:class:`HFCacheStore`). Both implement ``forward(model, embeds, position_ids, frame_positions) -> hidden``,
    ``delete(keep)``, ``used_bytes()`` and ``allocated_bytes()``."""
    if engine == "static":
        return StaticKVCache.for_model(config, capacity=capacity, device=device, dtype=dtype)
    if engine == "hf":
        return HFCacheStore(config)
    raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")


def tail_causal_mask(n: int, total: int, dtype, device) -> torch.Tensor:
    """Additive ``(n, total)`` mask for ``n`` new queries after ``total - n`` cached keys: every cached key is
    visible, the new ones causally."""
    mask = torch.zeros(n, total, dtype=dtype, device=device)
    mask[:, total - n :] = torch.full((n, n), float("-inf"), dtype=dtype, device=device).triu(1)
    return mask


def _linear(mod, x: torch.Tensor) -> torch.Tensor:
    """A plain ``nn.Linear`` is called functionally (no module-call overhead); anything else (LoRA) as a module."""
    if type(mod) is nn.Linear:
        return F.linear(x, mod.weight, mod.bias)
    return mod(x)


def _rms_norm(norm, x: torch.Tensor) -> torch.Tensor:
    """LlamaRMSNorm in one fused op: weight * (x / rms(x)) computed in float32, cast back before the weight."""
    return norm.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=norm.variance_epsilon).to(x.dtype)


def _rope(qk: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of queries and keys stacked on the head dim: ``x cos + rotate_half(x) sin``."""
    half = qk.shape[-1] // 2
    rot = torch.cat((-qk[..., half:], qk[..., :half]), dim=-1)
    return qk * cos[:, None] + rot * sin[:, None]


def _attend(
    layer,
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    cache: StaticKVCache,
    i: int,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """One Llama decoder layer on new tokens ``x`` (1, n, H), caching their keys/values in layer ``i``."""
    attn, mlp = layer.self_attn, layer.mlp
    n, hd = x.shape[1], attn.head_dim
    h = _rms_norm(layer.input_layernorm, x)
    q = _linear(attn.q_proj, h).view(1, n, -1, hd).transpose(1, 2)  # (1, heads, n, hd)
    k = _linear(attn.k_proj, h).view(1, n, -1, hd).transpose(1, 2)  # (1, kv_heads, n, hd)
    v = _linear(attn.v_proj, h).view(1, n, -1, hd).transpose(1, 2)
    qk = _rope(torch.cat((q, k), dim=1), cos, sin)
    q, k = qk[:, : q.shape[1]], qk[:, q.shape[1] :]
    K, V = cache.append(i, k, v)  # (1, kv_heads, cached + n, hd) views
    if mask is None and n > 1:
        mask = tail_causal_mask(n, K.shape[2], q.dtype, q.device)
    o = F.scaled_dot_product_attention(q, K, V, attn_mask=mask, scale=attn.scaling, enable_gqa=q.shape[1] != K.shape[1])
    x = x + _linear(attn.o_proj, o.transpose(1, 2).reshape(1, n, -1))
    h = _rms_norm(layer.post_attention_layernorm, x)
    return x + _linear(mlp.down_proj, mlp.act_fn(_linear(mlp.gate_proj, h)) * _linear(mlp.up_proj, h))


def _routed(layer, x, cos, sin, cache, i, frame_positions, routing_log):
    """VideoLLM-MoD's routed layer in streaming: only text tokens and each frame's top vision tokens are computed
    (and cached); their updates are scaled by the router weight. Routing and merging are the layer's own
    (``FlowNarDecoderLayer.route`` / ``merge``, shared with training); only the attention is this engine's."""
    idx, selected, weight = layer.route(x, frame_positions)
    if routing_log is not None:
        routing_log[i] = idx
    sub = _attend(layer, x[:, idx], cos[:, idx], sin[:, idx], cache, i, None)
    return layer.merge(x, idx, sub, selected, weight)


def forward_step(
    model,
    embeds: torch.Tensor,
    position_ids: torch.Tensor,
    cache: StaticKVCache,
    frame_positions: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    routing_log: dict | None = None,
) -> torch.Tensor:
    """Run the decoder of a :class:`~flownar.models.FlowNarForCausalLM` on new token embeddings ``(1, n, H)`` at
    ``position_ids`` ``(1, n)``; keys/values go into ``cache``. Returns the final-norm hidden states ``(1, n, H)``.

    ``frame_positions`` ``(F, N)``: positions of the vision tokens among the new ones (MoD routing only).
    ``mask``: an additive ``(n, cached + n)`` mask for the unrouted layers instead of "every cached token, the new
    ones causally" (the oracle feeds a whole stream at once with its DCM mask this way).
    ``routing_log``: if given, ``routing_log[layer] = indices of the new tokens that MoD-routed layer computed``."""
    dec = model.model
    n = embeds.shape[1]
    cos, sin = dec.rotary_emb(embeds, position_ids)
    # all layers of a system without routing hold the same number of tokens: build the mask once for the step
    shared = mask
    if shared is None and n > 1 and len(set(cache.lengths)) == 1:
        shared = tail_causal_mask(n, cache.lengths[0] + n, embeds.dtype, embeds.device)
    x = embeds
    for i, layer in enumerate(dec.layers):
        if getattr(layer, "router", None) is not None:
            x = _routed(layer, x, cos, sin, cache, i, frame_positions, routing_log)
        else:
            m = shared if shared is not None and cache.lengths[i] + n == shared.shape[1] else None
            x = _attend(layer, x, cos, sin, cache, i, m)
    return _rms_norm(dec.norm, x)
