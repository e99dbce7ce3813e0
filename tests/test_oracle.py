"""Oracle (teacher-forcing) metrics: hand-computed turns, and the look-ahead plumbing on real models."""

import math
from pathlib import Path

import pytest
import torch

from flownar.data.chat import ChatTokenizer
from flownar.data.readers import Narration, NarrationStream, VideoInfo
from flownar.data.samples import DEFAULT_SYSTEM_PROMPT, NARRATION_INSTRUCTIONS, make_stream_sample
from flownar.data.tokenizer import train_word_tokenizer
from flownar.eval.oracle import OracleEvaluator, aggregate, sample_summary, turn_metrics
from flownar.models import FlowNarForCausalLM, config_for
from flownar.stream import Narrator

S, SPEAK = 7, 9  # silent and speak ids for the hand cases


def lm(labels, argmax):
    """Logits over 4 tokens whose argmax is ``argmax`` with p(label) chosen so that CE is known."""
    logits = torch.zeros(len(labels), 4)
    for i, a in enumerate(argmax):
        logits[i, a] = 1.0
    return logits, torch.tensor(labels)


def test_on_time_turn():
    logits, labels = lm([0, 1, 2], [0, 1, 3])  # two right, then wrong: c = 2
    t = turn_metrics(logits, labels, torch.tensor([S, S, S, SPEAK]), S, is_last=False)
    assert t.frame_diff == 0
    assert t.fluency == pytest.approx((4 + 2) / (4 + 3))
    assert t.lm_correctness == pytest.approx(2 / 3)
    # CE: rows 0,1 have p(label) = e/(e+3); row 2 has p = 1/(e+3)
    e = math.e
    ce = (2 * -math.log(e / (e + 3)) + -math.log(1 / (e + 3))) / 3
    assert t.lm_ppl == pytest.approx(math.exp(ce), rel=1e-5)


def test_early_turn():
    logits, labels = lm([0, 1, 2], [0, 1, 2])
    t = turn_metrics(logits, labels, torch.tensor([S, SPEAK, S, S]), S, is_last=False)
    assert t.frame_diff == 2 and t.fluency == pytest.approx((4 - 2) / 7) and t.lm_correctness == 1.0


def test_late_turn_uses_the_look_ahead_once():
    calls = []
    logits, labels = lm([0, 1, 2], [0, 1, 2])
    t = turn_metrics(
        logits, labels, torch.tensor([S, S, S, S]), S, is_last=False, look_ahead=lambda: calls.append(1) or -3
    )
    assert t.frame_diff == -3 and t.fluency == pytest.approx(3 / 7) and calls == [1]
    last = turn_metrics(
        logits,
        labels,
        torch.tensor([S, S, S, S]),
        S,
        is_last=True,
        look_ahead=lambda: pytest.fail("the last turn has no look-ahead"),
    )
    assert last.frame_diff == 0 and last.fluency == pytest.approx(3 / 7)


def test_turn_without_decisions_and_summary():
    logits, labels = lm([0], [3])
    t0 = turn_metrics(logits, labels, torch.tensor([], dtype=torch.long), S, is_last=False)
    assert t0.frame_diff is None and t0.fluency is None and t0.lm_correctness == 0.0
    l2, y2 = lm([0, 1, 2], [0, 1, 2])
    t1 = turn_metrics(l2, y2, torch.tensor([S, SPEAK, S, S]), S, is_last=False)  # diff 2
    t2 = turn_metrics(l2, y2, torch.tensor([S, S, S, S]), S, is_last=False, look_ahead=lambda: -1)
    s = sample_summary([t0, t1, t2], fps=2.0)
    assert s["time_diff"] == pytest.approx((2 + 1) / 2 / 2.0)  # mean |diff| over turns with decisions, in s
    assert s["fluency"] == pytest.approx((2 / 7 + 3 / 7) / 2)
    assert s["lm_correctness"] == pytest.approx((0 + 1 + 1) / 3)
    agg = aggregate([s, {**s, "lm_ppl": 3.0}])
    assert agg["samples"] == 2 and agg["lm_ppl"] == pytest.approx((s["lm_ppl"] + 3.0) / 2)


# ------------------------------------------------------------------ on models
TEXTS = [
    "You open the fridge.",
    "You take the jar.",
    "You put down the knife.",
    "You wash the cup.",
    DEFAULT_SYSTEM_PROMPT,
    *NARRATION_INSTRUCTIONS,
]


class AlwaysSilent(torch.nn.Module):
    def __init__(self, vocab, silent):
        super().__init__()
        self.vocab, self.silent = vocab, silent

    def forward(self, h):
        out = torch.zeros(*h.shape[:-1], self.vocab)
        out[..., self.silent] = 10.0
        return out


@pytest.mark.parametrize("system", ["videollm-online", "videollm-mod", "flownar-c", "flownar", "streaming-vlm"])
def test_look_ahead_on_models(system):
    tok = train_word_tokenizer(TEXTS)
    chat = ChatTokenizer(tok, frame_num_tokens=10 if system == "videollm-mod" else 3, num_m_tokens=4)
    torch.manual_seed(0)
    model = FlowNarForCausalLM(config_for(system, chat, 16, size="micro", clam_dropout=0.0)).eval()
    times = (1.0, 3.0, 4.0, 7.0)  # frames 2, 6, 8, 14 -> turns of 4, 2 and 6 frames after the first
    stream = NarrationStream("v", "v", [Narration(t, x) for t, x in zip(times, TEXTS[:4])])
    s = make_stream_sample(stream, VideoInfo("v", 20.0, Path("x")), 2.0, use_memory=model.config.use_memory, seed=None)
    enc = chat.encode(s)
    frames = torch.randn(s.num_frames, chat.frame_num_tokens, 16)
    ev = OracleEvaluator(model, chat)
    turns = ev.sample(enc, frames)
    assert len(turns) == 4 and turns[0].frame_diff is None
    assert all(math.isfinite(t.lm_ppl) for t in turns)
    # a model that never speaks: every non-last turn goes to the look-ahead, which appends
    # min(next turn's frames, n_v - 1) frames and never fires
    model.lm_head = AlwaysSilent(model.config.vocab_size, chat.silent_id)
    turns = ev.sample(enc, frames)
    assert [t.n_v for t in turns] == [0, 4, 2, 6]
    assert [t.frame_diff for t in turns] == [None, -min(2, 3), -min(6, 1), 0]


def test_teacher_forcing_table_labels_the_papers_dataset():
    import numpy as np

    from flownar.eval.tables import teacher_forcing_table

    ours = {"lm_ppl": 3.0, "time_diff": 1.5, "fluency": 0.4, "lm_correctness": 0.5}
    t = teacher_forcing_table({"videollm-online": ours, "dcm-only": ours})
    assert t.loc["VideoLLM-online", "paper (Ego4D): LM-PPL"] == 2.40  # the 1+3x3 row, from the resources CSV
    assert t.loc["VideoLLM-online", "paper (Ego4D): TimeDiff (s)"] == 2.05
    assert np.isnan(t.loc["DCM only (no CLAM)", "paper (Ego4D): LM-PPL"])  # not in the paper
    assert not any(c.startswith("paper:") for c in t.columns)


def _sample_for(system, frame_num_tokens=3, **kw):
    tok = train_word_tokenizer(TEXTS)
    chat = ChatTokenizer(tok, frame_num_tokens=frame_num_tokens, num_m_tokens=4)
    torch.manual_seed(0)
    model = FlowNarForCausalLM(config_for(system, chat, 16, size="micro", clam_dropout=0.0, **kw)).eval()
    stream = NarrationStream("v", "v", [Narration(t, x) for t, x in zip((1.0, 3.0, 4.0, 7.0), TEXTS[:4])])
    s = make_stream_sample(stream, VideoInfo("v", 20.0, Path("x")), 2.0, use_memory=model.config.use_memory, seed=None)
    enc = chat.encode(s)
    frames = torch.randn(s.num_frames, chat.frame_num_tokens, 16)
    return model, chat, enc, frames


@pytest.mark.parametrize("system", ["videollm-online", "flownar"])  # without and with memory blocks
def test_look_ahead_positions_continue_after_the_turns_last_frame(system):
    """The appended frames take the position ids right after the turn's last frame token, as the original
    (``arange + turn_start + last_idx + 1``) and as a stream that stayed silent: not those of the next GT turn,
    which come after the GT narration, its EOS, the newline and (with memory) the memory block."""
    model, chat, enc, frames = _sample_for(system)
    ev = OracleEvaluator(model, chat)
    plan, _ = ev.look_ahead_logits(enc, frames, 1)
    n = chat.frame_num_tokens
    last_v = int(plan.alive[-1])  # the turn's last frame token is alive (its own segment has not expired)
    m = plan.frame_tokens.shape[0]
    assert plan.position_ids.tolist() == list(range(last_v + 1, last_v + 1 + m * (n + 1)))
    # the next GT turn's first frame sits later: after the narration (and memory block)
    assert int(plan.frame_tokens[0, 0]) - 1 > last_v + 1
    if model.config.use_memory:
        mem = [sp for sp in enc.spans if sp.kind == "memory"]
        assert any(sp.start > last_v and sp.start < int(plan.frame_tokens[0, 0]) for sp in mem)


@pytest.mark.parametrize("system", ["videollm-online", "videollm-mod"])
def test_look_ahead_equals_a_teacher_forced_pass_of_the_silent_stream(system):
    """Without DCM everything before the turn's last frame token stays alive, so the look-ahead is exactly a
    teacher-forced pass over that prefix followed by the appended frames (stay-silent token + frame each)."""
    model, chat, enc, frames = _sample_for(system, frame_num_tokens=10 if system == "videollm-mod" else 3)
    ev = OracleEvaluator(model, chat)
    plan, logits = ev.look_ahead_logits(enc, frames, 1)
    last_v = plan.alive[-1]
    n, m = chat.frame_num_tokens, plan.frame_tokens.shape[0]
    ids = enc.input_ids[: last_v + 1].tolist()
    for _ in range(m):
        ids += [chat.silent_id] + [model.config.v_placeholder_id] * n
    frames_used = int((enc.input_ids[: last_v + 1] == model.config.v_placeholder_id).sum()) // n
    first_appended = int((enc.frame_positions[:, 0] < int(plan.frame_tokens[0, 0])).sum())
    f = torch.cat([frames[:frames_used], frames[first_appended : first_appended + m]])
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([ids]), frames=f).logits[0]
    last = [last_v + (j + 1) * (n + 1) for j in range(m)]
    torch.testing.assert_close(logits, ref[last].float(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("turn", [1, 2])
def test_look_ahead_with_contiguous_positions_equals_the_silent_stream(turn):
    """streaming-vlm (a 3-frame window, so frames leave and positions are re-indexed during the look-ahead): the
    look-ahead's decision logits are those of the streaming engine that stays silent where the turn's narration
    was, frame for frame."""
    model, chat, enc, frames = _sample_for("streaming-vlm", vision_window=3, last_k_narration=1)
    stream = NarrationStream("v", "v", [Narration(t, x) for t, x in zip((1.0, 3.0, 4.0, 7.0), TEXTS[:4])])
    s = make_stream_sample(stream, VideoInfo("v", 20.0, Path("x")), 2.0, use_memory=False, seed=None)
    ev = OracleEvaluator(model, chat)
    plan, logits = ev.look_ahead_logits(enc, frames, turn)
    m = plan.frame_tokens.shape[0]
    assert m >= 1
    at = dict(zip(s.narration_frames, [x.content for x in s.messages if x.role == "assistant"]))
    removed = s.narration_frames[turn]  # the turn's own narration is not there
    nr = Narrator(model, chat, record_logits=True)
    for i in range(removed + 1 + m):
        speak = i in at and i < removed  # the GT schedule before the turn's narration, silent from there
        nr.push(frames[i], speak=speak if i else None, script_text=at.get(i) if speak else None)
    got = torch.stack([fl[-1] for fl in nr.fed_logits[-m:]])
    torch.testing.assert_close(logits, got, rtol=1e-4, atol=1e-4)
    assert nr.counters.deleted_tokens > 0
