"""The model family: presets, DCM mask, placeholders, loss, MoD routing, save/load, learning."""

from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from flownar.checkpoint import load_model
from flownar.data.chat import ChatTokenizer
from flownar.data.readers import Narration, NarrationStream, VideoInfo
from flownar.data.samples import DEFAULT_SYSTEM_PROMPT, NARRATION_INSTRUCTIONS, make_stream_sample
from flownar.data.tokenizer import train_word_tokenizer
from flownar.layout import CachePolicy
from flownar.models import CheckpointError, FlowNarConfig, FlowNarForCausalLM, config_for
from flownar.models.masks import expiry_positions, render_visibility, sample_expiry, visibility
from flownar.systems import learned

TEXTS = [
    "You open the fridge.",
    "You take the jar.",
    "You put down the knife.",
    "You wash the cup.",
    DEFAULT_SYSTEM_PROMPT,
    *NARRATION_INSTRUCTIONS,
]
D = 16  # feature dim (CLAM: D and D/2 multiples of its 8 heads)


@pytest.fixture(scope="module")
def tok():
    return train_word_tokenizer(TEXTS)


def chat_for(tok, n=3, m=4):
    return ChatTokenizer(tok, frame_num_tokens=n, num_m_tokens=m)


def make_sample(use_memory, times=(1.0, 2.5, 4.0, 5.0), texts=None):
    texts = texts or ["You open the fridge.", "You take the jar.", "You put down the knife.", "You wash the cup."]
    stream = NarrationStream("v", "v", [Narration(t, x) for t, x in zip(times, texts)])
    return make_stream_sample(stream, VideoInfo("v", 20.0, Path("x")), 2.0, use_memory=use_memory, seed=None)


def batch_for(model, chat, sample, seed=0):
    enc = chat.encode(sample)
    g = torch.Generator().manual_seed(seed)
    frames = torch.randn(sample.num_frames, chat.frame_num_tokens, D, generator=g)
    cfg = model.config
    expiry = sample_expiry(enc, cfg)
    return dict(
        input_ids=enc.input_ids[None],
        labels=enc.labels[None],
        frames=frames,
        mem_frame_indices=enc.mem_frame_indices,
        expiry=expiry,
    ), enc


def micro_model(tok, system, seed=0, **kw):
    torch.manual_seed(seed)
    chat = chat_for(tok, kw.pop("n", 3), kw.pop("m", 4))
    cfg = config_for(system, chat, D, size="micro", clam_dropout=0.0, **kw)
    return FlowNarForCausalLM(cfg).eval(), chat


def test_presets_differ_only_in_their_fields(tok):
    chat = chat_for(tok)
    a, b = config_for("flownar", chat, D, "micro"), config_for("videollm-online", chat, D, "micro")
    da, db = a.to_dict(), b.to_dict()
    diff = {k for k in da if da[k] != db.get(k)}
    assert diff <= {"system", "dcm", "use_memory", "last_k_narration", "mod"}
    assert (a.dcm, a.use_memory, a.last_k_narration) == (True, True, None)
    assert config_for("flownar-c", chat, D, "micro").last_k_narration == 10
    assert config_for("flownar", chat, D, "micro", last_k_narration=3).last_k_narration == 3
    with pytest.raises(ValueError, match="unknown system"):
        FlowNarConfig(system="gpt")
    svlm = config_for("streaming-vlm", chat, D, "micro")
    flc = config_for("flownar-c", chat, D, "micro")
    d1, d2 = svlm.to_dict(), flc.to_dict()
    # streaming-vlm differs from FlowNar-C only in its visual context: a window instead of DCM + CLAM, positions
    assert {k for k in d1 if d1[k] != d2.get(k)} == {
        "system",
        "dcm",
        "use_memory",
        "vision_window",
        "contiguous_positions",
    }
    assert (svlm.vision_window, svlm.last_k_narration, svlm.contiguous_positions) == (32, 10, True)
    with pytest.raises(ValueError, match="two cache policies"):
        config_for("flownar", chat, D, "micro", vision_window=8)
    with pytest.raises(ValueError, match="no memory blocks"):
        config_for("streaming-vlm", chat, D, "micro", use_memory=True)
    with pytest.raises(ValueError, match="contiguous positions with MoD"):
        config_for("videollm-mod", chat, D, "micro", contiguous_positions=True)


def test_dcm_mask_token_by_token(tok):
    """Rows = queries, '#' = visible. Frame runs and their memory block vanish at their narration's EOS;
    with last_k=1 a narration vanishes at the next narration's EOS."""
    chat = chat_for(tok, n=1, m=1)
    s = make_sample(
        True, times=(1.0, 2.0, 3.0), texts=["You open the fridge.", "You take the jar.", "You wash the cup."]
    )
    enc = chat.encode(s)
    names = tok.convert_ids_to_tokens(enc.input_ids.tolist())
    until = expiry_positions(len(names), enc.spans, CachePolicy(prune_at_narration=True, last_k_narrations=1))
    allowed = visibility(until)
    picture = render_visibility(allowed, [n.replace("\n", "\\n") for n in names])
    frames, mem, narr = enc.spans_of("frames"), enc.spans_of("memory"), enc.spans_of("narration")
    eos = [s.stop - 1 for s in narr]
    for g, run in enumerate(frames):
        for j in range(run.start, run.stop):
            assert allowed[eos[g] - 1, j], picture  # the narration's last text token still sees its segment
            assert not allowed[eos[g], j], picture  # the EOS no longer does
    # memory block b sits before frame run b+1 and lives as long as it
    for b, block in enumerate(mem):
        assert allowed[eos[b + 1] - 1, block.start] and not allowed[eos[b + 1], block.start], picture
    # last_k = 1: narration 0 is visible to narration 1's text, gone from narration 1's EOS on
    assert allowed[eos[1] - 1, narr[0].start] and not allowed[eos[1], narr[0].start], picture
    # permanent: system, user line, the first narration's "\n" after EOS, and causal everywhere
    sys_span = enc.spans_of("system")[0]
    assert bool(allowed[-1, sys_span.start : sys_span.stop].all())
    assert bool((allowed <= torch.tril(torch.ones_like(allowed))).all())
    assert bool(allowed.diagonal().all())
    # frame rows of segment 2 see exactly one earlier narration text (k=1), as streaming keeps
    row = frames[2].start + 1
    seen = [i for i, sp in enumerate(narr) if allowed[row, sp.start]]
    assert seen == [1], picture


def test_no_dcm_is_causal(tok):
    chat = chat_for(tok)
    enc = chat.encode(make_sample(False))
    until = expiry_positions(len(enc.input_ids), enc.spans, CachePolicy())
    L = len(enc.input_ids)
    assert bool((visibility(until) == torch.tril(torch.ones(L, L, dtype=torch.bool))).all())


@pytest.mark.parametrize("system", sorted(learned()))
def test_loss_only_on_labelled_positions(tok, system):
    model, chat = micro_model(tok, system)
    b, enc = batch_for(model, chat, make_sample(model.config.use_memory))
    out = model(**b)
    logits = out.logits[0]
    labels = b["labels"][0]
    learned = labels != -100
    ce = torch.nn.functional.cross_entropy(logits[learned], labels[learned], reduction="none")
    assert torch.allclose(out.loss, ce.mean(), atol=1e-6)
    # perturbing logits at unlabelled positions cannot change the loss
    noisy = logits.clone()
    noisy[~learned] += 100 * torch.randn_like(noisy[~learned])
    loss2, _, _ = model.streaming_loss(noisy[None], b["labels"], b["input_ids"])
    assert torch.allclose(loss2, out.loss)
    # the stream weight scales exactly the <v> positions
    model.config.stream_loss_weight = 3.0
    out3 = model(**b)
    is_v = (b["input_ids"][0] == model.config.v_placeholder_id) & learned
    w = torch.where(is_v[learned], 3.0, 1.0)
    assert torch.allclose(out3.loss, (w * ce).sum() / learned.sum(), atol=1e-6)


def test_placeholders_take_frames_and_memory(tok):
    model, chat = micro_model(tok, "flownar")
    b, enc = batch_for(model, chat, make_sample(True))
    emb = model.joint_embed(b["input_ids"], b["frames"], b["mem_frame_indices"])[0]
    fe = model.frame_embeds(b["frames"])  # (F, N, H)
    assert torch.allclose(emb[enc.frame_positions], fe)
    mem = model.memory_embeds(b["frames"], b["mem_frame_indices"])  # (B, Q, H)
    assert torch.allclose(emb[enc.memory_positions], mem)
    # segment_end reads after the last token of the previous segment's last frame; frame_cls at its CLS
    f = b["mem_frame_indices"]
    clam = model.config.memory_kind
    assert clam.readout_index(model.config, f).tolist() == ((f + 1) * 3 - 1).tolist()
    model.config.memory_readout = "frame_cls"
    assert clam.readout_index(model.config, f).tolist() == (f * 3).tolist()
    # memory block b depends only on frames up to its read-out: changing later frames leaves it unchanged
    model.config.memory_readout = "segment_end"
    frames2 = b["frames"].clone()
    frames2[int(f[0]) + 1 :] += 5.0
    mem2 = model.memory_embeds(frames2, f)
    assert torch.allclose(mem[0], mem2[0], atol=1e-6) and not torch.allclose(mem[1], mem2[1])


def test_mismatched_frames_error(tok):
    model, chat = micro_model(tok, "videollm-online")
    b, _ = batch_for(model, chat, make_sample(False))
    b["frames"] = b["frames"][:-1]
    with pytest.raises(ValueError, match="<v> tokens but frames of shape"):
        model(**b)


def test_mod_routes_top_share_of_each_frame(tok):
    model, chat = micro_model(tok, "videollm-mod", n=10, num_hidden_layers=4)
    layers = model.model.layers
    routed = [l for l in layers if l.router is not None]
    assert len(routed) == len(layers) // 2 and layers[0].router is None and layers[1].router is not None
    b, enc = batch_for(model, chat, make_sample(False))
    layer = layers[1]
    seen = {}

    def hook(mod, args, kwargs, output):
        seen["in"], seen["out"] = args[0] if args else kwargs["hidden_states"], output

    h = layer.register_forward_hook(hook, with_kwargs=True)
    model(**b)
    h.remove()
    fp = enc.frame_positions  # (F, 10)
    x, y = seen["in"][0], seen["out"][0]
    changed = ~torch.isclose(x, y).all(dim=-1)  # tokens the layer actually processed
    per_frame = changed[fp].sum(dim=1)
    assert per_frame.tolist() == [2] * fp.shape[0]  # ceil(0.2 * 10) of every frame
    text = torch.ones(len(x), dtype=torch.bool)
    text[fp.flatten()] = False
    assert bool(changed[text].all())  # every text token is computed
    # gradients reach the router
    model.train()
    model(**b).loss.backward()
    assert layer.router.weight.grad is not None and layer.router.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("system", sorted(learned()))
def test_save_load_round_trip_and_system_check(tok, tmp_path, system):
    model, chat = micro_model(tok, system)
    b, _ = batch_for(model, chat, make_sample(model.config.use_memory))
    model.save_pretrained(tmp_path / system)
    again = AutoModelForCausalLM.from_pretrained(tmp_path / system).eval()
    assert isinstance(again, FlowNarForCausalLM) and again.config.system == system
    assert torch.allclose(model(**b).logits, again(**b).logits, atol=1e-6)
    other = "flownar" if system != "flownar" else "videollm-online"
    with pytest.raises(CheckpointError, match=f"a '{system}' checkpoint, but '{other}' was asked for"):
        load_model(tmp_path / system, expect_system=other)
    assert AutoConfig.from_pretrained(tmp_path / system).model_type == "flownar"


def test_format_version_is_checked(tok, tmp_path):
    model, _ = micro_model(tok, "flownar")
    model.config.flownar_format_version = 999
    model.save_pretrained(tmp_path / "m")
    with pytest.raises(CheckpointError, match="format version 999"):
        load_model(tmp_path / "m")


def test_fingerprint_survives_a_new_field_at_its_default(tok, tmp_path):
    """A config field added later (written at its default by newer code, absent from an older run's file), a
    reordering and another transformers version keep a run's fingerprint; a changed value or weight does not."""
    import json

    from flownar.checkpoint import run_fingerprint

    model, _ = micro_model(tok, "flownar")
    model.save_pretrained(tmp_path / "m")
    cfg_file = tmp_path / "m" / "config.json"
    fp = run_fingerprint(tmp_path / "m")
    cfg = json.loads(cfg_file.read_text())
    assert "vision_window" in cfg  # a field at its default, as newer code writes it
    older = {k: v for k, v in reversed(cfg.items()) if k != "vision_window"}  # as older code wrote it
    cfg_file.write_text(json.dumps(older | {"transformers_version": "0.0.1"}))
    assert run_fingerprint(tmp_path / "m") == fp
    cfg_file.write_text(json.dumps(cfg | {"num_m_tokens": cfg["num_m_tokens"] + 1}))
    assert run_fingerprint(tmp_path / "m") != fp
    cfg_file.write_text(json.dumps(cfg))
    model.lm_head.weight.data[0, 0] += 1
    model.save_pretrained(tmp_path / "m")
    assert run_fingerprint(tmp_path / "m") != fp
    cfg_file.write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json: not a readable flownar config"):
        run_fingerprint(tmp_path / "m")


@pytest.mark.parametrize("system", sorted(learned()))
def test_a_few_steps_lower_the_loss(tok, system):
    model, chat = micro_model(tok, system, seed=1)
    model.train()
    b, _ = batch_for(model, chat, make_sample(model.config.use_memory))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(15):
        loss = model(**b).loss
        first = first if first is not None else float(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(model(**b).loss) < 0.7 * first


def test_clam_gate_starts_with_a_long_memory(tok):
    model, _ = micro_model(tok, "flownar")
    assert torch.allclose(model.clam.gk_proj[1].bias, torch.full_like(model.clam.gk_proj[1].bias, 5.0))
    model2, _ = micro_model(tok, "flownar", clam_gate_bias_init=None)
    assert not torch.allclose(model2.clam.gk_proj[1].bias, torch.full_like(model2.clam.gk_proj[1].bias, 5.0))


def test_clam_update_and_read_equal_step(tok):
    model, _ = micro_model(tok, "flownar")
    clam = model.clam.double()
    x = torch.randn(1, 23, D, dtype=torch.float64)
    mem_step, s_step = clam.step(x, clam.init_state(1, dtype=torch.float64))
    s = clam.init_state(1, dtype=torch.float64)
    for a, b in ((0, 10), (10, 11), (11, 23)):  # frames of uneven length
        s = clam.update(x[:, a:b], s)
    torch.testing.assert_close(s, s_step)
    torch.testing.assert_close(clam.read(s), mem_step)


@pytest.mark.parametrize("system,kw", [("flownar", {}), ("flownar-c", {"last_k_narration": 1}), ("dcm-only", {})])
def test_dcm_block_attention_equals_the_dense_mask(tok, system, kw):
    """The block attention used with sdpa gives the loss and gradients of the dense 4-D visibility mask."""
    from flownar.models.dcm_attention import dcm_blocks, dcm_sdpa
    from flownar.models.masks import additive_mask

    model, chat = micro_model(tok, system, **kw)
    batch, enc = batch_for(model, chat, make_sample(model.config.use_memory))
    expiry = batch.pop("expiry")
    losses, grads = [], []
    for use_blocks in (True, False):
        model.zero_grad()
        extra = (
            {"expiry": expiry} if use_blocks else {"attention_mask": additive_mask(visibility(expiry), torch.float32)}
        )
        out = model(**batch, **extra)
        out.loss.backward()
        losses.append(out.loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(losses[0], losses[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)
    # and the kernel alone, on this sample's expiry, with grouped-query heads
    L = expiry.shape[0]
    q, k, v = torch.randn(1, 4, L, 8), torch.randn(1, 2, L, 8), torch.randn(1, 2, L, 8)
    dense = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=additive_mask(visibility(expiry), torch.float32), enable_gqa=True
    )
    torch.testing.assert_close(dcm_sdpa(q, k, v, dcm_blocks(expiry)), dense, atol=1e-5, rtol=1e-5)


def test_contiguous_block_attention_equals_the_definition(tok):
    """streaming-vlm's block attention with contiguous positions equals the per-query definition (each token at
    its index among the tokens the query sees), with grouped-query heads."""
    from flownar.models.dcm_attention import contiguous_reference, dcm_blocks, dcm_sdpa

    model, chat = micro_model(tok, "streaming-vlm", vision_window=3, last_k_narration=1)
    batch, enc = batch_for(model, chat, make_sample(False))
    expiry = batch["expiry"]
    L = expiry.shape[0]
    assert int((expiry < L).sum()) > L // 4  # frames and narrations do leave
    rope = model.model.rotary_emb(torch.zeros(1, 1), torch.arange(L)[None])
    q, k, v = torch.randn(1, 4, L, 8), torch.randn(1, 2, L, 8), torch.randn(1, 2, L, 8)
    rope = tuple(t[..., :8] for t in rope)
    got = dcm_sdpa(q, k, v, dcm_blocks(expiry), rope=rope)
    torch.testing.assert_close(got, contiguous_reference(q, k, v, expiry, rope), atol=1e-5, rtol=1e-5)


def test_vision_window_expiry_follows_the_frame_steps(tok):
    """Frame f's tokens (its separator, its <v> run, a run's closing token) expire where frame f + W's step starts:
    its ',' or, after a narration, that narration's EOS."""
    from flownar.models.masks import frame_steps

    model, chat = micro_model(tok, "streaming-vlm", vision_window=2, last_k_narration=None)
    enc = chat.encode(make_sample(False))
    steps = frame_steps(enc.spans, enc.frame_positions)
    until = sample_expiry(enc, model.config)
    ids = enc.input_ids
    for f, (step, first, stop) in enumerate(steps):
        assert int(ids[first]) in (chat.silent_id, chat.open_id)
        assert bool((ids[first + 1 : first + 1 + chat.frame_num_tokens] == chat.v_id).all())
        if f:
            assert int(ids[step]) in (chat.silent_id, chat.eos_id)
        expected = steps[f + 2][0] if f + 2 < len(steps) else len(ids)
        assert bool((until[first:stop] == expected).all())
    # only frame tokens expire without a narration window
    owned = torch.zeros(len(ids), dtype=torch.bool)
    for _, first, stop in steps:
        owned[first:stop] = True
    assert bool((until[~owned] == len(ids)).all())
