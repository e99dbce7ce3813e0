"""Flash Memory (flownar.models.flash_memory): the streaming update against a from-scratch recomputation written
independently here (plain loops over rows), the fixed read-out size, DAM's retrieval of real frames."""

import numpy as np
import pytest
import torch

from flownar.models.flash_memory import (
    EQUAL_TO_CLAM,
    NATIVE_LIKE,
    FlashMemory,
    FlashMemoryConfig,
    flash_readouts,
)


def reference_memory(config: FlashMemoryConfig, frames: np.ndarray):
    """The CSM and DAM after all ``frames`` (F, N, D), recomputed from scratch with numpy loops: the same recursion
    (old centroids with their weights + the new frame, weighted k-means seeded by the frame count), the same random
    draws (the initial rows and refills come from the same torch generator, so both pick the same rows)."""
    k = config.clusters
    cents = np.zeros((0, frames.shape[2]))
    weights = np.zeros(0)
    times = np.zeros(0)
    lows = []
    for t, frame in enumerate(frames):
        low = frame[0] if config.low == "cls" else frame.mean(axis=0)
        lows.append(low)
        rows = np.vstack([cents, low[None]])
        w = np.append(weights, 1.0)
        tm = np.append(times, float(t))
        if len(rows) > k:
            g = torch.Generator().manual_seed(config.seed * 1_000_003 + t)
            C = rows[torch.randperm(len(rows), generator=g)[:k].numpy()].copy()
            for _ in range(config.iters):
                lab = np.array([min(range(k), key=lambda j: np.sum((r - C[j]) ** 2)) for r in rows])
                new = np.zeros_like(C)
                mass = np.zeros(k)
                for r, lbl, wt in zip(rows, lab, w):
                    new[lbl] += wt * r
                    mass[lbl] += wt
                empty = mass == 0
                new[~empty] /= mass[~empty, None]
                if empty.any():
                    new[empty] = rows[torch.randint(len(rows), (int(empty.sum()),), generator=g).numpy()]
                moved = np.sqrt(((new - C) ** 2).sum(axis=1)).max()
                C = new
                if moved <= config.tol:
                    break
            lab = np.array([min(range(k), key=lambda j: np.sum((r - C[j]) ** 2)) for r in rows])
            mass = np.array([w[lab == j].sum() for j in range(k)])
            keep = mass > 0
            rows = np.array([(w[lab == j, None] * rows[lab == j]).sum(0) / mass[j] for j in range(k) if keep[j]])
            tm = np.array([(w[lab == j] * tm[lab == j]).sum() / mass[j] for j in range(k) if keep[j]])
            w = mass[keep]
        order = np.argsort(tm, kind="stable")
        cents, weights, times = rows[order], w[order], tm[order]
    lows = np.stack(lows)
    heaviest = np.argsort(-weights, kind="stable")[: config.detail_frames]
    detail = sorted(int(np.argmin(((lows - cents[h]) ** 2).sum(axis=1))) for h in heaviest)
    return cents, weights, times, detail


@pytest.mark.parametrize("low", ["cls", "mean"])
def test_streaming_update_equals_a_from_scratch_recomputation(low):
    config = FlashMemoryConfig(clusters=6, detail_frames=2, low=low, seed=3)
    g = torch.Generator().manual_seed(0)
    # frames from a few recurring states plus noise, so that clusters mean something
    states = torch.randn(4, 5, 8, generator=g)
    frames = states[torch.randint(4, (40,), generator=g)] + 0.1 * torch.randn(40, 5, 8, generator=g)
    mem = FlashMemory(config, 5, 8)
    for f in frames:
        mem.write(f)
    cents, weights, times, detail = reference_memory(config, frames.double().numpy())
    np.testing.assert_allclose(mem.centroids.numpy(), cents, atol=1e-5)
    np.testing.assert_allclose(mem.weights.numpy(), weights, atol=1e-6)
    np.testing.assert_allclose(mem.times.numpy(), times, atol=1e-4)
    assert mem.weights.sum() == 40  # every frame is counted once
    assert mem.detail_indices().tolist() == detail
    out = mem.read()  # DAM (the real frames' tokens), then the CSM
    torch.testing.assert_close(out[:10], frames[detail].reshape(10, 8))
    torch.testing.assert_close(out[10:], mem.centroids)


def test_readout_size_is_fixed_and_padded_before_enough_frames():
    mem = FlashMemory(EQUAL_TO_CLAM, 10, 4)
    assert mem.read().shape == (20, 4) and not mem.read().any()  # nothing seen: all padding
    mem.write(torch.ones(10, 4))
    out = mem.read()
    assert out.shape == (20, 4)
    assert out[:10].eq(1).all() and out[10].eq(1).all() and not out[11:].any()  # 1 frame, 1 centroid, padding


def test_readout_stays_fixed_over_10k_frames_and_the_bank_grows_on_the_host():
    config = FlashMemoryConfig(clusters=4, detail_frames=1, iters=3)
    mem = FlashMemory(config, 2, 3)
    frames = torch.randn(10_000, 2, 3, generator=torch.Generator().manual_seed(1))
    sizes = set()
    for i, f in enumerate(frames):
        mem.write(f)
        if i % 997 == 996:
            sizes.add((tuple(mem.read().shape), mem.state_bytes))
    assert sizes == {((6, 3), (4 * 3 + 4 + 4) * 4)}  # the read-out and the CSM never grow
    assert mem.bank_bytes == 10_000 * 3 * 3 * 4  # the bank does (host memory, as the original)
    assert mem.weights.sum() == 10_000


def test_flash_readouts_is_the_streaming_memory_at_each_read():
    frames = torch.randn(30, 10, 6, generator=torch.Generator().manual_seed(2))
    got = flash_readouts(EQUAL_TO_CLAM, frames, torch.tensor([0, 12, 29, 12]))
    mem = FlashMemory(EQUAL_TO_CLAM, 10, 6)
    want = {}
    for t, f in enumerate(frames):
        mem.write(f)
        want[t] = mem.read()
    for b, t in enumerate([0, 12, 29, 12]):
        torch.testing.assert_close(got[b], want[t])
    with pytest.raises(ValueError, match="outside the clip"):
        flash_readouts(EQUAL_TO_CLAM, frames, torch.tensor([30]))


def test_budgets():
    assert EQUAL_TO_CLAM.tokens(10) == 20  # CLAM's 20 memory tokens
    assert NATIVE_LIKE.tokens(10) == 60 + 300
    with pytest.raises(ValueError):
        FlashMemoryConfig(low="max")


def test_native_like_budget_through_the_train_config():
    """``--set num_m_tokens=360 --set flash_clusters=60 --set flash_detail_frames=30`` gives the native-like memory."""
    from flownar.data.chat import ChatTokenizer
    from flownar.data.tokenizer import train_word_tokenizer
    from flownar.train.config import TrainConfig
    from flownar.train.model import build_model

    tok = train_word_tokenizer(["you take the cup"])
    cfg = TrainConfig(
        system="flash-vstream", model_size="micro", num_m_tokens=360, flash_clusters=60, flash_detail_frames=30
    )
    model, _ = build_model(cfg, ChatTokenizer(tok, 10, 360), feature_dim=8)
    assert model.config.flash_config == NATIVE_LIKE and model.clam is None
    with pytest.raises(ValueError, match="reads out 20 tokens"):
        build_model(
            TrainConfig(system="flash-vstream", model_size="micro", num_m_tokens=360, flash_clusters=10),
            ChatTokenizer(tok, 10, 360),
            feature_dim=8,
        )
