"""CLAM: Cross-Linear Attention Memory (FlowNar, ICML 2026), in plain PyTorch.

A fixed-size streaming memory. ``n_queries`` query tokens read, through a *gated cross linear attention*
(GLA-style), a matrix state that every visual token updates with a data-dependent decay gate:

    S_t = diag(g_t) S_{t-1} + k_t^T v_t          (per head; S: (dk, dv), g_t scales the key channels)
    o_t = q S_t                                   (q: the Q queries, constant over time -> (Q, dv))

The state has the same size after 1 token as after 100k tokens, so streaming costs O(1) memory per video.
The layer around the recurrence is one post-norm decoder layer (d_model = the visual feature dim D):

    tgt   = LayerNorm(0 + Dropout(SelfAttn(q=k=0+pos, v=0)))          # queries: zeros + learnt positions
    query = tgt + pos
    o     = o_proj(RMSNorm_per_head(q S_t) * SiLU(g_proj(query)))       # gated cross linear attention
    h     = RMSNorm(tgt + o)
    mem   = RMSNorm(h + SwiGLU(h))                                      # (Q, D) memory tokens per read-out

The recurrence has three interchangeable forms, all on already-projected tensors: ``gla_reference``
(a plain loop, obviously correct), ``gla_chunked`` (parallel within chunks, a short recurrence across them;
used for training) and ``gla_step`` (one token). Streaming uses :meth:`CLAM.update` (the closed form of several
steps at once: one frame's tokens per call, no read-out) and :meth:`CLAM.read` (the memory tokens of a state,
once per memory block); :meth:`CLAM.step` (token by token with ``gla_step``) is the reference they are tested
against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "CLAMConfig",
    "CLAM",
    "RMSNorm",
    "SwiGLUMLP",
    "mlp_hidden_size",
    "gla_reference",
    "gla_chunked",
    "gla_step",
]


@dataclass
class CLAMConfig:
    d_model: int
    n_heads: int = 8
    n_queries: int = 20
    expand_k: float = 0.5
    dropout: float = 0.1
    gate_rank: int = 16
    norm_eps: float = 1e-5
    chunk_size: int = 64
    # Initial bias of the forget gate's last projection. None keeps nn.Linear's default (the original), whose
    # sigmoid gate starts near 0.5: half the state is forgotten per token. A positive value (e.g. 5.0: 0.993 per
    # token, a half-life of ~100 tokens = 10 frames) starts with a long memory; flownar's models use 5.0.
    gate_bias_init: float | None = None


# ----------------------------------------------------------------------------------------------------------
# the gated linear recurrence, three ways


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulate half-precision inputs in float32; keep float32/float64 as they are."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _check_shapes(q, k, v, log_g, state):
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4 or log_g.dim() != 4:
        raise ValueError("q, k, log_g, v must be 4-D: q (B,H,Q,dk), k/log_g (B,H,L,dk), v (B,H,L,dv)")
    B, H, L, dk = k.shape
    if log_g.shape != k.shape:
        raise ValueError(f"log_g {tuple(log_g.shape)} must have the shape of k {tuple(k.shape)}")
    if v.shape[:3] != (B, H, L):
        raise ValueError(f"v {tuple(v.shape)} does not match k {tuple(k.shape)} in (B, H, L)")
    if q.shape[0] != B or q.shape[1] != H or q.shape[3] != dk:
        raise ValueError(f"q {tuple(q.shape)} does not match k {tuple(k.shape)} in (B, H, ., dk)")
    dv = v.shape[-1]
    if state is not None and tuple(state.shape) != (B, H, dk, dv):
        raise ValueError(f"state {tuple(state.shape)} must be (B, H, dk, dv) = {(B, H, dk, dv)}")
    return B, H, L, dk, dv


def gla_reference(q, k, v, log_g, state=None):
    """Obviously-correct loop over tokens.

    q: (B,H,Q,dk), constant over time; k, log_g: (B,H,L,dk); v: (B,H,L,dv); state: (B,H,dk,dv) or None
    (zeros). Returns ``(o, final_state)``: o (B,H,L,Q,dv) is the read-out ``q S_t`` after every token t,
    final_state (B,H,dk,dv) is S after token L-1.
    """
    B, H, L, dk, dv = _check_shapes(q, k, v, log_g, state)
    out_dtype = q.dtype
    state_dtype = state.dtype if state is not None else q.dtype
    acc = _acc_dtype(q.dtype)
    q, k, v, log_g = (t.to(acc) for t in (q, k, v, log_g))
    S = k.new_zeros(B, H, dk, dv) if state is None else state.to(acc)
    outs = []
    for t in range(L):
        decay = log_g[:, :, t].exp().unsqueeze(-1)  # (B,H,dk,1)
        kv = k[:, :, t].unsqueeze(-1) * v[:, :, t].unsqueeze(-2)  # (B,H,dk,1)*(B,H,1,dv) -> (B,H,dk,dv)
        S = decay * S + kv
        outs.append(q @ S)  # (B,H,Q,dk)@(B,H,dk,dv) -> (B,H,Q,dv)
    if outs:
        o = torch.stack(outs, dim=2)  # (B,H,L,Q,dv)
    else:
        o = q.new_zeros(B, H, 0, q.shape[2], dv)
    return o.to(out_dtype), S.to(state_dtype)


def gla_step(q, k_t, v_t, log_g_t, state):
    """One token of the recurrence.

    q: (B,H,Q,dk); k_t, log_g_t: (B,H,dk); v_t: (B,H,dv); state: (B,H,dk,dv).
    Returns ``(o_t, new_state)``: o_t (B,H,Q,dv) read out after the token, new_state (B,H,dk,dv).
    """
    if k_t.dim() != 3 or v_t.dim() != 3 or log_g_t.dim() != 3:
        raise ValueError("k_t, log_g_t must be (B,H,dk) and v_t (B,H,dv)")
    out_dtype, state_dtype = q.dtype, state.dtype
    acc = _acc_dtype(q.dtype)
    q, k_t, v_t, log_g_t, S = (t.to(acc) for t in (q, k_t, v_t, log_g_t, state))
    S = log_g_t.exp().unsqueeze(-1) * S + k_t.unsqueeze(-1) * v_t.unsqueeze(-2)  # (B,H,dk,dv)
    o = q @ S  # (B,H,Q,dk)@(B,H,dk,dv) -> (B,H,Q,dv)
    return o.to(out_dtype), S.to(state_dtype)


def _normalize_readout(readout_index, L: int, device):
    """Validate readout_index; return (sorted unique positions, inverse map or None if already so)."""
    idx = torch.as_tensor(readout_index)
    if idx.dim() != 1 or idx.dtype in (torch.bool,) or idx.is_floating_point() or idx.is_complex():
        raise ValueError("readout_index must be a 1-D integer tensor of positions")
    idx = idx.to(device=device, dtype=torch.long)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= L):
        raise ValueError(f"readout_index must lie in [0, {L}); got min {int(idx.min())}, max {int(idx.max())}")
    uniq, inverse = torch.unique(idx, sorted=True, return_inverse=True)
    if uniq.numel() == idx.numel():  # strictly ascending already -> no re-gather needed
        return uniq, None
    return uniq, inverse


def gla_chunked(q, k, v, log_g, state=None, chunk_size=64, readout_index=None):
    """Chunked parallel form: parallel inside each chunk, a short recurrence (Python loop) across chunks.

    Same inputs as :func:`gla_reference`. If ``readout_index`` (LongTensor (K,), positions in [0, L)) is
    given, o holds the read-outs at those positions only, (B,H,K,Q,dv), and only the chunks that contain a
    read-out position compute outputs (the state is always carried to the end); else o is (B,H,L,Q,dv).
    Returns ``(o, final_state)`` with final_state (B,H,dk,dv) after token L-1.

    Within a chunk with cumulative log-decays A_t = sum_{i<=t} log g_i (all <= 0) and entry state S0:
        o_t    = (q * exp(A_t)) S0 + sum_{s<=t} [q (exp(A_t - A_s) * k_s)^T] v_s
        S_last = exp(A_last) * S0 + sum_s (exp(A_last - A_s) * k_s)^T v_s
    Only exponents <= 0 are ever formed (pairs s > t are set to -inf before the exp), so strongly decaying
    gates underflow to 0 instead of overflowing.
    """
    B, H, L, dk, dv = _check_shapes(q, k, v, log_g, state)
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    C = int(chunk_size)
    Qn = q.shape[2]
    out_dtype = q.dtype
    state_dtype = state.dtype if state is not None else q.dtype
    acc = _acc_dtype(q.dtype)
    q, k, v, log_g = (t.to(acc) for t in (q, k, v, log_g))
    S = k.new_zeros(B, H, dk, dv) if state is None else state.to(acc)

    if readout_index is not None:
        positions, inverse = _normalize_readout(readout_index, L, k.device)
        pos_list = positions.tolist()
    else:
        positions, inverse, pos_list = None, None, None

    outs = []
    p = 0  # pointer into pos_list
    for start in range(0, L, C):
        end = min(start + C, L)
        n = end - start
        kc = k[:, :, start:end]  # (B,H,n,dk)
        vc = v[:, :, start:end]  # (B,H,n,dv)
        A = log_g[:, :, start:end].cumsum(dim=2)  # (B,H,n,dk), non-increasing along n, <= 0

        # which rows (local positions) of this chunk are read out
        if pos_list is None:
            rows = torch.arange(n, device=k.device)
        else:
            p_end = p
            while p_end < len(pos_list) and pos_list[p_end] < end:
                p_end += 1
            rows = positions[p:p_end] - start if p_end > p else None
            p = p_end

        if rows is not None:
            A_t = A if pos_list is None else A[:, :, rows]  # (B,H,r,dk)
            # contribution of the state entering the chunk: (q * exp(A_t)) S0
            q_dec = q.unsqueeze(2) * A_t.exp().unsqueeze(3)  # (B,H,1,Q,dk)*(B,H,r,1,dk) -> (B,H,r,Q,dk)
            o_c = q_dec @ S.unsqueeze(2)  # (B,H,r,Q,dk)@(B,H,1,dk,dv) -> (B,H,r,Q,dv)
            # contribution of the chunk's own tokens s <= t
            diff = A_t.unsqueeze(3) - A.unsqueeze(2)  # (B,H,r,1,dk)-(B,H,1,n,dk) -> (B,H,r,n,dk)
            causal = rows.unsqueeze(1) >= torch.arange(n, device=k.device).unsqueeze(0)  # (r,n)
            decay = diff.masked_fill(~causal.unsqueeze(-1), float("-inf")).exp()  # (B,H,r,n,dk), in [0,1]
            k_dec = decay * kc.unsqueeze(2)  # (B,H,r,n,dk)
            scores = torch.einsum("bhqc,bhtsc->bhtqs", q, k_dec)  # (B,H,r,Q,n)
            o_c = o_c + scores @ vc.unsqueeze(2)  # (B,H,r,Q,n)@(B,H,1,n,dv) -> (B,H,r,Q,dv)
            outs.append(o_c)

        # carry the state to the end of the chunk
        A_last = A[:, :, -1:]  # (B,H,1,dk)
        k_carry = kc * (A_last - A).exp()  # (B,H,n,dk), exponents <= 0
        S = A_last.transpose(-1, -2).exp() * S + k_carry.transpose(-1, -2) @ vc  # (B,H,dk,dv)

    if outs:
        o = torch.cat(outs, dim=2)  # (B,H,K or L,Q,dv)
    else:
        o = q.new_zeros(B, H, 0, Qn, dv)
    if inverse is not None:
        o = o[:, :, inverse]  # (B,H,K,Q,dv) in the caller's order (duplicates allowed)
    return o.to(out_dtype), S.to(state_dtype)


# ----------------------------------------------------------------------------------------------------------
# the module


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dim with a learnable weight (init 1); computed in >= float32."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        dtype = x.dtype
        x = x.to(_acc_dtype(dtype))
        x = x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (x * self.weight.to(x.dtype)).to(dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def mlp_hidden_size(d_model: int, ratio: int = 4) -> int:
    """SwiGLU hidden size: 2/3 * ratio * d_model rounded UP to a multiple of 256 (1024 -> 2816, 64 -> 256)."""
    h = int(d_model * ratio * 2 / 3)
    return 256 * ((h + 255) // 256)


class SwiGLUMLP(nn.Module):
    """gate_proj: D -> 2*Hm split into [gate | up]; down_proj(silu(gate) * up): Hm -> D. No biases."""

    def __init__(self, d_model: int):
        super().__init__()
        self.hidden_size = mlp_hidden_size(d_model)
        self.gate_proj = nn.Linear(d_model, 2 * self.hidden_size, bias=False)
        self.down_proj = nn.Linear(self.hidden_size, d_model, bias=False)

    def forward(self, x):
        gate, up = self.gate_proj(x).chunk(2, dim=-1)  # (..., Hm), (..., Hm)
        return self.down_proj(F.silu(gate) * up)


class CLAM(nn.Module):
    """Cross-Linear Attention Memory: one post-norm decoder layer whose cross attention is a gated linear
    recurrence over the visual tokens. ``forward`` (chunked, for training), ``update`` + ``read`` (streaming: the
    state advanced a frame at a time, read out once per memory block), ``step`` (token by token) and
    ``forward_reference`` (loop, for tests) compute the same function."""

    def __init__(self, config: CLAMConfig):
        super().__init__()
        self.config = config
        D, H = config.d_model, config.n_heads
        key_dim = int(D * config.expand_k)
        if D % H or key_dim % H or key_dim == 0:
            raise ValueError(f"d_model={D} and d_model*expand_k={key_dim} must be positive multiples of n_heads={H}")
        self.d_model, self.n_heads, self.n_queries = D, H, config.n_queries
        self.key_dim = key_dim
        self.head_k_dim = key_dim // H  # dk
        self.head_v_dim = D // H  # dv
        self.scale = self.head_k_dim**-0.5

        # queries: content tgt = 0 (not learnt), positions learnt
        self.query_embed = nn.Embedding(config.n_queries, D)
        # self-attention among the queries (post-norm)
        self.self_attn = nn.MultiheadAttention(D, H, dropout=config.dropout, batch_first=True)
        self.dropout1 = nn.Dropout(config.dropout)
        self.norm1 = nn.LayerNorm(D)
        # gated cross linear attention
        self.q_proj = nn.Linear(D, key_dim, bias=False)
        self.k_proj = nn.Linear(D, key_dim, bias=False)
        self.v_proj = nn.Linear(D, D, bias=False)
        self.gk_proj = nn.Sequential(
            nn.Linear(D, config.gate_rank, bias=False),
            nn.Linear(config.gate_rank, key_dim, bias=True),
        )
        self.g_proj = nn.Linear(D, D, bias=False)
        self.g_norm = RMSNorm(self.head_v_dim, eps=config.norm_eps)
        self.o_proj = nn.Linear(D, D, bias=False)
        self.norm2 = RMSNorm(D, eps=config.norm_eps)
        # SwiGLU MLP (post-norm)
        self.mlp = SwiGLUMLP(D)
        self.mlp_norm = RMSNorm(D, eps=config.norm_eps)

        self._reset_parameters()

    def _reset_parameters(self):
        # xavier on every matrix (as the original); nn.MultiheadAttention/LayerNorm already zero their biases
        # and RMSNorm weights start at 1. The gate's low-rank bias keeps nn.Linear's default init (as the
        # original).
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        if self.config.gate_bias_init is not None:
            nn.init.constant_(self.gk_proj[1].bias, self.config.gate_bias_init)

    # -- helpers -------------------------------------------------------------------------------------------

    def init_state(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        """Zero state (B, H, dk, dv): its size never depends on how many tokens have been seen."""
        ref = self.q_proj.weight
        return torch.zeros(
            batch_size,
            self.n_heads,
            self.head_k_dim,
            self.head_v_dim,
            device=ref.device if device is None else device,
            dtype=ref.dtype if dtype is None else dtype,
        )

    def _queries(self, batch_size: int, dtype):
        """Self-attention sub-layer on (zeros + positions), then the query-side projections. Returns
        (tgt, q, gate): tgt (B,Q,D) the sub-layer's output, q (B,H,Q,dk) = scaled q_proj(tgt + pos),
        gate (B,Q,D) = SiLU(g_proj(tgt + pos))."""
        pos = self.query_embed.weight.to(dtype).unsqueeze(0).expand(batch_size, -1, -1)  # (B,Q,D)
        tgt = torch.zeros_like(pos)  # (B,Q,D)
        qk = tgt + pos
        sa = self.self_attn(qk, qk, value=tgt, need_weights=False)[0]  # (B,Q,D)
        tgt = self.norm1(tgt + self.dropout1(sa))  # (B,Q,D)
        query = tgt + pos  # (B,Q,D)
        B, Qn, _ = query.shape
        q = self.q_proj(query).view(B, Qn, self.n_heads, self.head_k_dim).transpose(1, 2)  # (B,H,Q,dk)
        q = q * self.scale
        gate = F.silu(self.g_proj(query))  # (B,Q,D)
        return tgt, q, gate

    def _token_proj(self, x):
        """x (B,L,D) -> k (B,H,L,dk), v (B,H,L,dv), log_g (B,H,L,dk)."""
        B, L, _ = x.shape
        H, dk, dv = self.n_heads, self.head_k_dim, self.head_v_dim
        k = self.k_proj(x).view(B, L, H, dk).transpose(1, 2)  # (B,H,L,dk)
        v = self.v_proj(x).view(B, L, H, dv).transpose(1, 2)  # (B,H,L,dv)
        log_g = F.logsigmoid(self.gk_proj(x)).view(B, L, H, dk).transpose(1, 2)  # (B,H,L,dk), <= 0
        return k, v, log_g

    def _readout(self, o, tgt, gate):
        """o (B,H,K,Q,dv) raw read-outs -> memory (B,K,Q,D)."""
        B, H, K, Qn, dv = o.shape
        o = self.g_norm(o)  # (B,H,K,Q,dv)
        o = o.permute(0, 2, 3, 1, 4).reshape(B, K, Qn, H * dv)  # (B,K,Q,D)
        o = self.o_proj(o * gate.unsqueeze(1))  # (B,K,Q,D)
        h = self.norm2(tgt.unsqueeze(1) + o)  # (B,K,Q,D), tgt broadcast over time
        return self.mlp_norm(h + self.mlp(h))  # (B,K,Q,D)

    def _check_x(self, x):
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must be (B, L, {self.d_model}), got {tuple(x.shape)}")

    # -- the three forms ----------------------------------------------------------------------------------

    def forward(self, x, readout_index=None, state=None):
        """x (B,L,D) visual tokens (frame-major). Returns (memory, final_state): memory (B,K,Q,D) read out at
        ``readout_index`` (LongTensor (K,)), or (B,L,Q,D) after every token when it is None; final_state
        (B,H,dk,dv) after token L-1 (feed it back as ``state`` to continue)."""
        self._check_x(x)
        tgt, q, gate = self._queries(x.shape[0], x.dtype)
        k, v, log_g = self._token_proj(x)
        o, S = gla_chunked(
            q, k, v, log_g, state=state, chunk_size=self.config.chunk_size, readout_index=readout_index
        )  # (B,H,K,Q,dv), (B,H,dk,dv)
        return self._readout(o, tgt, gate), S

    def forward_reference(self, x, readout_index=None, state=None):
        """Same contract as :meth:`forward`, via :func:`gla_reference` (for tests)."""
        self._check_x(x)
        tgt, q, gate = self._queries(x.shape[0], x.dtype)
        k, v, log_g = self._token_proj(x)
        o, S = gla_reference(q, k, v, log_g, state=state)  # (B,H,L,Q,dv)
        if readout_index is not None:
            idx = torch.as_tensor(readout_index, device=o.device, dtype=torch.long)
            o = o[:, :, idx]  # (B,H,K,Q,dv)
        return self._readout(o, tgt, gate), S

    def update(self, x, state=None):
        """Streaming hot path: advance the state by the n tokens x (B,n,D) at once, without a read-out.
        Closed form of n recurrence steps: S_n = exp(A_n) * S_0 + sum_s exp(A_n - A_s) k_s^T v_s with
        A = cumsum(log g) (all exponents <= 0). Returns the new state (B,H,dk,dv), in the state's dtype."""
        self._check_x(x)
        if state is None:
            state = self.init_state(x.shape[0], device=x.device, dtype=torch.float32)
        acc = _acc_dtype(state.dtype)
        k, v, log_g = (t.to(acc) for t in self._token_proj(x))  # (B,H,n,dk), (B,H,n,dv), (B,H,n,dk)
        A = log_g.cumsum(dim=2)  # (B,H,n,dk)
        A_last = A[:, :, -1]  # (B,H,dk)
        w = torch.exp(A_last.unsqueeze(2) - A)  # (B,H,n,dk), <= 1
        S = torch.exp(A_last).unsqueeze(-1) * state.to(acc) + (k * w).transpose(-1, -2) @ v  # (B,H,dk,dv)
        return S.to(state.dtype)

    def queries(self, dtype=None):
        """The query side of :meth:`read` for one stream, ``(tgt, q, gate)``: it depends on the weights only (the
        queries are learned embeddings), so a streaming reader computes it once and passes it to every read."""
        return self._queries(1, self.q_proj.weight.dtype if dtype is None else dtype)

    def read(self, state, queries=None):
        """The memory tokens (B,Q,D) read out of a state (B,H,dk,dv): o = q S, then the output path.
        ``queries``: :meth:`queries` computed beforehand (batch size 1), else computed here."""
        dtype = self.q_proj.weight.dtype
        if queries is None or state.shape[0] != 1:
            queries = self._queries(state.shape[0], dtype)
        tgt, q, gate = queries
        o = (q.to(state.dtype) @ state).to(dtype)  # (B,H,Q,dv)
        return self._readout(o.unsqueeze(2), tgt, gate)[:, 0]  # (B,Q,D)

    def step(self, x, state=None):
        """Streaming: feed n >= 1 new tokens x (B,n,D) one at a time (gla_step). Returns (memory (B,Q,D) read
        out after the last of them, new_state (B,H,dk,dv)). The state never grows."""
        self._check_x(x)
        if x.shape[1] < 1:
            raise ValueError("step needs at least one token")
        if state is None:
            state = self.init_state(x.shape[0], device=x.device, dtype=x.dtype)
        tgt, q, gate = self._queries(x.shape[0], x.dtype)
        k, v, log_g = self._token_proj(x)
        o = None
        for t in range(x.shape[1]):
            o, state = gla_step(q, k[:, :, t], v[:, :, t], log_g[:, :, t], state)  # (B,H,Q,dv)
        memory = self._readout(o.unsqueeze(2), tgt, gate)[:, 0]  # (B,1,Q,D) -> (B,Q,D)
        return memory, state
