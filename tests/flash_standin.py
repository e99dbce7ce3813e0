"""A stand-in for flash-attn's ``flash_attn_with_kvcache``, written from its documented semantics, for the CPU
tests of the captured step's flash path (flash-attn itself needs a CUDA GPU; tests/test_gpu.py runs the real one
where it is installed).

Documented behaviour used here: q (batch, seqlen_q, heads, hd); k_cache / v_cache (batch, seqlen_cache, kv_heads,
hd) with a contiguous last dimension, any other strides; ``cache_seqlens`` (batch,) int32: the first
``cache_seqlens[b]`` slots are the keys; grouped-query heads (query head i reads kv head i // (heads / kv_heads));
``causal=True`` aligns the mask to the bottom right: query i sees keys ``j <= i + seqlen_k - seqlen_q``."""

import torch


def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, cache_seqlens=None, softmax_scale=None, causal=False):
    assert k is None and v is None, "the captured step writes its keys/values itself"
    assert k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1, "flash-attn needs a contiguous last dimension"
    assert cache_seqlens.dtype == torch.int32
    b, n, heads, hd = q.shape
    scale = softmax_scale if softmax_scale is not None else hd**-0.5
    out = torch.zeros_like(q)
    for i in range(b):
        L = int(cache_seqlens[i])
        K = k_cache[i, :L].transpose(0, 1).float()  # (kv_heads, L, hd)
        V = v_cache[i, :L].transpose(0, 1).float()
        groups = heads // K.shape[0]
        K, V = K.repeat_interleave(groups, dim=0), V.repeat_interleave(groups, dim=0)  # (heads, L, hd)
        scores = (q[i].transpose(0, 1).float() @ K.transpose(-1, -2)) * scale  # (heads, n, L)
        if causal:
            allowed = torch.arange(L)[None] <= torch.arange(n)[:, None] + (L - n)  # (n, L), bottom-right
            scores = scores.masked_fill(~allowed, float("-inf"))
        out[i] = (torch.softmax(scores, dim=-1) @ V).transpose(0, 1).to(q.dtype)  # (n, heads, hd)
    return out
