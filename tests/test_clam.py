"""CLAM (Cross-Linear Attention Memory): the three forms of the gated linear recurrence agree (values and
gradients), the module's chunked / reference / streaming forms agree, the state has a fixed size, and a tiny
model can learn to remember an early token."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from flownar.models.clam import (
    CLAM,
    CLAMConfig,
    gla_chunked,
    gla_reference,
    gla_step,
    mlp_hidden_size,
)

F64 = dict(rtol=1e-9, atol=1e-9)


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are tiny: one intra-op thread is faster, and robust to a busy machine. Restored after."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@pytest.fixture
def float64():
    """Default dtype float64 inside the test only."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _inputs(L, gate="mixed", B=2, H=3, Q=5, dk=4, dv=6, seed=0, dtype=torch.float64, with_state=True):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Q, dk, generator=g, dtype=dtype)
    k = torch.randn(B, H, L, dk, generator=g, dtype=dtype)
    v = torch.randn(B, H, L, dv, generator=g, dtype=dtype)
    if gate == "mixed":  # gates spread over (0, 1): logsigmoid of wide logits
        log_g = F.logsigmoid(3 * torch.randn(B, H, L, dk, generator=g, dtype=dtype))
    elif gate == "strong":  # log-decays down to -20 per token
        log_g = -20 * torch.rand(B, H, L, dk, generator=g, dtype=dtype)
    else:
        raise ValueError(gate)
    state = torch.randn(B, H, dk, dv, generator=g, dtype=dtype) if with_state else None
    return q, k, v, log_g, state


def _readout_subset(L):
    return torch.tensor(sorted({0, L // 3, L // 2, L - 1}), dtype=torch.long)


# ---------------------------------------------------------------------------------------------------------
# the recurrence


@pytest.mark.parametrize("gate", ["mixed", "strong"])
@pytest.mark.parametrize("L", [1, 7, 64, 65, 200])
def test_chunked_matches_reference_values_and_grads(L, gate):
    q, k, v, log_g, s0 = _inputs(L, gate, seed=L)
    leaves = [t.requires_grad_() for t in (q, k, v, log_g, s0)]
    names = "q k v log_g state".split()
    g = torch.Generator().manual_seed(1)
    idx = _readout_subset(L)

    # the reference (one loop), and the gradients of two random linear functionals of its outputs:
    # of (all outputs, final state) and of (outputs at idx, final state)
    o_ref, S_ref = gla_reference(*leaves)
    w_o, w_S = torch.randn(o_ref.shape, generator=g), torch.randn(S_ref.shape, generator=g)
    w_sub = torch.randn(o_ref[:, :, idx].shape, generator=g)
    gr_all = torch.autograd.grad((o_ref * w_o).sum() + (S_ref * w_S).sum(), leaves, retain_graph=True)
    gr_sub = torch.autograd.grad((o_ref[:, :, idx] * w_sub).sum() + (S_ref * w_S).sum(), leaves)

    for chunk_size in (1, 16, 64):
        o_chk, S_chk = gla_chunked(*leaves, chunk_size=chunk_size)
        assert o_chk.shape == o_ref.shape == (2, 3, L, 5, 6)
        assert S_chk.shape == S_ref.shape == (2, 3, 4, 6)
        assert torch.isfinite(o_chk).all() and torch.isfinite(S_chk).all()
        torch.testing.assert_close(o_chk, o_ref, **F64)
        torch.testing.assert_close(S_chk, S_ref, **F64)
        grads = torch.autograd.grad((o_chk * w_o).sum() + (S_chk * w_S).sum(), leaves)
        for name, a, b in zip(names, grads, gr_all):
            assert torch.isfinite(a).all(), name
            torch.testing.assert_close(a, b, **F64, msg=lambda m: f"C={chunk_size} grad {name}: {m}")

        # read-outs at a subset of positions: values, final state and gradients
        o_sub, S_sub = gla_chunked(*leaves, chunk_size=chunk_size, readout_index=idx)
        assert o_sub.shape == (2, 3, len(idx), 5, 6)
        torch.testing.assert_close(o_sub, o_ref[:, :, idx], **F64)
        torch.testing.assert_close(S_sub, S_ref, **F64)
        grads = torch.autograd.grad((o_sub * w_sub).sum() + (S_sub * w_S).sum(), leaves)
        for name, a, b in zip(names, grads, gr_sub):
            torch.testing.assert_close(a, b, **F64, msg=lambda m: f"C={chunk_size} readout grad {name}: {m}")


def test_chunked_without_initial_state_equals_zero_state():
    q, k, v, log_g, _ = _inputs(33, with_state=False)
    zeros = torch.zeros(2, 3, 4, 6, dtype=torch.float64)
    a = gla_chunked(q, k, v, log_g, chunk_size=8)
    b = gla_chunked(q, k, v, log_g, state=zeros, chunk_size=8)
    r = gla_reference(q, k, v, log_g)
    for x, y, z in zip(a, b, r):
        torch.testing.assert_close(x, y, **F64)
        torch.testing.assert_close(x, z, **F64)


def test_chunked_readout_index_any_order_and_duplicates():
    q, k, v, log_g, s0 = _inputs(50)
    o_ref, _ = gla_reference(q, k, v, log_g, s0)
    idx = torch.tensor([49, 3, 3, 20, 0])
    o, _ = gla_chunked(q, k, v, log_g, s0, chunk_size=16, readout_index=idx)
    torch.testing.assert_close(o, o_ref[:, :, idx], **F64)
    o_empty, S = gla_chunked(q, k, v, log_g, s0, chunk_size=16, readout_index=torch.tensor([], dtype=torch.long))
    assert o_empty.shape == (2, 3, 0, 5, 6)
    torch.testing.assert_close(S, gla_reference(q, k, v, log_g, s0)[1], **F64)
    for bad in (torch.tensor([50]), torch.tensor([-1]), torch.tensor([[1, 2]]), torch.tensor([1.0])):
        with pytest.raises(ValueError):
            gla_chunked(q, k, v, log_g, s0, chunk_size=16, readout_index=bad)


def test_chunked_is_stable_under_extreme_decay_float32():
    """Constant log-decay -30 per token: the cumulative log-decay reaches -1900 within a chunk. A form that
    exponentiates -A_s (exp(+1900)) would overflow to inf and give nan; ours must stay finite and exact."""
    q, k, v, _, s0 = _inputs(200, dtype=torch.float32)
    log_g = torch.full_like(k, -30.0)
    leaves = [t.requires_grad_() for t in (q, k, v, log_g, s0)]
    o, S = gla_chunked(*leaves, chunk_size=64)
    assert torch.isfinite(o).all() and torch.isfinite(S).all()
    # with decay e^-30 the state is (up to 1e-13) just the last token's k^T v
    o_ref, S_ref = gla_reference(*leaves)
    torch.testing.assert_close(o, o_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(S, k[:, :, -1, :, None] * v[:, :, -1, None, :], rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(o.sum() + S.sum(), leaves)
    assert all(torch.isfinite(gr).all() for gr in grads)


def test_chunked_half_precision_accumulates_in_float32():
    q, k, v, log_g, s0 = (t.to(torch.bfloat16) for t in _inputs(130, dtype=torch.float32))
    o, S = gla_chunked(q, k, v, log_g, s0, chunk_size=64)
    assert o.dtype == torch.bfloat16 and S.dtype == torch.bfloat16
    o_ref, S_ref = gla_reference(*(t.double() for t in (q, k, v, log_g, s0)))
    scale = o_ref.abs().max().item()
    assert (o.double() - o_ref).abs().max().item() < 2e-2 * scale
    assert (S.double() - S_ref).abs().max().item() < 2e-2 * S_ref.abs().max().item()
    # a float32 state may be carried with bf16 inputs and stays float32
    _, S32 = gla_chunked(q, k, v, log_g, s0.float(), chunk_size=64)
    assert S32.dtype == torch.float32


@pytest.mark.parametrize("gate", ["mixed", "strong"])
def test_step_token_by_token_matches_reference(gate):
    q, k, v, log_g, s0 = _inputs(40, gate)
    o_ref, S_ref = gla_reference(q, k, v, log_g, s0)
    S = s0
    for t in range(40):
        o_t, S = gla_step(q, k[:, :, t], v[:, :, t], log_g[:, :, t], S)
        assert S.shape == s0.shape
        torch.testing.assert_close(o_t, o_ref[:, :, t], **F64)
    torch.testing.assert_close(S, S_ref, **F64)


def test_reference_is_the_recurrence_written_out():
    """Guard against a reference that agrees with the chunked form for the wrong reason: check one head
    by hand, S_t = diag(g_t) S_{t-1} + k_t^T v_t, o_t = q S_t."""
    q, k, v, log_g, s0 = _inputs(3, B=1, H=1, Q=2, dk=2, dv=3)
    o, S = gla_reference(q, k, v, log_g, s0)
    Sm = s0[0, 0]
    for t in range(3):
        Sm = torch.diag(log_g[0, 0, t].exp()) @ Sm + torch.outer(k[0, 0, t], v[0, 0, t])
        torch.testing.assert_close(o[0, 0, t], q[0, 0] @ Sm, **F64)
    torch.testing.assert_close(S[0, 0], Sm, **F64)


# ---------------------------------------------------------------------------------------------------------
# the module

TOKENS = 5  # tokens per frame in the module tests
FRAMES = 9


def _model(D=32, H=4, Q=6, chunk_size=16, seed=0, dropout=0.1):
    torch.manual_seed(seed)
    return CLAM(CLAMConfig(d_model=D, n_heads=H, n_queries=Q, chunk_size=chunk_size, dropout=dropout))


def _video(B=2, frames=FRAMES, D=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, frames * TOKENS, D, generator=g)  # (B, T*tokens, D), frame-major


def test_module_forward_reference_and_streaming_agree(float64):
    model = _model().eval()
    x = _video()
    idx = torch.arange(1, FRAMES + 1) * TOKENS - 1  # read out after every frame
    mem, S = model(x, idx)
    mem_ref, S_ref = model.forward_reference(x, idx)
    assert mem.shape == (2, FRAMES, 6, 32)
    torch.testing.assert_close(mem, mem_ref, **F64)
    torch.testing.assert_close(S, S_ref, **F64)

    state = model.init_state(2)
    for f in range(FRAMES):
        m_f, state = model.step(x[:, f * TOKENS : (f + 1) * TOKENS], state)
        assert m_f.shape == (2, 6, 32)
        torch.testing.assert_close(m_f, mem[:, f], **F64)
    torch.testing.assert_close(state, S, **F64)

    # no readout_index: every position
    mem_all, S_all = model(x)
    assert mem_all.shape == (2, FRAMES * TOKENS, 6, 32)
    torch.testing.assert_close(mem_all[:, idx], mem, **F64)
    torch.testing.assert_close(mem_all, model.forward_reference(x)[0], **F64)
    torch.testing.assert_close(S_all, S, **F64)


def test_module_is_the_documented_layer(float64):
    """Recompute the layer by hand from the documented steps, with every parameter randomised (biases and
    norm weights too, so that the residual paths are not zero as they are at init)."""
    model = _model().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if p.dim() == 1 else 0.0))
    x = _video()
    B, L, D, H, dk, dv = 2, x.shape[1], 32, 4, 4, 8

    def rms(t, w, eps=1e-5):
        return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + eps) * w

    pos = model.query_embed.weight.expand(B, -1, -1)  # (B,Q,D)
    # self-attention on zero values: every query gets out_proj(value bias), whatever the attention weights
    sa = model.self_attn.out_proj(model.self_attn.in_proj_bias[2 * D :])  # (D,)
    tgt = F.layer_norm(sa.expand(B, 6, D), (D,), model.norm1.weight, model.norm1.bias)
    query = tgt + pos
    q = (query @ model.q_proj.weight.T).view(B, 6, H, dk).transpose(1, 2) * dk**-0.5
    k = (x @ model.k_proj.weight.T).view(B, L, H, dk).transpose(1, 2)
    v = (x @ model.v_proj.weight.T).view(B, L, H, dv).transpose(1, 2)
    gk = x @ model.gk_proj[0].weight.T @ model.gk_proj[1].weight.T + model.gk_proj[1].bias
    log_g = torch.log(torch.sigmoid(gk)).view(B, L, H, dk).transpose(1, 2)
    o, S_ref = gla_reference(q, k, v, log_g)  # (B,H,L,Q,dv)
    o = rms(o, model.g_norm.weight).permute(0, 2, 3, 1, 4).reshape(B, L, 6, D)
    o = (o * F.silu(query @ model.g_proj.weight.T).unsqueeze(1)) @ model.o_proj.weight.T
    h = rms(tgt.unsqueeze(1) + o, model.norm2.weight)
    gate, up = (h @ model.mlp.gate_proj.weight.T).chunk(2, -1)
    h = rms(h + (F.silu(gate) * up) @ model.mlp.down_proj.weight.T, model.mlp_norm.weight)

    mem, S = model(x)
    torch.testing.assert_close(mem, h, **F64)
    torch.testing.assert_close(S, S_ref, **F64)


def test_module_gradients_agree(float64):
    model = _model().eval()
    x = _video().requires_grad_()
    idx = torch.arange(1, FRAMES + 1) * TOKENS - 1
    g = torch.Generator().manual_seed(3)
    w = torch.randn(2, FRAMES, 6, 32, generator=g)
    w_S = torch.randn(2, 4, 4, 8, generator=g)
    params = [p for _, p in model.named_parameters()]
    names = [n for n, _ in model.named_parameters()]

    def grads(fn):
        mem, S = fn(x, idx)
        return torch.autograd.grad((mem * w).sum() + (S * w_S).sum(), params + [x])

    g_chk, g_ref = grads(model.forward), grads(model.forward_reference)
    nonzero = 0
    for name, a, b in zip(names + ["x"], g_chk, g_ref):
        torch.testing.assert_close(a, b, **F64, msg=lambda m: f"grad {name}: {m}")
        nonzero += bool(a.abs().max() > 0)
    assert nonzero >= len(names) - 2  # everything but the (inert) self-attention in_proj gets a gradient
    assert g_chk[names.index("gk_proj.1.bias")].abs().max() > 0


def test_state_size_is_fixed():
    model = _model().eval()
    expected = (3, 4, 4, 8)  # (B, H, dk, dv) with D=32, H=4, expand_k=0.5
    s0 = model.init_state(3)
    assert s0.shape == expected and not s0.any() and s0.dtype == torch.float32
    with torch.no_grad():
        _, s1 = model.step(torch.randn(3, 1, 32), s0)
        _, s500 = model.step(torch.randn(3, 500, 32), s1)
        _, f1 = model(torch.randn(3, 1, 32))
        _, f500 = model(torch.randn(3, 500, 32), readout_index=torch.tensor([499]))
    for s in (s1, s500, f1, f500):
        assert s.shape == expected and s.numel() == s0.numel()
        assert torch.isfinite(s).all()


def test_state_carried_across_calls_equals_one_call(float64):
    model = _model().eval()
    x = _video()
    L, cut = x.shape[1], 17  # the cut falls inside a chunk and inside a frame
    mem_full, S_full = model(x)
    mem_a, S_a = model(x[:, :cut])
    mem_b, S_b = model(x[:, cut:], state=S_a)
    torch.testing.assert_close(torch.cat([mem_a, mem_b], dim=1), mem_full, **F64)
    torch.testing.assert_close(S_b, S_full, **F64)
    # the same through read-out indices and through the reference form
    idx_b = torch.tensor([0, L - cut - 1])
    mem_bi, _ = model(x[:, cut:], readout_index=idx_b, state=S_a)
    torch.testing.assert_close(mem_bi, mem_full[:, cut + idx_b], **F64)
    mem_br, S_br = model.forward_reference(x[:, cut:], state=S_a)
    torch.testing.assert_close(mem_br, mem_b, **F64)
    torch.testing.assert_close(S_br, S_full, **F64)


def test_shapes_and_dtypes():
    model = _model(Q=20)
    x = torch.randn(2, 23, 32)
    mem, S = model(x, readout_index=torch.tensor([4, 22]))
    assert mem.shape == (2, 2, 20, 32) and S.shape == (2, 4, 4, 8)
    assert mem.dtype == torch.float32
    mem, _ = model(x)
    assert mem.shape == (2, 23, 20, 32)
    m1, s1 = model.step(x[:, :3], model.init_state(2))
    assert m1.shape == (2, 20, 32) and s1.shape == (2, 4, 4, 8)
    with pytest.raises(ValueError):
        model(torch.randn(2, 5, 31))
    # bf16 end to end (the recurrence accumulates in float32 internally)
    mb = _model().to(torch.bfloat16).eval()
    with torch.no_grad():
        out, st = mb(x.to(torch.bfloat16), readout_index=torch.tensor([22]))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_dropout_only_acts_in_training():
    model = _model(dropout=0.5)
    with torch.no_grad():  # at init the self-attention output (its out_proj bias) is 0: give dropout something
        model.self_attn.out_proj.bias.normal_()
    x = torch.randn(2, 10, 32)
    model.train()
    with torch.no_grad():
        a, _ = model(x)
        b, _ = model(x)
    assert not torch.equal(a, b)
    model.eval()
    with torch.no_grad():
        a, _ = model(x)
        b, _ = model(x)
    assert torch.equal(a, b)


def test_parameter_init():
    model = _model()
    for name in ("g_norm", "norm2", "mlp_norm", "norm1"):
        assert torch.equal(getattr(model, name).weight, torch.ones_like(getattr(model, name).weight)), name
    assert not model.norm1.bias.any()
    assert not model.self_attn.in_proj_bias.any() and not model.self_attn.out_proj.bias.any()
    for name, p in model.named_parameters():
        if p.dim() > 1:  # xavier_uniform_: |w| <= sqrt(6 / (fan_in + fan_out)), and not all equal
            fan_out, fan_in = p.shape[0], p.shape[1]
            assert p.abs().max() <= math.sqrt(6 / (fan_in + fan_out)) + 1e-7, name
            assert p.std() > 0, name
    # no learnable query content, no biases on the projections
    for lin in (
        model.q_proj,
        model.k_proj,
        model.v_proj,
        model.g_proj,
        model.o_proj,
        model.gk_proj[0],
        model.mlp.gate_proj,
        model.mlp.down_proj,
    ):
        assert lin.bias is None
    assert model.gk_proj[1].bias is not None
    assert model.query_embed.weight.shape == (6, 32)


def test_mlp_hidden_size_rounding():
    assert mlp_hidden_size(1024) == 2816
    assert mlp_hidden_size(64) == 256
    assert mlp_hidden_size(32) == 256
    assert mlp_hidden_size(384) == 1024
    big = CLAM(CLAMConfig(d_model=1024))
    assert big.mlp.gate_proj.weight.shape == (2 * 2816, 1024)
    assert big.mlp.down_proj.weight.shape == (1024, 2816)
    assert (big.head_k_dim, big.head_v_dim) == (64, 128)
    assert big.init_state(1).shape == (1, 8, 64, 128)
    small = _model(D=64)
    assert small.mlp.gate_proj.weight.shape == (512, 64)


def test_learns_to_remember_the_first_token():
    """CLAM + a linear head must recall the class (of 4) of the FIRST of 30 tokens, read out at the last one.

    The gate bias starts at 4 (retention sigmoid(4) ~ 0.98 per token): with the original's default init the
    retention is ~sigmoid(0) = 0.5 per token, so a token 29 steps back is scaled by ~2^-29 and no gradient
    reaches it -- that is a property of the faithful init, not of the recurrence, so the test sets the bias.
    """
    torch.manual_seed(0)
    L, D, Qn = 30, 32, 4
    model = CLAM(CLAMConfig(d_model=D, n_heads=4, n_queries=Qn, dropout=0.0, chunk_size=32))
    with torch.no_grad():
        model.gk_proj[1].bias.fill_(4.0)
    head = nn.Linear(Qn * D, 4)
    protos = 2 * torch.randn(4, D)
    opt = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=1e-2)
    g = torch.Generator().manual_seed(1)
    idx = torch.tensor([L - 1])
    losses = []
    for _ in range(100):
        y = torch.randint(0, 4, (64,), generator=g)
        x = torch.randn(64, L, D, generator=g)
        x[:, 0] = protos[y] + 0.1 * torch.randn(64, D, generator=g)
        mem, _ = model(x, idx)  # (64, 1, Q, D)
        loss = F.cross_entropy(head(mem[:, 0].flatten(1)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert first > 1.0  # chance is ln 4 = 1.39
    assert last < 0.3, (first, last)
