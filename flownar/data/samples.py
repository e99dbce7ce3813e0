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


@dataclass
class StreamSample:
    """A training / oracle-evaluation sample: messages plus the frames they cover."""

    sample_id: str
    video_uid: str
    messages: list[Message]
    frames: range  # absolute frame indices into the video's feature file
    mem_frame_indices: list[int] = field(default_factory=list)  # clip-relative frame each memory block reads after
    narration_frames: list[int] = field(default_factory=list)  # clip-relative frame of each assistant turn

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

    # clip-relative bookkeeping: where each narration is emitted, and after which frame each memory block reads
    narration_frames, mem_frames, f = [], [], -1
    for m in messages:
        if m.role == "stream":
            f += m.num_frames
        elif m.role == "assistant":
            narration_frames.append(f)
        elif m.role == "memory":
            mem_frames.append(f)
    return StreamSample(stream.stream_id, stream.video_uid, messages, frames, mem_frames, narration_frames)


def build_stream_samples(
    data, split: str, *, use_memory: bool = False, max_num_frames: int = MAX_NUM_FRAMES, seed: int | None = 0, **kwargs
) -> list[StreamSample]:
    """Every narration-stream sample of a split of a :class:`~flownar.data.readers.FlowNarData`."""
    return [
        make_stream_sample(
            s,
            data.videos[s.video_uid],
            data.fps,
            use_memory=use_memory,
            max_num_frames=max_num_frames,
            seed=seed,
            **kwargs,
        )
        for s in data.streams(split)
    ]


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
    "StreamSample",
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
