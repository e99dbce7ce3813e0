"""One Llama decoder layer on a stream's new tokens, written once, with the attention passed in.

:func:`layer_forward` is the layer: norms, the fused projections (:class:`Projections`), RoPE, the MLP. Its
attention is an argument: :func:`stream_attention` (the eager, compiled and batched steps: each stream's new keys
and values written at the end of its cache, attention over ``[0, start + n)``) or :func:`static_attention` (the
captured step: new keys and values at a tensor of slots, attention over the whole capacity under a mask, or
flash-attn's kernel). It does exactly what transformers' Llama layer does with sdpa attention (the parity tests
hold the engine's logits to the teacher-forced forward).

Contiguous positions (streaming-vlm: every token's position is its index in the cache, re-indexed after each
eviction, as StreamingVLM): the cache holds un-rotated keys, and each step rotates the cached keys at their slots
(0, 1, ...) and its queries at theirs. One extra elementwise pass over a bounded window per layer; exact, with no
rotation error piling up over re-indexings.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..models.dcm_attention import gqa_sdpa, rotate


def tail_causal_mask(n: int, total: int, dtype, device) -> torch.Tensor:
    """Additive ``(n, total)`` mask for ``n`` new queries after ``total - n`` cached keys: every cached key is
    visible, the new ones causally."""
    mask = torch.zeros(n, total, dtype=dtype, device=device)
    mask[:, total - n :] = torch.full((n, n), float("-inf"), dtype=dtype, device=device).triu(1)
    return mask


class Projections:
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


def _linear(mod, x: torch.Tensor) -> torch.Tensor:
    """A plain ``nn.Linear`` is called functionally (no module-call overhead); anything else (LoRA) as a module."""
    if type(mod) is nn.Linear:
        return F.linear(x, mod.weight, mod.bias)
    return mod(x)


def rms_norm(norm, x: torch.Tensor) -> torch.Tensor:
    """LlamaRMSNorm in one fused op: weight * (x / rms(x)) computed in float32, cast back before the weight."""
    if x.dtype == torch.float32:
        return norm.weight * F.rms_norm(x, (x.shape[-1],), eps=norm.variance_epsilon)
    return norm.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=norm.variance_epsilon).to(x.dtype)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of ``x`` (1, n, heads, hd): ``x cos + rotate_half(x) sin`` with cos/sin (1, n, hd)."""
    half = x.shape[-1] // 2
    rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, :, None] + rot * sin[:, :, None]


#: attention of a layer: (q (1, heads, N, hd) rotated, k (1, kv_heads, N, hd) rotated or not, v (1, kv_heads, N, hd))
#: -> (1, N, heads, hd); it writes the new keys and values into its cache
Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def layer_forward(
    layer, proj: Projections, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: Attention, rotate_keys=True
) -> torch.Tensor:
    """One Llama decoder layer on new tokens ``x`` (1, N, H) at the rotary ``cos``/``sin`` (1, N, hd): norms,
    projections and the MLP on all N rows at once, the attention by ``attend``. ``rotate_keys=False`` (contiguous
    positions): the new keys go to the cache un-rotated (the attention rotates every cached key at its slot). A
    pure function of tensors: the cache bookkeeping is the attention's and the caller's."""
    mlp, hd = layer.mlp, layer.self_attn.head_dim
    N = x.shape[1]
    h = rms_norm(layer.input_layernorm, x)
    q, k, v = proj.qkv(h)  # (1, N, q_out), (1, N, kv_out) x 2
    heads = proj.q_out // hd
    if rotate_keys:  # rotate q and k together: (1, N, heads + kv_heads, hd)
        qk = rope(torch.cat((q, k), dim=-1).view(1, N, -1, hd), cos, sin)
    else:  # the queries only; keys are cached un-rotated
        qk = torch.cat((rope(q.view(1, N, -1, hd), cos, sin), k.view(1, N, -1, hd)), dim=2)
    qk, v = qk.transpose(1, 2), v.view(1, N, -1, hd).transpose(1, 2)  # (1, heads + kv, N, hd), (1, kv, N, hd)
    o = attend(qk[:, :heads], qk[:, heads:], v)  # (1, N, heads, hd)
    x = x + proj.o(o.reshape(1, N, -1))
    h = rms_norm(layer.post_attention_layernorm, x)
    gate, up = proj.gate_up(h)
    return x + proj.down(mlp.act_fn(gate) * up)


def stream_attention(
    attn, streams: list[tuple[torch.Tensor, torch.Tensor, int, int, torch.Tensor | None]], key_rope=None
) -> Attention:
    """The eager step's attention for one or more streams whose new tokens lie one after the other along N.

    ``streams``: per stream ``(keys, values, start, n, mask)``: its ``n`` new tokens' keys/values are written into
    its buffers (1, kv_heads, capacity, hd) at ``[start, start + n)`` and attend to ``[0, start + n)`` of them
    (``mask``: additive (n, start + n), or None = every earlier token, the new ones causally); one sdpa per stream.
    ``key_rope``: contiguous positions: (cos, sin) (1, M, hd) of positions 0..M-1, every cached key rotated at its
    slot."""

    def attend(q, k, v):
        outs, a = [], 0
        for keys, values, start, n, mask in streams:
            keys[:, :, start : start + n] = k[:, :, a : a + n]  # (1, kv_heads, n, hd)
            values[:, :, start : start + n] = v[:, :, a : a + n]
            K, V = keys[:, :, : start + n], values[:, :, : start + n]  # (1, kv_heads, start + n, hd) views
            if key_rope is not None:  # every cached key at its slot
                K = rotate(K, key_rope[0][:, : start + n], key_rope[1][:, : start + n])
            if mask is None and n > 1:
                mask = tail_causal_mask(n, start + n, q.dtype, q.device)
            q_s = q[:, :, a : a + n]  # (1, heads, n, hd)
            outs.append(gqa_sdpa(q_s, K, V, mask, attn.scaling))  # (1, heads, n, hd)
            a += n
        o = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)  # (1, heads, N, hd)
        return o.transpose(1, 2)

    return attend


def static_attention(attn, keys, values, slots, mask, key_rope=None, flash=None) -> Attention:
    """The captured step's attention for one stream with static shapes: the ``n`` new tokens' keys/values go to
    ``slots`` (n,) of the full-capacity buffers (1, kv_heads, capacity, hd) and attend to all of them under ``mask``
    (n, capacity) (additive: 0 where visible). ``key_rope``: contiguous positions: (cos, sin) (1, capacity, hd) of
    slots 0..capacity-1, the whole buffer rotated. ``flash``: flash-attn's ``flash_attn_with_kvcache``; ``mask``
    is then the cached length after the step, (1,) int32."""

    def attend(q, k, v):
        keys.index_copy_(2, slots, k)
        values.index_copy_(2, slots, v)
        K = keys if key_rope is None else rotate(keys, *key_rope)  # (1, kv_heads, capacity, hd)
        if flash is not None:  # flash-attn's layout: (batch, seq, heads, hd) views of the same buffers
            return flash(
                q.transpose(1, 2),
                K.transpose(1, 2),
                values.transpose(1, 2),
                cache_seqlens=mask,
                softmax_scale=attn.scaling,
                causal=True,
            )  # (1, n, heads, hd)
        return gqa_sdpa(q, K, values, mask, attn.scaling).transpose(1, 2)  # (1, n, heads, hd)

    return attend
