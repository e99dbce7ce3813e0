from pathlib import Path

import pytest

from flownar.data.readers import Narration, NarrationStream, VideoInfo
from flownar.data.samples import (
    NARRATION_INSTRUCTIONS,
    frame_of,
    make_stream_sample,
    stream_conversation,
)


def N(*pairs):
    return [Narration(t, x) for t, x in pairs]


def roles(msgs):
    return [(m.role, m.num_frames) if m.role == "stream" else m.role for m in msgs]


def test_frame_of_rounds_up_to_the_grid_and_clamps():
    assert [frame_of(t, 2.0, 10) for t in (0.0, 0.1, 0.5, 0.51, 1.0, 4.99, 9.0)] == [0, 1, 1, 2, 2, 10, 10]
    assert frame_of(-1.0, 2.0, 10) == 0


def test_basic_conversation_and_frame_range():
    msgs, frames = stream_conversation(N((1.2, "a"), (2.6, "b"), (4.0, "c")), max_frame=20, fps=2.0)
    # start = ceil(2.4) = 3; b -> frame 6 (3 frames), c -> frame 8 (2 frames)
    assert roles(msgs) == [("stream", 1), "assistant", ("stream", 3), "assistant", ("stream", 2), "assistant"]
    assert frames == range(3, 9)


def test_memory_entries_between_segments():
    msgs, _ = stream_conversation(N((1.0, "a"), (2.0, "b"), (3.0, "c")), 20, 2.0, use_memory=True)
    assert roles(msgs) == [
        ("stream", 1),
        "assistant",
        "memory",
        ("stream", 2),
        "assistant",
        "memory",
        ("stream", 2),
        "assistant",
    ]  # no trailing memory


@pytest.mark.parametrize("use_memory", [False, True])
def test_same_time_narration_overwrites_previous(use_memory):
    # 2.1 and 2.4 both land on frame 5: the later text wins, with or without memory (the original loses it with memory)
    msgs, frames = stream_conversation(
        N((1.0, "a"), (2.1, "b"), (2.4, "c"), (3.0, "d")), 20, 2.0, use_memory=use_memory
    )
    texts = [m.content for m in msgs if m.role == "assistant"]
    assert texts == ["a", "c", "d"]
    assert frames == range(2, 7)


def test_consecutive_duplicates_are_skipped():
    msgs, _ = stream_conversation(N((1.0, "a"), (2.0, "a"), (3.0, "b"), (4.0, "a")), 20, 2.0)
    assert [m.content for m in msgs if m.role == "assistant"] == ["a", "b", "a"]
    assert roles(msgs)[2] == ("stream", 4)  # the duplicate's frames join the next segment


def test_narrations_beyond_the_video_are_clamped_then_dropped():
    msgs, frames = stream_conversation(N((1.0, "a"), (8.0, "b"), (9.0, "c")), max_frame=10, fps=2.0)
    assert [m.content for m in msgs if m.role == "assistant"] == ["a", "b"]
    assert frames == range(2, 11)


@pytest.mark.parametrize("use_memory", [False, True])
def test_frame_cap_cuts_before_the_stream_that_exceeds_it(use_memory):
    nar = N(*[(float(5 * k), f"t{k}") for k in range(10)])  # 10 frames between narrations
    msgs, frames = stream_conversation(nar, 1000, 2.0, use_memory=use_memory, max_num_frames=35)
    # 1 + 10 + 10 + 10 = 31 frames fit; the next stream would make 41
    assert [m.content for m in msgs if m.role == "assistant"] == ["t0", "t1", "t2", "t3"]
    assert msgs[-1].role == "assistant"
    assert len(frames) == 31 and frames.start == 0


def test_sample_layout_and_bookkeeping():
    stream = NarrationStream("P01_01", "P01_01", N((1.2, "a"), (2.6, "b"), (4.0, "c")))
    s = make_stream_sample(stream, VideoInfo("P01_01", 10.0, Path("x")), 2.0, use_memory=True, seed=0)
    assert roles(s.messages) == [
        "system",
        ("stream", 1),
        "user",
        "assistant",
        "memory",
        ("stream", 3),
        "assistant",
        "memory",
        ("stream", 2),
        "assistant",
    ]
    assert s.messages[1].learn is False and s.messages[5].learn and s.messages[3].learn
    assert s.messages[2].content in NARRATION_INSTRUCTIONS
    assert s.narration_frames == [0, 3, 5]
    assert s.mem_frame_indices == [0, 3]  # the frame each memory block reads after = the previous narration frame
    assert s.frames == range(3, 9)


def test_instruction_choice_is_seeded():
    stream = NarrationStream("v", "v", N((1.0, "a"), (2.0, "b")))
    info = VideoInfo("v", 10.0, Path("x"))
    picks = {make_stream_sample(stream, info, 2.0, seed=s).messages[2].content for s in range(30)}
    assert len(picks) > 1
    assert (
        make_stream_sample(stream, info, 2.0, seed=7).messages[2].content
        == make_stream_sample(stream, info, 2.0, seed=7).messages[2].content
    )
    assert make_stream_sample(stream, info, 2.0, seed=None).messages[2].content == NARRATION_INSTRUCTIONS[0]
