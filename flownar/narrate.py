"""Narrate a video file live: decode, encode and stream each frame into the narrator as it comes.

``narrate_video`` is what ``flownar narrate VIDEO --checkpoint DIR --vision PATH`` runs: frames at 2 fps from
:mod:`flownar.video`, encoded one at a time by the SigLIP tower, pushed into :class:`flownar.stream.Narrator`;
each narration is reported as soon as it is decoded (``on_event``), and at the end JSON, SRT and WebVTT files are
written (the JSON from the first frame on, rewritten after each narration or answer with ``complete: false`` until
the end, so a failure late in a long video keeps what was said). ``asks``: questions ``(time, text)`` asked
during the stream (``--ask 12.5:What is in the drawer?``): each after the first frame at or after its time,
answered at once (:meth:`flownar.stream.Narrator.ask`); the answers go to ``on_event``, the JSON and the subtitles
at their time. With ``realtime=True`` input is paced at the video
clock (frame j is not read before j / fps seconds after the start) and the lag behind that clock is measured.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Cue:
    start: float
    end: float
    text: str


def timestamp(t: float, sep: str) -> str:
    ms = int(round(t * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def cues_from_events(
    times: list[float], texts: list[str], duration: float, max_len: float = 5.0, min_len: float = 0.5
) -> list[Cue]:
    """One cue per narration, from its time to the next narration (at most ``max_len`` s, at least ``min_len``)."""
    cues = []
    for i, (t, text) in enumerate(zip(times, texts)):
        nxt = times[i + 1] if i + 1 < len(times) else max(duration, t + min_len)
        end = min(nxt, t + max_len)
        cues.append(Cue(t, max(end, t + min_len), text.strip()))
    return cues


def to_srt(cues: list[Cue]) -> str:
    return "".join(
        f"{i}\n{timestamp(c.start, ',')} --> {timestamp(c.end, ',')}\n{c.text}\n\n" for i, c in enumerate(cues, 1)
    )


def to_vtt(cues: list[Cue]) -> str:
    return "WEBVTT\n\n" + "".join(f"{timestamp(c.start, '.')} --> {timestamp(c.end, '.')}\n{c.text}\n\n" for c in cues)


@dataclass
class NarrationResult:
    video: str
    checkpoint: str
    system: str
    fps: float
    frames: int
    narrations: list[dict] = field(default_factory=list)
    answers: list[dict] = field(default_factory=list)
    wall_s: float = 0.0
    realtime: bool = False
    max_lag_s: float = 0.0  # realtime: largest delay of a frame's processing behind the video clock
    final_lag_s: float = 0.0
    counters: dict = field(default_factory=dict)
    complete: bool = False  # False while the stream runs (the JSON written as it goes), True once it ended


def narrate_video(
    video: str | Path,
    checkpoint: str | Path,
    vision: str | Path,
    out_dir: str | Path | None = None,
    fps: float = 2.0,
    realtime: bool = False,
    progress: bool = True,
    on_event=None,
    device: str = "cpu",
    asks: list[tuple[float, str]] = (),
    **narrator_kwargs,
) -> tuple[NarrationResult, dict[str, Path]]:
    """Stream ``video`` through the checkpoint's narrator (asking ``asks``). Returns the result and the written
    files."""
    from .paths import writable_dir
    from .progress import progress_bar
    from .stream import Narrator
    from .video import read_frames, video_duration

    video, checkpoint = Path(video), Path(checkpoint)
    duration = video_duration(video)  # also checks that the file is a readable video, before loading anything
    asks = _checked_asks(asks, duration)
    stem = None if out_dir is None else writable_dir(out_dir) / video.stem  # before the model: fail early
    model, chat, encoder = _load(checkpoint, vision, device, asks)
    narrator = Narrator(model, chat, **narrator_kwargs)
    narrator.reset()
    res = NarrationResult(str(video), str(checkpoint), model.config.system, fps, 0, realtime=realtime)
    total = int(duration * fps) + 1 if duration else None
    bar = progress_bar(total=total, enabled=progress, desc=f"narrating {video.name}", unit="frame", leave=False)
    t0 = time.perf_counter()
    if stem is not None:
        write_json(res, stem)

    def emit(item: dict, into: list):
        into.append(item)
        if stem is not None:
            write_json(res, stem)
        if on_event is not None:
            on_event(item)

    for t, img in read_frames(video, fps, encoder.image_size):
        if realtime:  # the frame at video time t cannot be seen before t
            wait = t - (time.perf_counter() - t0)
            if wait > 0:
                time.sleep(wait)
        feats = encoder.encode(img[None])[0]
        ev = narrator.push(feats)
        if ev is not None:
            emit(_narration_item(ev, fps), res.narrations)
        while asks and asks[0][0] <= t + 1e-9:  # asked by now: answered after this frame
            asked_at, question = asks.pop(0)
            ans = narrator.ask(question)
            item = {"frame": ans.frame, "time": ans.frame / fps, "asked": asked_at, "question": question}
            emit(item | {"text": ans.text}, res.answers)
        res.frames += 1
        lag = (time.perf_counter() - t0) - t
        res.max_lag_s = max(res.max_lag_s, lag)
        res.final_lag_s = lag
        bar.update(1)
    ev = narrator.finish()
    if ev is not None:
        emit(_narration_item(ev, fps), res.narrations)
    bar.close()
    res.wall_s = time.perf_counter() - t0
    res.counters = asdict(narrator.counters)
    res.complete = True
    files = {} if stem is None else write_outputs(res, stem, max(duration, res.frames / fps))
    return res, files


def _load(checkpoint: Path, vision, device: str, asks):
    """The trained model and tokenizer (which must take every question as a turn) and the vision tower it was
    trained on."""
    from .checkpoint import check_compatible, load_trained
    from .video import FrameEncoder

    model, chat = load_trained(checkpoint)
    for _, question in asks:  # before any frame: the tokenizer must encode the question turn as the layout wants
        try:
            chat.question_ids(question)
        except ValueError as e:
            raise ValueError(f"{checkpoint}: its tokenizer cannot take the question {question!r}: {e}") from None
    model = model.to(device)
    encoder = FrameEncoder(vision, device=device)
    check_compatible(
        model,
        encoder.tokens_per_frame,
        encoder.hidden_size,
        checkpoint,
        f"the vision tower {vision}",
        hint="use the tower the model was trained on",
    )
    return model, chat, encoder


def _narration_item(ev, fps: float) -> dict:
    return {"frame": ev.frame, "time": ev.frame / fps, "text": ev.text.strip(), "forced": ev.forced}


def _checked_asks(asks, duration: float) -> list[tuple[float, str]]:
    """The questions in time order, each with text and a time inside the video (else a ValueError naming it)."""
    asks = sorted(asks)
    for t, text in asks:
        if not text.strip():
            raise ValueError(f"--ask {t}:{text!r}: an empty question")
        if not 0 <= t <= duration:
            raise ValueError(f"--ask {t}:{text}: the time is outside the video (0 to {duration:.1f} s)")
    return asks


def write_json(res: NarrationResult, stem: Path) -> Path:
    """``<stem>.json``: the result so far (``complete`` says whether the stream ended), replaced atomically."""
    path = stem.with_suffix(".json")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(asdict(res), indent=2))
    tmp.replace(path)
    return path


def write_outputs(res: NarrationResult, stem: Path, duration: float) -> dict[str, Path]:
    """``<stem>.json`` (the result), ``.srt`` and ``.vtt`` (one cue per narration or answer)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    said = sorted(
        [(n["time"], n["text"]) for n in res.narrations]
        + [(a["time"], f"Q: {a['question']} A: {a['text']}") for a in res.answers]
    )
    cues = cues_from_events([t for t, _ in said], [x for _, x in said], duration)
    files = {"json": stem.with_suffix(".json"), "srt": stem.with_suffix(".srt"), "vtt": stem.with_suffix(".vtt")}
    write_json(res, stem)
    files["srt"].write_text(to_srt(cues))
    files["vtt"].write_text(to_vtt(cues))
    return files
