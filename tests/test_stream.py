"""The streaming engine: it sees exactly what a teacher-forced pass with the DCM mask sees; its cache is bounded."""

from pathlib import Path

import pytest
import torch

import flownar.drive as drive_module
from flownar.data.chat import ChatTokenizer
from flownar.data.readers import Narration, NarrationStream, VideoInfo
from flownar.data.samples import DEFAULT_SYSTEM_PROMPT, NARRATION_INSTRUCTIONS, make_stream_sample
from flownar.data.tokenizer import train_word_tokenizer
from flownar.drive import drive_streams, narrators_for
from flownar.models import FlowNarForCausalLM, config_for
from flownar.models.masks import sample_expiry
from flownar.stream import Narrator
from flownar.systems import learned

TEXTS = [
    "You open the fridge.",
    "You take the jar.",
    "You put down the knife.",
    "You wash the cup.",
    "You close the fridge.",
    DEFAULT_SYSTEM_PROMPT,
    *NARRATION_INSTRUCTIONS,
]
D = 16


@pytest.fixture(scope="module")
def tok():
    return train_word_tokenizer(TEXTS)


def micro(tok, system, n=3, m=4, **kw):
    torch.manual_seed(0)
    chat = ChatTokenizer(tok, frame_num_tokens=n, num_m_tokens=m)
    cfg = config_for(system, chat, D, size="micro", clam_dropout=0.0, **kw)
    return FlowNarForCausalLM(cfg).eval(), chat


def sample(use_memory):
    times = (1.0, 2.5, 3.0, 5.5, 7.0)
    texts = [
        "You open the fridge.",
        "You take the jar.",
        "You put down the knife.",
        "You wash the cup.",
        "You close the fridge.",
    ]
    stream = NarrationStream("v", "v", [Narration(t, x) for t, x in zip(times, texts)])
    return make_stream_sample(stream, VideoInfo("v", 20.0, Path("x")), 2.0, use_memory=use_memory, seed=None)


def replay(narrator, s, frames):
    """Feed the sample's frames with its narration schedule and texts forced."""
    texts = [m.content for m in s.messages if m.role == "assistant"]
    at = dict(zip(s.narration_frames, texts))
    narrator.reset()
    for i in range(s.num_frames):
        narrator.push(frames[i], speak=(i in at) if i else None, script_text=at.get(i))


@pytest.mark.parametrize("system", sorted(learned()) + ["flownar-c-k1", "flownar-frame-cls", "streaming-vlm-w3"])
def test_streaming_logits_equal_teacher_forced(tok, system):
    kw = {}
    if system == "flownar-c-k1":
        system, kw = "flownar-c", {"last_k_narration": 1}
    if system == "streaming-vlm-w3":  # windows small enough that frames and narrations leave mid-stream
        system, kw = "streaming-vlm", {"vision_window": 3, "last_k_narration": 2}
    if system == "flownar-frame-cls":
        system, kw = "flownar", {"memory_readout": "frame_cls"}
    model, chat = micro(tok, system, n=10 if system == "videollm-mod" else 3, **kw)
    s = sample(model.config.use_memory)
    enc = chat.encode(s)
    frames = torch.randn(s.num_frames, chat.frame_num_tokens, D, generator=torch.Generator().manual_seed(1))
    cfg = model.config
    expiry = sample_expiry(enc, cfg)
    with torch.no_grad():
        ref = model(
            input_ids=enc.input_ids[None], frames=frames, mem_frame_indices=enc.mem_frame_indices, expiry=expiry
        ).logits[0]
    narrator = Narrator(model, chat, record_logits=True)
    replay(narrator, s, frames)
    fed = narrator.fed_ids
    L = len(enc.input_ids)
    # the engine has fed every token but the final EOS (fed with the next frame)
    assert fed == enc.input_ids[: L - 1].tolist()
    got = torch.cat(narrator.fed_logits)
    assert got.shape == ref[: L - 1].shape
    torch.testing.assert_close(got, ref[: L - 1], atol=2e-4, rtol=1e-4)
    assert [e.frame for e in narrator.events] == s.narration_frames


def test_dcm_cache_holds_only_what_the_mask_allows(tok):
    model, chat = micro(tok, "flownar-c", last_k_narration=2)
    s = sample(True)
    frames = torch.randn(s.num_frames, 3, D)
    narrator = Narrator(model, chat)
    replay(narrator, s, frames)
    size = narrator.state_size()
    # after the last narration: no frames, no memory block (both dropped), 2 narrations kept
    assert size.get("tokens_frames", 0) == 0 and size.get("tokens_memory", 0) == 0
    assert sorted(set(n for n in narrator.tags.narration[: narrator.tags.n] if n >= 0)) == [3, 4]
    online, chat2 = micro(tok, "videollm-online")
    n2 = Narrator(online, chat2)
    replay(n2, s, frames)
    # every frame (3 tokens), a "," or "]\n" after each, and a "[" per segment
    assert n2.state_size()["tokens_frames"] == s.num_frames * 3 + s.num_frames + len(s.narration_frames)
    assert size["position"] == n2.state_size()["position"] + 4 * (2 + 4)  # same text, plus the memory blocks


def test_decisions_use_the_two_threshold_rule(tok):
    model, chat = micro(tok, "videollm-online")
    n = Narrator(model, chat, threshold_high=0.8, threshold_low=0.5, avg_duration=2, max_new_tokens=3)
    # make P(silent) exactly controllable: bias the lm_head towards the silent token
    with torch.no_grad():
        model.lm_head.weight.zero_()
        bias_dir = torch.zeros(model.config.hidden_size)
    frames = torch.randn(8, 3, D)
    n.reset()
    n.push(frames[0])  # forced first narration
    logits_silent = []
    for i in range(1, 8):
        ev = n.push(frames[i])
        logits_silent.append(ev is None)
    # with a zero lm_head every token has the same probability: P(silent) = 1/V < 0.5 -> always speaks
    assert not any(logits_silent)
    assert n.counters.unexpected_argmax == 7  # the argmax after zeroing "," is not the speak token (ties)
    assert n.counters.capped >= 1  # no EOS ever wins -> capped narrations are closed, the stream goes on


@pytest.mark.parametrize("system,n_frames", [("flownar", 5_000), ("flownar-c", 2_000)])
def test_bounded_cache_over_long_streams(tok, system, n_frames):
    """Over 5,000 frames (narrating every 8): the visual part of the cache is bounded for FlowNar (only its
    narration text grows) and the whole cache for FlowNar-C. (Longer streams: the simulator, which
    tests/test_efficiency.py holds equal to the engine, and the benchmarks.)"""
    model, chat = micro(tok, system, n=1, m=2)
    narrator = Narrator(model, chat)
    frames = torch.randn(64, 1, D)
    visual, total = [], []
    for i in range(n_frames):
        narrator.push(frames[i % 64], speak=(i % 8 == 0) if i else None, script_text="You wash the cup.")
        if i % 1000 == 995:  # the same phase of the schedule each time
            st = narrator.state_size()
            visual.append(st.get("tokens_frames", 0) + st.get("tokens_memory", 0))
            total.append(st["tokens"])
    assert narrator.pos > n_frames * 2  # positions kept counting
    assert max(visual) == min(visual) <= 8 * 2 + 2 + 4, visual  # one segment + one memory block
    if system == "flownar-c":
        assert max(total) == min(total), total
    else:
        assert total == sorted(total) and total[-1] > total[0]  # narrations accumulate
    assert narrator.counters.narrations == n_frames // 8


def replay_steps(narrator, s, frames):
    """:func:`replay` as a step generator (for drive_streams); returns what the stream fed and its logits."""
    texts = [m.content for m in s.messages if m.role == "assistant"]
    at = dict(zip(s.narration_frames, texts))
    narrator.reset()
    for i in range(s.num_frames):
        yield from narrator.push_steps(frames[i], (i in at) if i else None, at.get(i))
    return list(narrator.fed_ids), torch.cat(narrator.fed_logits), narrator.state_size(), memory_state(narrator)


def memory_state(narrator):
    """CLAM's recurrent state of a narrator's stream (None for the other memories and without memory)."""
    return getattr(narrator.memory_stream, "state", None)


@pytest.mark.parametrize("system", ["videollm-online", "flownar", "flownar-c", "flash-vstream", "streaming-vlm"])
def test_batched_streams_equal_each_stream_alone(tok, system):
    """Three streams on two narrators (so one narrator takes a second clip mid-run), one batched decoder step per
    round: each stream feeds the same tokens, gets the same logits and ends with the same cache (and CLAM state) as
    alone. (streaming-vlm with a 3-frame window: the streams' caches are re-indexed at different moments.)"""
    kw = {"vision_window": 3, "last_k_narration": 2} if system == "streaming-vlm" else {}
    model, chat = micro(tok, system, **kw)
    s = sample(model.config.use_memory)
    clips = [
        torch.randn(s.num_frames, chat.frame_num_tokens, D, generator=torch.Generator().manual_seed(k))
        for k in range(3)
    ]
    alone = []
    for frames in clips:
        narrator = Narrator(model, chat, record_logits=True)
        replay(narrator, s, frames)
        alone.append((narrator.fed_ids, torch.cat(narrator.fed_logits), narrator.state_size(), memory_state(narrator)))
    narrators = narrators_for(model, chat, 2, record_logits=True)
    assert narrators[1].step_weights is narrators[0].step_weights
    rounds = []
    real = drive_module._run_round
    drive_module._run_round = lambda reqs: rounds.append(len(reqs)) or real(reqs)
    try:
        got = dict(drive_streams(narrators, [(k, lambda nr, f=f: replay_steps(nr, s, f)) for k, f in enumerate(clips)]))
    finally:
        drive_module._run_round = real
    assert sorted(got) == [0, 1, 2] and max(rounds) == 2  # batched: two streams per round
    for k, (ids, logits, state, clam_state) in enumerate(alone):
        assert got[k][0] == ids
        torch.testing.assert_close(got[k][1], logits, atol=1e-5, rtol=1e-5)
        assert got[k][2] == state
        if clam_state is not None:  # CLAM's states advanced as one batch end where each stream's alone does
            torch.testing.assert_close(got[k][3], clam_state, atol=1e-5, rtol=1e-5)


def test_compiled_step_equals_the_eager_step(tok):
    """torch.compile of the decoder step (the same _layer code) gives the eager engine's logits and decisions."""
    model, chat = micro(tok, "flownar-c", last_k_narration=2)
    s = sample(True)
    frames = torch.randn(s.num_frames, chat.frame_num_tokens, D, generator=torch.Generator().manual_seed(2))
    runs = []
    for compile in (False, True):
        narrator = Narrator(model, chat, record_logits=True, compile=compile)
        replay(narrator, s, frames)
        runs.append((narrator.fed_ids, torch.cat(narrator.fed_logits), narrator.state_size()))
    assert runs[1][0] == runs[0][0] and runs[1][2] == runs[0][2]
    torch.testing.assert_close(runs[1][1], runs[0][1], atol=1e-5, rtol=1e-5)
    mod, mod_chat = micro(tok, "videollm-mod")
    with pytest.raises(ValueError, match="cannot be compiled"):
        Narrator(mod, mod_chat, compile=True)


@pytest.mark.parametrize("system", ["videollm-online", "flownar-c", "streaming-vlm"])
def test_captured_step_equals_the_eager_step(tok, system):
    """The static-shape step (CUDA graphs on a GPU; on the CPU the same code runs eagerly): keys/values written at a
    tensor of slots, attention over the whole capacity under a mask. Same logits and decisions as the eager step,
    through cache growth (a capacity of 8 doubles several times) and DCM / last-k / window compaction; for
    streaming-vlm with its keys re-rotated at their slots after every eviction (a 3-frame window)."""
    kw = {"videollm-online": {}, "flownar-c": {"last_k_narration": 2}}.get(system, {"last_k_narration": 2})
    if system == "streaming-vlm":
        kw["vision_window"] = 3
    model, chat = micro(tok, system, **kw)
    s = sample(model.config.use_memory)
    frames = torch.randn(s.num_frames, chat.frame_num_tokens, D, generator=torch.Generator().manual_seed(4))
    runs = []
    for capture in (False, True):
        narrator = Narrator(model, chat, record_logits=True, capture=capture, cache_capacity=8)
        replay(narrator, s, frames)
        runs.append((narrator.fed_ids, torch.cat(narrator.fed_logits), narrator.state_size(), narrator.cache))
    assert runs[1][0] == runs[0][0] and runs[1][2] == runs[0][2]
    assert runs[1][3].reallocations >= 2  # the capacity (a static shape of the captured step) changed on the way
    torch.testing.assert_close(runs[1][1], runs[0][1], atol=1e-5, rtol=1e-5)
    mod, mod_chat = micro(tok, "videollm-mod")
    with pytest.raises(ValueError, match="cannot be captured"):
        Narrator(mod, mod_chat, capture=True)


@pytest.mark.parametrize("system", ["flownar-c", "streaming-vlm"])
def test_captured_step_with_flash_attention_equals_the_eager_step(tok, system):
    """The captured step's flash-attn path (used on a GPU in bf16/fp16 when flash-attn is installed): the cache's
    buffers handed over as (1, capacity, kv_heads, hd) views with the cached length, instead of sdpa under a mask.
    Held to the eager step through cache growth and compaction (a 3-frame window for streaming-vlm), with a
    stand-in written from flash-attn's documented semantics (tests/flash_standin.py)."""
    from flash_standin import flash_attn_with_kvcache

    kw = {"last_k_narration": 2, **({"vision_window": 3} if system == "streaming-vlm" else {})}
    model, chat = micro(tok, system, **kw)
    s = sample(model.config.use_memory)
    frames = torch.randn(s.num_frames, chat.frame_num_tokens, D, generator=torch.Generator().manual_seed(6))
    calls = []

    def flash(*args, **kwargs):
        calls.append(kwargs["cache_seqlens"].item())
        return flash_attn_with_kvcache(*args, **kwargs)

    runs = []
    for use_flash in (False, True):
        narrator = Narrator(model, chat, record_logits=True, capture=use_flash, cache_capacity=8)
        if use_flash:
            step = narrator.step_weights.compiled
            assert step.flash is None  # CPU, float32: sdpa unless told
            step.flash = flash
        replay(narrator, s, frames)
        runs.append((narrator.fed_ids, torch.cat(narrator.fed_logits), narrator.state_size()))
    assert runs[1][0] == runs[0][0] and runs[1][2] == runs[0][2]
    assert len(calls) > 10 and max(calls) > 8  # every step went through it, past the first capacity
    torch.testing.assert_close(runs[1][1], runs[0][1], atol=1e-5, rtol=1e-5)


def test_a_graph_is_never_replayed_into_another_cache(tok, monkeypatch):
    """issue 29: the captured step's graphs were keyed on the first layer's key buffer alone. A graph bakes in the
    address of every buffer it writes; here a stand-in graph (no CUDA on the CPU) does what a real one does: replay
    writes into the buffers it was captured on. Two caches (two videos) that share only the first layer's key
    buffer: the second must get its own graph, and its result must be the eager step's on its own buffers."""
    from flownar.engine.kv import StaticKVCache
    from flownar.engine.steps import CapturedStep
    from flownar.engine.weights import StepWeights

    class BakedGraph:  # replays the step on the buffers and inputs it was captured with, as a CUDA graph does
        def __init__(self, step, static, keys, values):
            self.step, self.static, self.keys, self.values = step, static, list(keys), list(values)
            self.out = step._step(*static[:3], self.keys, self.values, *static[3:])

        def replay(self):
            self.out.copy_(self.step._step(*self.static[:3], self.keys, self.values, *self.static[3:]))

    def capture(self, args, cache):
        static = [a.clone() for a in args]
        g = BakedGraph(self, static, cache.keys, cache.values)
        self.captures += 1
        return g, static, g.out

    monkeypatch.setattr(CapturedStep, "_capture", capture)
    model, chat = micro(tok, "videollm-online")
    weights = StepWeights(model, True, capture=True)
    step = CapturedStep(model, weights, graphs=True)
    eager = CapturedStep(model, weights, graphs=False)
    cfg = model.config
    hd = cfg.hidden_size // cfg.num_attention_heads

    def new_cache():
        return StaticKVCache(cfg.num_hidden_layers, cfg.num_key_value_heads, hd, capacity=16)

    x = torch.randn(1, 3, cfg.hidden_size, generator=torch.Generator().manual_seed(1))
    cos, sin = weights.rope(x, 0, 3)
    a = new_cache()
    step(x, cos, sin, a)
    b, b_eager = new_cache(), new_cache()
    b.keys[0] = a.keys[0]  # the first layer's key buffer at the same address (the allocator reuses freed blocks)
    b.lengths = [0] * len(b.keys)
    b_eager.keys[0] = a.keys[0].clone()
    before = [v.clone() for v in a.values]
    got = step(x, cos, sin, b)
    want = eager(x, cos, sin, b_eager)
    torch.testing.assert_close(got, want)
    assert step.captures == 2 and len(step._captured) == 1  # video A's graph dropped with its buffers
    assert all(torch.equal(v, w) for v, w in zip(a.values, before))  # nothing written into video A's cache


def test_folded_grouped_query_attention_equals_enable_gqa(monkeypatch):
    """issue 29: on CUDA no fused sdpa kernel takes grouped-query heads and a mask, so gqa_sdpa folds the query heads
    that share a key/value head into the query length. Held to sdpa's own enable_gqa (batch > 1, a mask with
    -inf), the fold forced on the CPU; the folded call has as many query heads as key heads."""
    import flownar.models.dcm_attention as attention
    from flownar.engine.layer import tail_causal_mask

    g = torch.Generator().manual_seed(3)
    q, k, v = torch.randn(2, 8, 5, 16, generator=g), torch.randn(2, 2, 13, 16, generator=g), torch.randn(2, 2, 13, 16)
    mask = tail_causal_mask(5, 13, q.dtype, q.device)
    mask[:, 2] = float("-inf")  # a key nobody sees (DCM)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3, enable_gqa=True)
    seen = []
    real = attention.F.scaled_dot_product_attention
    monkeypatch.setattr(attention, "FOLD_GQA_ON", ("cpu", "cuda"))

    def spy(q, k, *a, **kw):
        seen.append((q, k, kw))
        return real(q, k, *a, **kw)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", spy)
    got = attention.gqa_sdpa(q, k, v, mask, 0.3)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    ((fq, fk, kw),) = seen
    assert fq.shape == (2, 2, 20, 16) and not kw.get("enable_gqa") and kw["attn_mask"].shape == (20, 13)
    seen.clear()
    torch.testing.assert_close(attention.gqa_sdpa(q, k, v, None, 0.3), real(q, k, v, scale=0.3, enable_gqa=True))
    assert seen[0][2]["enable_gqa"]  # without a mask the fused kernels take GQA as it is: no fold
    kernels = {"FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH", None}
    assert attention.sdpa_backend(q, k, mask) in kernels


@pytest.mark.parametrize("system", ["flownar", "streaming-vlm-w3"])
def test_engine_with_folded_grouped_query_attention_equals_teacher_forced(tok, system, monkeypatch):
    """The engine (eager and captured steps) and the teacher-forced DCM attention with the query heads folded, as
    they run on CUDA: the same parity as unfolded."""
    import flownar.models.dcm_attention as attention

    monkeypatch.setattr(attention, "FOLD_GQA_ON", ("cpu", "cuda"))
    test_streaming_logits_equal_teacher_forced(tok, system)
    if system == "flownar":
        test_captured_step_equals_the_eager_step(tok, "flownar-c")
