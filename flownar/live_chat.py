"""``flownar chat``: narrate a stream live and answer what is typed while it plays.

The stream is a feature file (``(T, 10, D)``, as FlowNar-Data stores a video) or a video file encoded frame by frame
by the SigLIP tower. Frames are pushed at the video clock times ``speed`` (``speed=0``: as fast as they come); every
line typed (read on a separate thread) is asked after the next frame (:meth:`flownar.stream.Narrator.ask`) and its
answer printed at once, while narration goes on. The end of the input (Ctrl-D) stops asking, not the stream.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from pathlib import Path

FEATURE_SUFFIXES = (".pt", ".safetensors")


def _frames(source: Path, vision, fps: float, model, checkpoint):
    """Frame features one at a time: from a feature file, or a video encoded by the tower ``vision``."""
    from .checkpoint import check_compatible

    if source.suffix in FEATURE_SUFFIXES:
        from .data.features import read_feature_tensor

        x = read_feature_tensor(source)
        if x.ndim != 3:
            raise ValueError(f"{source}: expected frame features (T, tokens, D), found shape {tuple(x.shape)}")
        check_compatible(model, x.shape[1], x.shape[2], checkpoint, source)
        for i, f in enumerate(x):
            yield i / fps, f.float()
        return
    if vision is None:
        raise ValueError(f"{source}: a video needs the vision tower the model was trained on (--vision)")
    from .video import FrameEncoder, read_frames

    encoder = FrameEncoder(vision)
    check_compatible(model, encoder.tokens_per_frame, encoder.hidden_size, checkpoint, f"the vision tower {vision}")
    for t, img in read_frames(source, fps, encoder.image_size):
        yield t, encoder.encode(img[None])[0]


def _read_lines(stream, out: queue.Queue) -> None:
    for line in stream:
        if line.strip():
            out.put(line.strip())
    out.put(None)  # the end of the input


def chat(
    source,
    checkpoint,
    vision=None,
    *,
    speed: float = 1.0,
    fps: float = 2.0,
    lines=None,
    say=print,
    **narrator_kwargs,
) -> dict:
    """Play ``source`` into the checkpoint's narrator, asking each line typed on standard input after the frame it
    arrives at (``lines``: given in advance instead, all asked after the first frame); ``say`` gets every narration
    and answer as a printable line. Returns ``{"frames", "narrations", "answers"}``."""
    from .checkpoint import load_trained
    from .stream import Narrator

    source, checkpoint = Path(source), Path(checkpoint)
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such video or feature file")
    if speed < 0:
        raise ValueError(f"--speed must be >= 0 (0: as fast as possible), got {speed}")
    model, chat_tok = load_trained(checkpoint)
    narrator = Narrator(model, chat_tok, **narrator_kwargs)
    narrator.reset()
    typed: queue.Queue = queue.Queue()
    if lines is None:  # typed while it plays
        threading.Thread(target=_read_lines, args=(sys.stdin, typed), daemon=True).start()
    else:  # given in advance (scripts, tests): asked one after each frame from the first on
        _read_lines(lines, typed)
    open_input, frames, t0 = True, 0, time.perf_counter()
    for t, feats in _frames(source, vision, fps, model, checkpoint):
        if speed > 0:
            time.sleep(max(0.0, t / speed - (time.perf_counter() - t0)))
        ev = narrator.push(feats)
        frames += 1
        if ev is not None:
            say(f"[{t:7.1f} s] {ev.text}")
        while open_input:
            try:
                question = typed.get_nowait()
            except queue.Empty:
                break
            if question is None:
                open_input = False
                break
            ans = narrator.ask(question)
            say(f"[{t:7.1f} s] Q: {question} A: {ans.text}")
    ev = narrator.finish()
    if ev is not None:
        say(f"[{(frames - 1) / fps:7.1f} s] {ev.text}")
    return {"frames": frames, "narrations": len(narrator.events), "answers": len(narrator.answers)}
