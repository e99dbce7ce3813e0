"""Questions during the stream (a user turn at any frame, answered at once): the engine sees exactly what a
teacher-forced pass sees, for every system, with questions at the first frame, mid-run, right after a narration
and at the last frame; the simulator counts the engine's cache; batched streams equal each stream alone."""

from pathlib import Path

import pytest
import torch

from flownar.data.chat import IGNORE_INDEX, ChatTokenizer
from flownar.data.readers import Narration, NarrationStream, VideoInfo
from flownar.data.samples import (
    DEFAULT_SYSTEM_PROMPT,
    NARRATION_INSTRUCTIONS,
    Message,
    Question,
    _sample_from,
    make_stream_sample,
    with_questions,
)
from flownar.data.tokenizer import train_word_tokenizer
from flownar.drive import drive_streams, narrators_for
from flownar.efficiency.accounting import Layout, simulate_stream
from flownar.models import FlowNarForCausalLM, config_for
from flownar.models.masks import sample_expiry
from flownar.stream import Narrator
from flownar.systems import learned

NARRATIONS = ["You open the fridge.", "You take the jar.", "You put down the knife.", "You wash the cup."]
TIMES = (1.0, 2.5, 4.5, 7.0)  # frames 2 (the first, clip frame 0), 5, 9, 14 -> clip frames 0, 3, 7, 12
ASKED = [
    Question(0, "What is held now?", "The jar."),  # the first frame, after the forced narration
    Question(2, "What was just done?", "You open the fridge."),  # mid-run: splits the frame run
    Question(3, "Where is the knife?", "In the drawer."),  # right after a narration (and its memory block)
    Question(3, "How many cups?", "Two."),  # a second question at the same frame
    Question(5, "What is in the fridge?", "The jar."),
    Question(12, "What was put down last?", "The knife."),  # the last frame, after its narration
]
D = 16


@pytest.fixture(scope="module")
def tok():
    texts = [*NARRATIONS, DEFAULT_SYSTEM_PROMPT, *NARRATION_INSTRUCTIONS, *(f"{q.text} {q.answer}" for q in ASKED)]
    return train_word_tokenizer(texts)


def micro(tok, system, **kw):
    torch.manual_seed(0)
    chat = ChatTokenizer(tok, frame_num_tokens=10 if system == "videollm-mod" else 3, num_m_tokens=4)
    cfg = config_for(system, chat, D, size="micro", clam_dropout=0.0, **kw)
    return FlowNarForCausalLM(cfg).eval(), chat


def qa_sample(use_memory, questions=ASKED):
    stream = NarrationStream("v", "v", [Narration(t, x) for t, x in zip(TIMES, NARRATIONS)])
    s = make_stream_sample(stream, VideoInfo("v", 20.0, Path("x")), 2.0, use_memory=use_memory, seed=None)
    return with_questions(s, questions, use_memory)


def replay(narrator, s, frames):
    """Feed the sample's frames with its narration schedule, texts and answers forced."""
    texts = [m.content for m in s.messages if m.role == "assistant" and not m.qa]
    at = dict(zip(s.narration_frames, texts))
    narrator.reset()
    for i in range(s.num_frames):
        narrator.push(frames[i], speak=(i in at) if i else None, script_text=at.get(i))
        for q in s.questions:
            if q.frame == i:
                narrator.ask(q.text, answer=q.answer)


def teacher_forced(model, chat, s, frames):
    enc = chat.encode(s)
    with torch.no_grad():
        out = model(
            input_ids=enc.input_ids[None],
            frames=frames,
            mem_frame_indices=enc.mem_frame_indices,
            expiry=sample_expiry(enc, model.config),
        )
    return enc, out.logits[0]


def test_questions_go_where_they_are_asked(tok):
    s = qa_sample(use_memory=True)
    roles = [(m.role, m.qa, m.num_frames, m.silent_end) for m in s.messages if m.role != "system"]
    assert roles[:9] == [
        ("stream", False, 1, False),
        ("user", False, 0, False),  # the instruction
        ("assistant", False, 0, False),  # narration 0 at frame 0
        ("memory", False, 0, False),
        ("user", True, 0, False),  # the question at frame 0: after the narration and its memory block
        ("assistant", True, 0, False),
        ("stream", False, 2, True),  # frames 1-2, then the question at frame 2 closes the run
        ("user", True, 0, False),
        ("assistant", True, 0, False),
    ]
    assert s.questions == ASKED and s.narration_frames == [0, 3, 7, 12]
    # a memory block is added after the last narration when a question follows it
    assert s.mem_frame_indices == [0, 3, 7, 12]
    enc = ChatTokenizer(tok, 3, 4).encode(s)
    assert [sp.kind for sp in enc.spans].count("question") == len(ASKED)
    assert [sp.kind for sp in enc.spans].count("answer") == len(ASKED)
    # the run a question closes is labelled "stay silent" at its last frame; the question itself is not learned
    chat = ChatTokenizer(tok, 3, 4)
    closed = [sp for sp in enc.spans if sp.kind == "frames"][1]
    assert int(enc.labels[closed.stop - 2]) == chat.silent_id
    for sp in enc.spans_of("question"):
        assert (enc.labels[sp.start - 1 : sp.stop - 1] == IGNORE_INDEX).all()
    for sp in enc.spans_of("answer"):
        assert (enc.labels[sp.start - 1 : sp.stop - 1] != IGNORE_INDEX).all()


VARIANTS = {
    "flownar-c-k1": ("flownar-c", {"last_k_narration": 1}),
    "streaming-vlm-w3": ("streaming-vlm", {"vision_window": 3, "last_k_narration": 2}),
}


ENGINES = [(s, "static") for s in sorted(learned()) + sorted(VARIANTS)]
ENGINES += [(s, "hf") for s in ("videollm-online", "flownar", "flownar-c-k1", "flash-vstream")]  # the other KV store


@pytest.mark.parametrize("system,engine", ENGINES)
def test_answers_in_the_engine_equal_teacher_forced(tok, system, engine):
    system, kw = VARIANTS.get(system, (system, {}))
    model, chat = micro(tok, system, **kw)
    s = qa_sample(model.config.use_memory)
    frames = torch.randn(s.num_frames, chat.frame_num_tokens, D, generator=torch.Generator().manual_seed(1))
    enc, ref = teacher_forced(model, chat, s, frames)
    narrator = Narrator(model, chat, record_logits=True, engine=engine)
    replay(narrator, s, frames)
    L = len(enc.input_ids)
    assert narrator.fed_ids == enc.input_ids[: L - 1].tolist()  # all but the final EOS (fed with the next frame)
    torch.testing.assert_close(torch.cat(narrator.fed_logits), ref[: L - 1], atol=2e-4, rtol=1e-4)
    assert [a.frame for a in narrator.answers] == [q.frame for q in ASKED]
    assert [a.text for a in narrator.answers] == [q.answer for q in ASKED]


@pytest.mark.parametrize("system", ["videollm-online", "flownar", "flownar-c", "streaming-vlm"])
def test_a_question_at_a_silent_last_frame_then_the_forced_narration(tok, system):
    """Asked at the last frame where the model stays silent: the answer, then ``finish``'s forced narration."""
    model, chat = micro(tok, system)
    s = qa_sample(model.config.use_memory, [])
    msgs = [m for m in s.messages]
    last = msgs.pop()  # the last narration, at the last frame: make that frame silent, ask, then narrate
    msgs[-1] = Message("stream", num_frames=msgs[-1].num_frames, learn=True, silent_end=True)
    q = Question(s.num_frames - 1, "What is held now?", "The jar.")
    msgs += [Message("user", q.text, qa=True), Message("assistant", q.answer, learn=True, qa=True), last]
    t = _sample_from("v", "v", msgs, s.frames)
    frames = torch.randn(t.num_frames, chat.frame_num_tokens, D, generator=torch.Generator().manual_seed(2))
    enc, ref = teacher_forced(model, chat, t, frames)
    narrator = Narrator(model, chat, record_logits=True)
    at = dict(zip(t.narration_frames, [m.content for m in msgs if m.role == "assistant" and not m.qa]))
    for i in range(t.num_frames):
        speak = (i in at and i != t.num_frames - 1) if i else None
        narrator.push(frames[i], speak=speak, script_text=at.get(i))
    narrator.ask(q.text, answer=q.answer)
    narrator.finish(script_text=last.content)
    L = len(enc.input_ids)
    assert narrator.fed_ids == enc.input_ids[: L - 1].tolist()
    torch.testing.assert_close(torch.cat(narrator.fed_logits), ref[: L - 1], atol=2e-4, rtol=1e-4)
    assert narrator.events[-1].forced and narrator.events[-1].frame == t.num_frames - 1


@pytest.mark.parametrize("system", sorted(learned()))
def test_the_simulator_counts_the_engines_cache_with_questions(tok, system):
    model, chat = micro(tok, system)
    s = qa_sample(model.config.use_memory)
    frames = torch.randn(s.num_frames, chat.frame_num_tokens, D)
    text = [chat.tok.convert_tokens_to_ids("▁the")] * 4
    narrator = Narrator(model, chat)
    sizes = []
    for i in range(s.num_frames):
        narrator.push(frames[i], speak=(i in s.narration_frames) if i else None, script_text=text)
        for q in s.questions:
            if q.frame == i:
                narrator.ask(q.text, answer=text)
        sizes.append(narrator.state_size()["tokens"])
    asks = [(q.frame, len(chat.question_ids(q.text))) for q in s.questions]
    tr = simulate_stream(model.config, Layout.from_chat(chat, 4), s.narration_frames, s.num_frames, False, asks)
    assert sizes == tr.frame_tokens_after
    assert tr.answers == len(ASKED) and narrator.counters.narrations == tr.narrations


@pytest.mark.parametrize("system", ["videollm-online", "flownar", "flownar-c", "flash-vstream", "streaming-vlm"])
def test_batched_streams_with_questions_equal_each_stream_alone(tok, system):
    model, chat = micro(tok, system)
    g = torch.Generator().manual_seed(3)
    clips = [torch.randn(n, chat.frame_num_tokens, D, generator=g) for n in (9, 14, 6)]
    asked = [[Question(0, "What is held now?"), Question(4, "What was just done?")], [Question(13, "Where?")], []]
    alone = []
    for frames, qs in zip(clips, asked):
        nr = Narrator(model, chat, max_new_tokens=6)
        nr.narrate(frames, questions=qs)
        alone.append(([(e.frame, e.token_ids) for e in nr.events], [(a.frame, a.token_ids) for a in nr.answers]))
    narrators = narrators_for(model, chat, 2, max_new_tokens=6)

    def job(nr, frames, qs):
        events = yield from nr.clip_steps(frames, qs)
        return [(e.frame, e.token_ids) for e in events], [(a.frame, a.token_ids) for a in nr.answers]

    jobs = [(i, lambda nr, f=f, q=q: job(nr, f, q)) for i, (f, q) in enumerate(zip(clips, asked))]
    results = dict(drive_streams(narrators, jobs))
    assert [results[i] for i in range(len(clips))] == alone


def test_bad_questions_get_clear_errors(tok):
    model, chat = micro(tok, "flownar")
    narrator = Narrator(model, chat)
    with pytest.raises(ValueError, match="push the first frame before asking"):
        narrator.ask("What is held now?")
    narrator.push(torch.randn(3, D))
    with pytest.raises(ValueError, match="an empty question"):
        narrator.ask("  ")
    with pytest.raises(ValueError, match="do not fit in the model's context"):
        narrator.ask("what " * model.config.max_position_embeddings)
    with pytest.raises(ValueError, match="outside the clip's frames 0..2"):
        narrator.narrate(torch.randn(3, 3, D), questions=[Question(3, "What is held now?")])
    s = qa_sample(False, [])
    with pytest.raises(ValueError, match="outside the clip's 0..12"):
        with_questions(s, [Question(13, "Where?", "Here.")], False)
    with pytest.raises(ValueError, match="without text or answer"):
        with_questions(s, [Question(2, "Where?")], False)


@pytest.mark.parametrize("system", ["videollm-online", "flownar", "streaming-vlm"])
def test_mac_formulas_match_the_flop_counter_with_questions(tok, system):
    """As tests/test_efficiency.py's MAC test, with questions asked mid-run, after narrations and at the end."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from flownar.efficiency.accounting import stream_macs

    model, chat = micro(tok, system)
    s = qa_sample(model.config.use_memory)
    frames = torch.randn(s.num_frames, chat.frame_num_tokens, D)
    text = [chat.tok.convert_tokens_to_ids("▁the")] * 4
    narrator = Narrator(model, chat)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        for i in range(s.num_frames):
            narrator.push(frames[i], speak=(i in s.narration_frames) if i else None, script_text=text)
            for q in s.questions:
                if q.frame == i:
                    narrator.ask(q.text, answer=text)
    asks = [(q.frame, len(chat.question_ids(q.text))) for q in s.questions]
    tr = simulate_stream(model.config, Layout.from_chat(chat, 4), s.narration_frames, s.num_frames, False, asks)
    macs = stream_macs(model.config, tr)
    rope = sum(sum(c.values()) for name, c in fc.get_flop_counts().items() if "rotary" in name.lower())
    assert fc.get_total_flops() - rope == 2 * macs["total"]


def test_answer_scoring_and_the_table():
    from flownar.eval.qa import ORACLE, PRIOR, answer_correct, qa_long, qa_table

    assert answer_correct("You take the knife from the drawer.", ["take", "knife"])
    assert not answer_correct("You take the knives.", ["take", "knife"])  # whole words
    assert answer_correct("The cup and the knife.", ["knife", "cup"]) and not answer_correct(
        "The cup.", ["knife", "cup"]
    )
    assert answer_correct("Three times.", ["three times"]) and not answer_correct("Three.", ["three times"])
    assert not answer_correct("anything", [])

    def row(kind, correct, gap_caps, in_view):
        return {
            "type": kind,
            "correct": correct,
            "gap_caps": gap_caps,
            "gap_segments": int(gap_caps * 20),
            "in_view": in_view,
        }

    rec = {
        "flownar": {
            "answers": [row("held", True, 0.1, True), row("held", False, 1.5, False), row("count", True, 2.5, False)]
        }
    }
    refs = {ORACLE: [row("held", True, 0.1, True)], PRIOR: [row("held", False, 0.1, True)]}
    long = qa_long(rec, refs)
    got = long[(long.row == "FlowNar") & (long.group == "all")].iloc[0]
    assert (got.k, got.n) == (2, 3) and got.lo < got.rate < got.hi
    table = qa_table(long)
    assert list(table.index) == ["FlowNar", ORACLE, PRIOR]
    assert table.loc["FlowNar", "held"].startswith("50.0") and table.loc["FlowNar", "gap >=2 caps"].endswith("(n=1)")
    import matplotlib

    matplotlib.use("Agg")
    from flownar.eval.qa import plot_qa

    many = {ORACLE: [row("held", True, 0.1, True)] * 559, PRIOR: [row("held", False, 0.1, True)] * 559}
    plot_qa(qa_long(rec, many))  # rates of 0 and 100 % (interval ends equal to the rate up to rounding) draw


def test_a_smoke_run_trained_with_questions_answers_them(tmp_path, monkeypatch):
    """Training with the world's questions (TrainConfig.questions) puts them in the samples and their words in the
    tokenizer; ``run_qa`` answers every question of the clips through the engine, reuses its file, and the world
    oracle answers every one right."""
    from flownar.checkpoint import load_trained
    from flownar.data.prepare import prepare_dataset
    from flownar.eval.qa import ORACLE, qa_long, reference_rows, run_qa
    from flownar.train.config import train_config
    from flownar.train.loop import train

    monkeypatch.setenv("FLOWNAR_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("FLOWNAR_RUNS_DIR", str(tmp_path / "runs"))
    data = prepare_dataset("ek100", None, "smoke", 0, progress=False)
    cfg = train_config("dcm-only", "smoke", out=str(tmp_path / "run"), model_size="micro", max_steps=2, progress=False)
    cfg.questions = True
    run = train(cfg, resume=False)
    _, chat = load_trained(run)
    assert (
        chat.tok.convert_tokens_to_ids("holding") != chat.tok.unk_token_id
        or chat.tok.convert_tokens_to_ids("▁holding") != chat.tok.unk_token_id
    )
    rec = run_qa(run, data, tmp_path / "qa.json", limit=1, progress=False, max_new_tokens=3)
    asked = sum(1 for a in rec["answers"])
    assert asked > 0 and all(a["predicted"] is not None for a in rec["answers"])
    assert run_qa(run, data, tmp_path / "qa.json", limit=1, progress=False, max_new_tokens=3) == rec  # reused
    long = qa_long({"dcm-only": rec}, reference_rows(data, limit=1))
    oracle = long[(long.row == ORACLE) & (long.group == "all")].iloc[0]
    assert oracle.n == asked and oracle.k == asked

    # flownar chat: a feature file played as fast as possible, the typed lines asked as they come
    import io

    from flownar.live_chat import chat

    uid = data.eval_clips("val")[0].video_uid
    said = []
    feats = data.videos[uid].feature_path
    r = chat(feats, run, speed=0, lines=io.StringIO("What am I holding?\n\nWhat did I just do?\n"), say=said.append)
    assert r["answers"] == 2 and r["frames"] == data.load_features(uid).shape[0]
    assert sum(x.count(" Q: ") for x in said) == 2 and r["narrations"] == len(said) - 2
