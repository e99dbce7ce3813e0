"""Exact DCM attention without an L x L mask: each block of queries attends to the keys it can see, gathered.

With DCM the visible set of a query changes only at expiry events (a narration's EOS), so the sequence splits into
query blocks ``[a, b)`` inside which visibility is plain causal attention over a fixed set of earlier keys (those
whose expiry is after ``a``) plus the block itself. Each block gathers those keys and runs sdpa with a small
tail-causal mask. The result equals masked attention with ``visibility(until)`` (tested), at a cost of
sum(block x visible) instead of L^2, and without materialising an L x L mask (which on CPU made the DCM systems
train 5-12x slower than VideoLLM-online).

Contiguous positions (streaming-vlm, StreamingVLM's re-indexing after evictions): q and k arrive un-rotated
(the model runs with all position ids 0), and each block rotates its gathered keys at 0, 1, ..., m - 1 and its
queries at their indices among them, which is what the streaming engine does with the keys it caches un-rotated
(:func:`contiguous_reference` is the per-query definition the tests hold this to).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dcm_blocks(until: torch.Tensor) -> list[tuple[int, int, torch.Tensor]]:
    """``(a, b, keys)`` per query block: ``keys`` = the earlier visible positions (ascending), then ``a..b-1``."""
    L = until.shape[0]
    cuts = sorted({0, L, *[int(u) for u in until.unique() if 0 < int(u) < L]})
    blocks = []
    for a, b in zip(cuts, cuts[1:]):
        j = torch.arange(a)
        before = j[until[:a] > a]  # expiry after a: visible to every query of the block (no event inside it)
        blocks.append((a, b, torch.cat([before, torch.arange(a, b)])))
    return blocks


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Llama's rotary embedding of ``x`` (B, H, n, d) at the positions whose cos/sin are (1, n, d)."""
    half = x.shape[-1] // 2
    rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None] + rot * sin[:, None]


FOLD_GQA_ON = ("cuda",)  # devices on which grouped-query attention under a mask is folded (see gqa_sdpa)


def gqa_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask, scale: float | None = None) -> torch.Tensor:
    """sdpa with grouped-query heads: q (B, H, n, d), k/v (B, H_kv, m, d), ``mask`` additive (n, m) or None ->
    (B, H, n, d); query head h reads key/value head h // (H / H_kv), as ``enable_gqa`` and Llama's repeat_kv.

    On CUDA no fused sdpa kernel takes grouped-query heads *and* a mask (flash refuses any mask; the
    memory-efficient kernel refuses H != H_kv), so ``enable_gqa`` with a mask runs the math kernel. With a mask on
    a device in :data:`FOLD_GQA_ON` the G query heads that share a key/value head are therefore folded into the
    query length: q becomes (B, H_kv, G * n, d), row ``j * n + i`` being head ``kv * G + j``'s query ``i``, and the
    mask is repeated G times along its rows. Same attention, equal heads, no copy of the keys or values: the
    memory-efficient kernel takes it. Elsewhere (the CPU's kernel takes GQA with a mask) ``enable_gqa``."""
    B, H, n, d = q.shape
    q_in, mask_in, gqa = _sdpa_inputs(q, k, mask)
    o = F.scaled_dot_product_attention(q_in, k, v, attn_mask=mask_in, scale=scale, enable_gqa=gqa)
    # folded: (B, kv, G*n, d) -> (B, H, n, d); reshape, not view: a kernel may return a transposed layout
    return o if q_in is q else o.reshape(B, H, n, d)


def _sdpa_inputs(q: torch.Tensor, k: torch.Tensor, mask):
    """(query, mask, enable_gqa) that :func:`gqa_sdpa` hands to sdpa: folded under a mask on a device in
    :data:`FOLD_GQA_ON`, else as given."""
    B, H, n, d = q.shape
    kv = k.shape[1]
    if H == kv:
        return q, mask, False
    if mask is None or mask.dim() != 2 or q.device.type not in FOLD_GQA_ON:
        return q, mask, True
    g = H // kv
    return q.reshape(B, kv, g * n, d), mask.repeat(g, 1), False  # head kv*G + j, query i -> row j*n + i


def sdpa_backend(q: torch.Tensor, k: torch.Tensor, mask) -> str | None:
    """The sdpa kernel torch picks for :func:`gqa_sdpa` on these inputs ("FLASH_ATTENTION", "EFFICIENT_ATTENTION",
    "CUDNN_ATTENTION", "MATH", ...), from torch's own dispatcher (the private ``torch._fused_sdp_choice``: None
    where this torch lacks it)."""
    from torch.nn.attention import SDPBackend

    choose = getattr(torch, "_fused_sdp_choice", None)
    if choose is None:
        return None
    q, mask, gqa = _sdpa_inputs(q, k, mask)
    try:
        index = int(choose(q, k, k, mask, 0.0, False, scale=None, enable_gqa=gqa))
    except (RuntimeError, TypeError):  # another signature in another torch
        return None
    names = {int(getattr(SDPBackend, x)): x for x in dir(SDPBackend) if x.isupper()}
    return names.get(index, str(index))


def dcm_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, blocks, scale: float | None = None, rope=None
) -> torch.Tensor:
    """q (B, H, L, d), k/v (B, H_kv, L, d) -> (B, H, L, d): attention restricted to each block's visible keys.
    ``rope``: (cos, sin) (1, M, d) of positions 0..M-1 for contiguous positions (q, k un-rotated), else None."""
    outs = []
    for a, b, keys in blocks:
        keys = keys.to(k.device)
        n, m = b - a, keys.numel()
        mask = torch.zeros(n, m, dtype=q.dtype, device=q.device)  # (n, m): all earlier keys, the block causally
        mask[:, m - n :] = torch.full((n, n), float("-inf"), dtype=q.dtype, device=q.device).triu(1)
        qb, kb = q[:, :, a:b], k.index_select(2, keys)
        if rope is not None:  # the visible keys at 0..m-1, the block's queries at m-n..m-1
            cos, sin = rope
            qb = rotate(qb, cos[:, m - n : m], sin[:, m - n : m])
            kb = rotate(kb, cos[:, :m], sin[:, :m])
        outs.append(gqa_sdpa(qb, kb, v.index_select(2, keys), mask, scale))  # (B, H, n, d)
    return torch.cat(outs, dim=2)


def contiguous_reference(q, k, v, until: torch.Tensor, rope, scale: float | None = None) -> torch.Tensor:
    """The definition, one query at a time: query i sees ``V(i) = {j <= i : until[j] > i}``, and every token takes
    its index in ``V(i)`` as its position (the query the last one). q (B, H, L, d), k/v (B, H_kv, L, d)
    un-rotated. Slow; for tests."""
    cos, sin = rope
    groups = q.shape[1] // k.shape[1]
    outs = []
    for i in range(q.shape[2]):
        vis = [j for j in range(i + 1) if int(until[j]) > i]
        m = len(vis)
        qi = rotate(q[:, :, i : i + 1], cos[:, m - 1 : m], sin[:, m - 1 : m])
        ki = rotate(k[:, :, vis], cos[:, :m], sin[:, :m]).repeat_interleave(groups, dim=1)
        w = torch.softmax((qi @ ki.transpose(-1, -2)) * (scale or q.shape[-1] ** -0.5), dim=-1)
        outs.append(w @ v[:, :, vis].repeat_interleave(groups, dim=1))
    return torch.cat(outs, dim=2)


def _attention(
    module,
    query,
    key,
    value,
    attention_mask,
    dropout: float = 0.0,
    scaling: float | None = None,
    dcm_blocks=None,
    dcm_rope=None,
    dcm_kv_out: dict | None = None,
    **kwargs,
):
    """transformers attention function ``flownar_dcm``: block attention when ``dcm_blocks`` is given, sdpa else.
    ``dcm_kv_out``: a dict that receives each layer's keys and values as attention got them (layer index ->
    (k, v), (B, H_kv, L, d); un-rotated with contiguous positions): the oracle's look-ahead continues from them."""
    if dcm_kv_out is not None:
        dcm_kv_out[module.layer_idx] = (key.detach(), value.detach())
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if dcm_blocks is None:
        if dcm_rope is not None:
            raise ValueError("contiguous positions need the block attention (expiry positions)")
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if dropout:
        raise NotImplementedError("attention dropout is not supported by the DCM block attention")
    out = dcm_sdpa(query, key, value, dcm_blocks, scale=scaling, rope=dcm_rope)  # (B, H, L, d)
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Register ``flownar_dcm`` with transformers' attention and mask interfaces; returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register("flownar_dcm", _attention)
    AttentionMaskInterface.register("flownar_dcm", sdpa_mask)
    return "flownar_dcm"
