"""GPU-only checks (skipped without CUDA; `make gpu-check` runs them on a GPU machine): the captured step's CUDA
graphs against the eager engine, and the streaming engine against the teacher-forced pass, on the device."""

import pytest
import torch
from test_stream import D, micro, replay, sample, tok  # noqa: F401  (tok is a fixture)

from flownar.models.masks import sample_expiry
from flownar.stream import Narrator

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _run(model, chat, s, frames, **kw):
    narrator = Narrator(model, chat, record_logits=True, **kw)
    replay(narrator, s, frames)
    return narrator


SYSTEMS = {  # streaming-vlm with a 3-frame window, so that frames leave (and keys are re-rotated) mid-clip
    "flownar-c": {"last_k_narration": 2},
    "streaming-vlm": {"last_k_narration": 2, "vision_window": 3},
}


@pytest.mark.parametrize("system", sorted(SYSTEMS))
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 5e-2)])
def test_captured_graphs_equal_the_eager_step_on_gpu(tok, dtype, tol, system):  # noqa: F811
    model, chat = micro(tok, system, **SYSTEMS[system])
    model = model.to("cuda", dtype)
    s = sample(model.config.use_memory)
    frames = torch.randn(s.num_frames, chat.frame_num_tokens, D, generator=torch.Generator().manual_seed(5))
    frames = frames.to("cuda", dtype)
    eager = _run(model, chat, s, frames, cache_capacity=8)  # the same capacities (state_size counts them)
    captured = _run(model, chat, s, frames, capture=True, cache_capacity=8)
    step = captured.step_weights.compiled
    assert step.graphs and step.captures >= 3  # several shapes were captured and replayed
    assert captured.fed_ids == eager.fed_ids and captured.state_size() == eager.state_size()
    torch.testing.assert_close(torch.cat(captured.fed_logits), torch.cat(eager.fed_logits), atol=tol, rtol=tol)


@pytest.mark.parametrize("system", ["flownar", "streaming-vlm"])
@pytest.mark.parametrize("capture", [False, True])
def test_streaming_equals_teacher_forced_on_gpu(tok, capture, system):  # noqa: F811
    model, chat = micro(tok, system, **SYSTEMS.get(system, {}))
    model = model.to("cuda")
    s = sample(model.config.use_memory)
    enc = chat.encode(s)
    frames = torch.randn(s.num_frames, chat.frame_num_tokens, D, generator=torch.Generator().manual_seed(1)).cuda()
    cfg = model.config
    expiry = sample_expiry(enc, cfg).cuda()
    with torch.no_grad():
        ref = model(
            input_ids=enc.input_ids[None].cuda(),
            frames=frames,
            mem_frame_indices=enc.mem_frame_indices.cuda(),
            expiry=expiry,
        ).logits[0]
    narrator = _run(model, chat, s, frames, capture=capture)
    L = len(enc.input_ids)
    assert narrator.fed_ids == enc.input_ids[: L - 1].tolist()
    torch.testing.assert_close(torch.cat(narrator.fed_logits), ref[: L - 1], atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("system", sorted(SYSTEMS))
def test_flash_attention_path_on_gpu(tok, system):  # noqa: F811
    """With flash-attn installed, the captured step in bf16 uses flash_attn_with_kvcache, and gives the eager
    step's logits (bf16 tolerance) and its stand-in's (tests/flash_standin.py: the semantics the CPU tests assume)."""
    pytest.importorskip("flash_attn")
    from flash_standin import flash_attn_with_kvcache as standin

    model, chat = micro(tok, system, **SYSTEMS[system])
    model = model.to("cuda", torch.bfloat16)
    s = sample(model.config.use_memory)
    frames = torch.randn(s.num_frames, chat.frame_num_tokens, D, generator=torch.Generator().manual_seed(7))
    frames = frames.to("cuda", torch.bfloat16)
    eager = _run(model, chat, s, frames, cache_capacity=8)
    captured = _run(model, chat, s, frames, capture=True, cache_capacity=8)
    assert captured.step_weights.compiled.flash is not None
    assert captured.fed_ids == eager.fed_ids
    torch.testing.assert_close(torch.cat(captured.fed_logits), torch.cat(eager.fed_logits), atol=5e-2, rtol=5e-2)
    q = torch.randn(1, 3, 8, 64, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, 2, 40, 64, device="cuda", dtype=torch.bfloat16).transpose(1, 2)  # the cache's layout, viewed
    v = torch.randn(1, 2, 40, 64, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    lens = torch.tensor([17], dtype=torch.int32, device="cuda")
    real = captured.step_weights.compiled.flash(q, k, v, cache_seqlens=lens, softmax_scale=0.125, causal=True)
    ref = standin(q.cpu(), k.cpu(), v.cpu(), cache_seqlens=lens.cpu(), softmax_scale=0.125, causal=True)
    torch.testing.assert_close(real.cpu().float(), ref.float(), atol=2e-2, rtol=2e-2)
