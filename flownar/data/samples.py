"""From timestamped narrations to streaming conversations (the live1+ sample construction).

A narration at grid time ``t`` is emitted after frame ``t * fps`` (the first frame whose timestamp is >= the raw
time). A sample reads::

    system | stream(1 frame, not learned) | user instruction | assistant_1 | [memory] | stream(n_2) | assistant_2 | ...

Streams carry the frames since the previous narration; the last frame of every learned stream is where the
model must "speak". Memory blocks (CLAM read-outs) sit between a narration and the next stream when the system
uses memory.

The arithmetic is done on integer frame indices instead of float seconds, so a duration that is not on the
0.5-s grid cannot produce a zero-frame stream; on the grid it is identical to the original's
``ceil_t(x) = min(max(ceil(2x)/2, 0), duration)``.

Deviation (reference 11.4): when two narrations land on the same grid time the later one overwrites the earlier
assistant text. With memory on, the original looks at the *previous element* (the memory block), so the
overwrite is silently lost; here the last assistant message is overwritten in every configuration.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from .readers import EvalClip, Narration, NarrationStream, VideoInfo

DEFAULT_SYSTEM_PROMPT = (
    "A multimodal AI assistant is helping users with some activities. Below is their conversation, "
    "interleaved with the list of video frames received by the assistant."
)
# The first is the original's; the other nine are our own paraphrases (the original list is not reproduced).
NARRATION_INSTRUCTIONS = (
    "Please concisely narrate the video in real time.",
    "Narrate what happens in the video as it happens, briefly.",
    "Describe each action in the video concisely while it plays.",
    "Give a short live narration of the video.",
    "As the video streams, tell me concisely what is being done.",
    "Keep me informed about each action in the video, in real time and briefly.",
    "Narrate the activity in the video step by step as it unfolds.",
    "Briefly describe what you see being done, as soon as it is done.",
    "Provide a concise real-time commentary of the actions in the video.",
    "Tell me, in short sentences, what happens in the video while it plays.",
)
MAX_NUM_FRAMES = 1200  # live1+: 10 minutes at 2 fps


@dataclass
class Message:
    role: str  # "system" | "stream" | "memory" | "user" | "assistant"
    content: str = ""
    num_frames: int = 0  # stream only
    learn: bool = False
    qa: bool = False  # user / assistant: a question asked during the stream / its answer (not a narration)
    silent_end: bool = False  # stream: a question closes the run, so its last frame's decision is "stay silent"


@dataclass(frozen=True)
class Question:
    """A user turn during the stream: asked right after clip-relative ``frame`` (after that frame's narration,
    if any), answered at once with ``answer`` (None: not known, e.g. when a person asks)."""

    frame: int
    text: str
    answer: str | None = None


@dataclass
class StreamSample:
    """A training / oracle-evaluation sample: messages plus the frames they cover."""

    sample_id: str
    video_uid: str
    messages: list[Message]
    frames: range  # absolute frame indices into the video's feature file
    mem_frame_indices: list[int] = field(default_factory=list)  # clip-relative frame each memory block reads after
    narration_frames: list[int] = field(default_factory=list)  # clip-relative frame of each narration
    questions: list[Question] = field(default_factory=list)  # the questions asked in it, in order

    @property
    def num_frames(self) -> int:
        return len(self.frames)


def frame_of(time: float, fps: float, max_frame: int) -> int:
    """The grid frame a narration at ``time`` is emitted after: ceil(time * fps), clamped to [0, max_frame]."""
    return min(max(math.ceil(time * fps - 1e-6), 0), max_frame)


def stream_conversation(
    narrations: list[Narration],
    max_frame: int,
    fps: float,
    use_memory: bool = False,
    max_num_frames: int = MAX_NUM_FRAMES,
) -> tuple[list[Message], range]:
    """Build the stream/assistant(/memory) messages and the absolute frame range of one narration list.

    ``narrations`` must be time-sorted (the readers sort them). Consecutive duplicate texts are skipped; a
    narration on the same grid time as the previous one overwrites it. The conversation is cut before the first
    stream that would take the frame count over ``max_num_frames`` (with the memory block that precedes it).
    """
    if not narrations:
        raise ValueError("stream_conversation: no narrations")
    start = frame_of(narrations[0].time, fps, max_frame)
    last = start - 1
    last_text = None
    msgs: list[Message] = []
    for n in narrations:
        if last >= max_frame:
            break
        if n.text == last_text:
            continue
        t = frame_of(n.time, fps, max_frame)
        if t == last:
            # same grid time: the later narration wins (deviation: also correct when memory is on)
            prev = next(m for m in reversed(msgs) if m.role == "assistant")
            prev.content = n.text
        else:
            msgs.append(Message("stream", num_frames=t - last, learn=True))
            msgs.append(Message("assistant", n.text, learn=True))
            if use_memory:
                msgs.append(Message("memory"))
        last, last_text = t, n.text
    while msgs and msgs[-1].role == "memory":
        msgs.pop()

    # 10-minute cap: cut before the first stream that would exceed it, and drop the memory block before it
    total, keep = 0, len(msgs)
    for i, m in enumerate(msgs):
        if m.role == "stream":
            if total + m.num_frames > max_num_frames and i > 0:
                keep = i - 1 if msgs[i - 1].role == "memory" else i
                break
            total += m.num_frames
    msgs = msgs[:keep]
    n_frames = sum(m.num_frames for m in msgs if m.role == "stream")
    return msgs, range(start, start + n_frames)


def make_stream_sample(
    stream: NarrationStream,
    video: VideoInfo,
    fps: float,
    *,
    use_memory: bool = False,
    max_num_frames: int = MAX_NUM_FRAMES,
    system_prompt: str = DEFAULT_SYSTEM_PROMPT,
    instructions: tuple[str, ...] = NARRATION_INSTRUCTIONS,
    seed: int | None = 0,
) -> StreamSample:
    """A complete sample: system prompt, the 1-frame unlearned first stream, the user instruction, then turns.

    The instruction is drawn from ``instructions`` with a generator seeded by (seed, sample id), so evaluation
    is deterministic; ``seed=None`` always takes the first instruction.
    """
    msgs, frames = stream_conversation(stream.narrations, video.max_frame(fps), fps, use_memory, max_num_frames)
    first = msgs[0]
    assert first.role == "stream" and first.num_frames == 1, "the first narration must sit on a 1-frame stream"
    first.learn = False
    if seed is None:
        instruction = instructions[0]
    else:
        instruction = random.Random(f"{seed}:{stream.stream_id}").choice(instructions)
    messages = [Message("system", system_prompt), first, Message("user", instruction)] + msgs[1:]

    return _sample_from(stream.stream_id, stream.video_uid, messages, frames)


def _sample_from(sample_id: str, video_uid: str, messages: list[Message], frames: range) -> StreamSample:
    """A sample with its clip-relative bookkeeping: where each narration is emitted, after which frame each memory
    block reads, which questions are asked where."""
    narration_frames, mem_frames, questions, f = [], [], [], -1
    for i, m in enumerate(messages):
        if m.role == "stream":
            f += m.num_frames
        elif m.role == "assistant" and not m.qa:
            narration_frames.append(f)
        elif m.role == "memory":
            mem_frames.append(f)
        elif m.role == "user" and m.qa:
            questions.append(Question(f, m.content, messages[i + 1].content))
    return StreamSample(sample_id, video_uid, messages, frames, mem_frames, narration_frames, questions)


def with_questions(sample: StreamSample, questions: list[Question], use_memory: bool) -> StreamSample:
    """``sample`` with each question inserted as a user turn and its answer right after clip-relative frame
    ``q.frame``: after that frame's narration and the memory block that follows it (one is added after a last
    narration, with memory), after earlier questions at that frame; a frame run that a question interrupts is
    split there, its last frame labelled "stay silent" (the question came after the decision). Questions need
    their answers (they are learned)."""
    by_frame: dict[int, list[Question]] = {}
    for q in questions:
        if not 0 <= q.frame < sample.num_frames:
            raise ValueError(
                f"{sample.sample_id}: a question at frame {q.frame}, outside the clip's 0..{sample.num_frames - 1}"
            )
        if not q.text.strip() or not (q.answer or "").strip():
            raise ValueError(f"{sample.sample_id}: a question at frame {q.frame} without text or answer: {q}")
        by_frame.setdefault(q.frame, []).append(q)
    out: list[Message] = []
    f = -1  # the last frame of the messages so far

    def turns(at: int) -> list[Message]:
        return [
            m
            for q in by_frame.pop(at, [])
            for m in (Message("user", q.text, qa=True), Message("assistant", q.answer, learn=True, qa=True))
        ]

    msgs = sample.messages
    for i, m in enumerate(msgs):
        if m.role == "stream":
            while True:  # questions inside the run (not at its last frame) split it
                inside = sorted(t for t in by_frame if f < t < f + m.num_frames)
                if not inside:
                    break
                n = inside[0] - f
                out.append(Message("stream", num_frames=n, learn=m.learn, silent_end=True))
                out += turns(inside[0])
                f += n
                m = Message("stream", num_frames=m.num_frames - n, learn=m.learn, silent_end=m.silent_end)
            out.append(m)
            f += m.num_frames
            continue
        out.append(m)
        after_narration = m.role == "assistant" and not m.qa and i > 0
        nxt = msgs[i + 1] if i + 1 < len(msgs) else None
        if m.role == "memory" or (after_narration and (nxt is None or nxt.role != "memory")):
            if f in by_frame and m.role != "memory" and use_memory:
                out.append(Message("memory"))
            out += turns(f)
    if by_frame:  # a sample ends with a narration, so every frame has a place for its questions
        raise AssertionError(f"{sample.sample_id}: questions left at frames {sorted(by_frame)}")
    return _sample_from(sample.sample_id, sample.video_uid, out, sample.frames)


def build_stream_samples(
    data,
    split: str,
    *,
    use_memory: bool = False,
    max_num_frames: int = MAX_NUM_FRAMES,
    seed: int | None = 0,
    questions: bool = False,
    **kwargs,
) -> list[StreamSample]:
    """Every narration-stream sample of a split of a :class:`~flownar.data.readers.FlowNarData`; ``questions``: with
    the world's questions (:meth:`~flownar.data.readers.FlowNarData.questions`) asked in each sample's frames."""
    asked = data.questions(split) if questions else {}
    out = []
    for s in data.streams(split):
        sample = make_stream_sample(
            s,
            data.videos[s.video_uid],
            data.fps,
            use_memory=use_memory,
            max_num_frames=max_num_frames,
            seed=seed,
            **kwargs,
        )
        qs = [
            Question(round(q.time * data.fps) - sample.frames.start, q.text, q.answer)
            for q in asked.get(s.video_uid, ())
        ]
        qs = [q for q in qs if 0 <= q.frame < sample.num_frames]
        out.append(with_questions(sample, qs, use_memory) if qs else sample)
    return out


def eval_prompt_messages(
    system_prompt: str = DEFAULT_SYSTEM_PROMPT, instruction: str = NARRATION_INSTRUCTIONS[0]
) -> list[Message]:
    """The fixed prompt of the self-conditioned protocol: system, a 1-frame stream, the user line."""
    return [Message("system", system_prompt), Message("stream", num_frames=1), Message("user", instruction)]


__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "NARRATION_INSTRUCTIONS",
    "MAX_NUM_FRAMES",
    "Message",
    "Question",
    "StreamSample",
    "with_questions",
    "EvalClip",
    "frame_of",
    "stream_conversation",
    "make_stream_sample",
    "build_stream_samples",
    "eval_prompt_messages",
]


def preview(messages: list[Message], max_messages: int = 12) -> str:
    """The sample's text with each frame run collapsed to ``[<n frames>]``, for reading."""
    lines = []
    for m in messages[:max_messages]:
        if m.role == "system":
            lines.append(f"<bos>{m.content[:60]}...")
        elif m.role == "stream":
            lines.append(
                f"[{m.num_frames} frame{'s' if m.num_frames != 1 else ''}{'' if m.learn else ', not learned'}]"
            )
        elif m.role == "memory":
            lines.append("[memory block]")
        elif m.role == "user":
            lines.append(f"User: {m.content}")
        else:
            lines.append(f"Assistant: {m.content}<eos>")
    if len(messages) > max_messages:
        lines.append(f"... ({len(messages) - max_messages} more messages)")
    return "\n".join(lines)
