"""Exact DCM attention without an L x L mask: each block of queries attends to the keys it can see, gathered.

With DCM the visible set of a query changes only at expiry events (a narration's EOS), so the sequence splits into
query blocks ``[a, b)`` inside which visibility is plain causal attention over a fixed set of earlier keys (those
whose expiry is after ``a``) plus the block itself. Each block gathers those keys and runs sdpa with a small
tail-causal mask. The result equals masked attention with ``visibility(until)`` (tested), at a cost of
sum(block x visible) instead of L^2, and without materialising an L x L mask (which on CPU made the DCM systems
train 5-12x slower than VideoLLM-online).
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


def dcm_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, blocks, scale: float | None = None) -> torch.Tensor:
    """q (B, H, L, d), k/v (B, H_kv, L, d) -> (B, H, L, d): attention restricted to each block's visible keys."""
    gqa = q.shape[1] != k.shape[1]
    outs = []
    for a, b, keys in blocks:
        keys = keys.to(k.device)
        n, m = b - a, keys.numel()
        mask = torch.zeros(n, m, dtype=q.dtype, device=q.device)  # (n, m): all earlier keys, the block causally
        mask[:, m - n :] = torch.full((n, n), float("-inf"), dtype=q.dtype, device=q.device).triu(1)
        outs.append(
            F.scaled_dot_product_attention(
                q[:, :, a:b],
                k.index_select(2, keys),
                v.index_select(2, keys),
                attn_mask=mask,
                scale=scale,
                enable_gqa=gqa,
            )
        )  # (B, H, n, d)
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
    **kwargs,
):
    """transformers attention function ``flownar_dcm``: block attention when ``dcm_blocks`` is given, sdpa else."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if dcm_blocks is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if dropout:
        raise NotImplementedError("attention dropout is not supported by the DCM block attention")
    out = dcm_sdpa(query, key, value, dcm_blocks, scale=scaling)  # (B, H, L, d)
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Register ``flownar_dcm`` with transformers' attention and mask interfaces; returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register("flownar_dcm", _attention)
    AttentionMaskInterface.register("flownar_dcm", sdpa_mask)
    return "flownar_dcm"
