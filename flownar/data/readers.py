"""Readers for FlowNar-Data (EK100, Ego4D, EgoExo4D) in the released layout.

One class, :class:`FlowNarData`, opens a dataset root (real or synthetic: there is no special case) and gives

* ``streams(split)``: the narration streams of a split, one per sample of the original builders
  (EK100: per video; Ego4D: per (video, annotation pass); EgoExo4D: per (take, annotator), ego-visible only);
* ``eval_clips("val")``: the clips of the segment-summary splits used by the self-conditioned protocol;
* ``load_features(uid, frames)``: a validated ``(T, tokens, dim)`` tensor.

Frame rate comes from the feature folder name, tokens per frame and feature dim from the tensors. Times are
seconds; frame ``j`` is time ``j / fps``.

Deviations from the original loaders (reference notes, section 11.4), each deliberate:
* narrations are sorted by time (stable); the original trusts file order;
* EgoExo4D: ``ego_visible == False`` descriptions are dropped from the training/oracle streams *before* the
  stream start is chosen (the original picks the start from the first description even when it is not visible).
  The self-conditioned clips and their ground truth keep them, as the original's segment-summary builder and
  evaluator do (each :class:`Narration` says whether it is visible; the ``corrected`` scoring drops the invisible
  ones, the ``paper`` scoring keeps them).
* Narration texts are stripped of surrounding whitespace; the annotation's exact text is kept beside it
  (:attr:`Narration.annotated`), which the ``paper`` scoring uses, as the original evaluator scores GT texts as
  they are.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import AnnotationError, DataRootError, FeatureFileError
from .features import load_features, read_feature_tensor, validate_features
from .layouts import METADATA_FILE, QA_FILE, SYNTHETIC_CARD_FILE, Layout, fps_from_folder, get_layout


class DataWarning(UserWarning):
    """Something was skipped while reading a dataset (the message says what and how many)."""


@dataclass(frozen=True)
class Narration:
    time: float  # seconds from the start of the video
    text: str  # stripped of surrounding whitespace
    raw: str | None = None  # the annotation's text exactly, when it differs from ``text``
    visible: bool = True  # EgoExo4D's ``ego_visible`` (always True elsewhere)

    @property
    def annotated(self) -> str:
        """The text exactly as in the annotation file (what the original evaluator scores)."""
        return self.text if self.raw is None else self.raw


@dataclass(frozen=True)
class WorldQuestion:
    """A question of the embedded world's QA file (:mod:`flownar.data.questions`): asked at ``time`` (s) in video
    ``video_uid``, with its answer, the answer's key words, its type and how far back its evidence lies."""

    video_uid: str
    time: float
    text: str
    answer: str
    keywords: tuple[str, ...]
    type: str
    gap_s: float
    gap_segments: int
    gap_caps: float
    in_view: bool


_QUESTION_KEYS = {"time": (int, float), "question": str, "answer": str, "keywords": list, "type": str}
_QUESTION_KEYS |= {"gap_s": (int, float), "gap_segments": int, "gap_caps": (int, float), "in_view": bool}


def _parse_questions(raw, path: Path) -> dict[str, list[WorldQuestion]]:
    if not isinstance(raw, dict) or not isinstance(raw.get("questions"), dict):
        raise AnnotationError(f"{path}: expected an object with 'questions': {{video_uid: [question, ...]}}")
    out = {}
    for uid, items in raw["questions"].items():
        if not isinstance(items, list):
            raise AnnotationError(f"{path}: {uid}: expected a list of questions, found {type(items).__name__}")
        qs = []
        for i, q in enumerate(items):
            bad = [k for k, t in _QUESTION_KEYS.items() if not isinstance(q, dict) or not isinstance(q.get(k), t)]
            if bad or isinstance(q["time"], bool) or not q["question"].strip() or not q["answer"].strip():
                raise AnnotationError(
                    f"{path}: {uid}[{i}]: missing or invalid {bad or 'question text'}: {str(q)[:80]!r}"
                )
            qs.append(
                WorldQuestion(
                    uid,
                    float(q["time"]),
                    q["question"],
                    q["answer"],
                    tuple(map(str, q["keywords"])),
                    q["type"],
                    float(q["gap_s"]),
                    q["gap_segments"],
                    float(q["gap_caps"]),
                    q["in_view"],
                )
            )
        out[uid] = sorted(qs, key=lambda q: q.time)
    return out


@dataclass
class NarrationStream:
    """One narration-stream sample: a time-sorted list of narrations of one video by one annotator."""

    video_uid: str
    stream_id: str  # EK100: the video id; Ego4D: the annotation uid; EgoExo4D: "<take>#<annotator index>"
    narrations: list[Narration]


@dataclass
class EvalClip:
    """One sample of a segment-summary split (self-conditioned evaluation)."""

    clip_id: str  # unique within the split
    video_uid: str
    start_frame: int  # first frame (absolute index into the video's feature file)
    stop_frame: int  # one past the last frame
    start_time: float  # the evaluator's `start` (first GT time / min first timestamp / interval start)
    references: list[list[Narration]]  # ground-truth narrations, one list per annotator

    @property
    def num_frames(self) -> int:
        return self.stop_frame - self.start_frame


@dataclass(frozen=True)
class VideoInfo:
    uid: str
    duration: float  # seconds; (T - 1) / fps for FlowNar-Data
    feature_path: Path

    def max_frame(self, fps: float) -> int:
        """Largest valid frame index implied by the duration."""
        return int(math.floor(self.duration * fps + 1e-6))


def _read_json(path: Path, what: str):
    if not path.is_file():
        raise DataRootError(f"{path}: {what} is missing")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from e
    except UnicodeDecodeError as e:
        raise AnnotationError(f"{path}: not UTF-8 text ({e.reason})") from e


def _parse_narration_list(items, path: Path, where: str, time_key: str = "time") -> list[Narration]:
    if not isinstance(items, list):
        raise AnnotationError(f"{path}: {where}: expected a list of narrations, found {type(items).__name__}")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or time_key not in item or "text" not in item:
            raise AnnotationError(
                f"{path}: {where}[{i}]: expected an object with {time_key!r} and 'text', found {str(item)[:80]!r}"
            )
        t, text = item[time_key], item["text"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
            raise AnnotationError(f"{path}: {where}[{i}]: {time_key!r} must be a finite number, found {t!r}")
        if not isinstance(text, str):
            raise AnnotationError(f"{path}: {where}[{i}]: 'text' must be a string, found {type(text).__name__}")
        visible = item.get("ego_visible") is not False
        out.append(Narration(float(t), text.strip(), None if text == text.strip() else text, visible))
    out.sort(key=lambda n: n.time)  # stable: same-time narrations keep file order
    return out


class FlowNarData:
    """A FlowNar-Data dataset folder (e.g. ``FlowNar-Data/ek100``) or a synthetic one in the same layout.

    Args:
        root: the dataset folder.
        dataset: ``ek100``, ``ego4d`` or ``egoexo4d`` (selects file names and annotation schema).
        strict: raise instead of warning-and-skipping when an annotation names a video without features or a
            video has no narrations.
    """

    SPEC_SAMPLE = 5  # feature files read to find the dataset's feature shape (real data: no declared shape)

    def __init__(self, root: str | Path, dataset: str = "ek100", strict: bool = False):
        self.root = Path(root).expanduser().resolve()
        self.layout: Layout = get_layout(dataset)
        self.dataset = self.layout.name
        self.strict = strict
        self.skipped: dict[str, list[str]] = {}  # reason -> ids, for reports
        self._check_root()
        self.fps = fps_from_folder(self.layout.feature_folder)
        self.videos = self._read_metadata()
        self._spec: tuple[int, int] | None = None
        self._streams: dict[str, list[NarrationStream]] = {}

    # ------------------------------------------------------------------ root and metadata
    def _check_root(self) -> None:
        if not self.root.exists():
            raise DataRootError(f"data root {self.root} does not exist")
        if not self.root.is_dir():
            raise DataRootError(f"data root {self.root} is not a directory")
        missing = [
            p
            for p in (self.root / METADATA_FILE, self.root / "annotations", self.layout.feature_dir(self.root))
            if not p.exists()
        ]
        if missing:
            present = sorted(p.name for p in self.root.iterdir())[:10]
            feats = self.root / "features"
            hint = ""
            if feats.is_dir():
                hint = f"; features/ holds {sorted(p.name for p in feats.iterdir())[:5]}"
            raise DataRootError(
                f"data root {self.root} is incomplete for the {self.dataset} layout: missing "
                + ", ".join(str(p.relative_to(self.root)) for p in missing)
                + f" (present: {present}{hint})"
            )

    def _read_metadata(self) -> dict[str, VideoInfo]:
        path = self.root / METADATA_FILE
        meta = _read_json(path, "the features metadata file")
        if not isinstance(meta, dict) or not meta:
            raise AnnotationError(f"{path}: expected a non-empty object {{video_uid: {{duration, path}}}}")
        feature_dir = self.layout.feature_dir(self.root)
        videos = {}
        for uid, entry in meta.items():
            if not isinstance(entry, dict) or "duration" not in entry or "path" not in entry:
                raise AnnotationError(f"{path}: entry {uid!r} must be an object with 'duration' and 'path'")
            d = entry["duration"]
            if isinstance(d, bool) or not isinstance(d, (int, float)) or not math.isfinite(d) or d < 0:
                raise AnnotationError(f"{path}: entry {uid!r}: 'duration' must be a non-negative number, found {d!r}")
            videos[uid] = VideoInfo(uid, float(d), feature_dir / str(entry["path"]))
        return videos

    @property
    def synthetic_card(self) -> dict | None:
        """The synthetic world's card (ground truth and generator settings), or None for real data."""
        p = self.root / SYNTHETIC_CARD_FILE
        return _read_json(p, "synthetic card") if p.is_file() else None

    @property
    def is_synthetic(self) -> bool:
        return (self.root / SYNTHETIC_CARD_FILE).is_file()

    # ------------------------------------------------------------------ features
    def feature_spec(self) -> tuple[int, int]:
        """(tokens_per_frame, feature_dim): as the synthetic card declares it, else the most common shape among the
        first few readable feature files (so one wrong file listed first cannot set the shape and get a good file
        blamed: it is the one named when loaded)."""
        if self._spec is None:
            card = self.synthetic_card
            if card and "tokens_per_frame" in card and "feature_dim" in card:
                self._spec = (int(card["tokens_per_frame"]), int(card["feature_dim"]))
                return self._spec
            first_error, shapes = None, []
            for info in self.videos.values():
                try:
                    x = read_feature_tensor(info.feature_path)
                except FeatureFileError as e:
                    first_error = first_error or e
                    continue
                if x.ndim != 3:
                    first_error = first_error or FeatureFileError(
                        f"{info.feature_path}: features have shape {tuple(x.shape)}; expected 3 dims"
                    )
                    continue
                shapes.append((int(x.shape[1]), int(x.shape[2])))
                if len(shapes) == self.SPEC_SAMPLE:
                    break
            if not shapes:
                raise FeatureFileError(
                    f"no readable feature file under {self.layout.feature_dir(self.root)}: {first_error}"
                )
            self._spec = max(shapes, key=shapes.count)  # the most common; the first of equals
        return self._spec

    @property
    def tokens_per_frame(self) -> int:
        return self.feature_spec()[0]

    @property
    def feature_dim(self) -> int:
        return self.feature_spec()[1]

    def video(self, uid: str) -> VideoInfo:
        if uid not in self.videos:
            raise DataRootError(f"{self.root / METADATA_FILE}: no entry for video {uid!r}")
        return self.videos[uid]

    def load_features(self, uid: str, frames: range | None = None) -> torch.Tensor:
        """Validated features of one video, ``(T, tokens, dim)``, optionally only ``frames`` (a range)."""
        info = self.video(uid)
        n, d = self.feature_spec()
        need = (frames.stop if frames is not None else 0) or None
        x = load_features(info.feature_path, tokens_per_frame=n, feature_dim=d, min_frames=need)
        return x[frames.start : frames.stop] if frames is not None else x

    def check_features(self, uids=None, progress: bool = False) -> dict:
        """Load and validate the feature files of ``uids`` (default: every video that has annotations).

        Raises the first FeatureFileError; returns counts for a report."""
        from tqdm.auto import tqdm

        if uids is None:
            uids = sorted({s.video_uid for split in self.available_splits() for s in self.streams(split)})
        n, d = self.feature_spec()
        frames = 0
        for uid in tqdm(uids, desc=f"checking {self.dataset} features", disable=not progress):
            info = self.video(uid)
            x = read_feature_tensor(info.feature_path)
            validate_features(
                x, info.feature_path, tokens_per_frame=n, feature_dim=d, min_frames=info.max_frame(self.fps) + 1
            )
            frames += x.shape[0]
        return {"videos": len(uids), "frames": frames, "tokens_per_frame": n, "feature_dim": d}

    # ------------------------------------------------------------------ annotations
    def available_splits(self) -> list[str]:
        return [s for s in self.layout.narration_files if self.layout.annotation_path(self.root, s).is_file()]

    def _annotation(self, split: str):
        path = self.layout.annotation_path(self.root, split)
        if not path.is_file():
            have = sorted(p.name for p in (self.root / "annotations").iterdir())
            raise DataRootError(f"{path}: annotation file for split {split!r} is missing (annotations/ holds {have})")
        return path, _read_json(path, f"annotation file for split {split!r}")

    def questions(self, split: str) -> dict[str, list[WorldQuestion]]:
        """The questions of a split (``annotations/flownar_qa_<split>.json``), per video, in time order. Only the
        embedded world writes them (FlowNar-Data has no questions)."""
        path = self.root / "annotations" / QA_FILE.format(split=split)
        if not path.is_file():
            raise DataRootError(
                f"{path}: no questions for split {split!r}: only the embedded world writes them (flownar data synth"
                f"{'; this root was written before questions existed: rewrite it' if self.is_synthetic else ''})"
            )
        qs = _parse_questions(_read_json(path, f"question file for split {split!r}"), path)
        unknown = sorted(set(qs) - set(self.videos))
        if unknown:
            raise AnnotationError(f"{path}: questions for videos without features: {', '.join(unknown[:5])}")
        return qs

    def _skip(self, reason: str, ident: str) -> None:
        self.skipped.setdefault(reason, []).append(ident)

    def _report_skips(self, path: Path, before: dict[str, int]) -> None:
        for reason, ids in self.skipped.items():
            new = ids[before.get(reason, 0) :]
            if not new:
                continue
            msg = f"{path}: skipped {len(new)} {reason}: {', '.join(new[:5])}{' ...' if len(new) > 5 else ''}"
            if self.strict:
                raise AnnotationError(msg)
            warnings.warn(msg, DataWarning, stacklevel=3)

    def streams(self, split: str) -> list[NarrationStream]:
        """Narration-stream samples of a split (training and oracle evaluation)."""
        if split in self._streams:
            return self._streams[split]
        path, raw = self._annotation(split)
        before = {k: len(v) for k, v in self.skipped.items()}
        if not isinstance(raw, dict):
            raise AnnotationError(f"{path}: expected an object keyed by video id, found {type(raw).__name__}")
        parse = {"ek100": self._parse_ek100, "ego4d": self._parse_ego4d, "egoexo4d": self._parse_egoexo4d}[self.dataset]
        out: list[NarrationStream] = []
        for uid, value in raw.items():
            if uid not in self.videos:
                self._skip("annotated videos that have no entry in features_metadata.json", uid)
                continue
            for stream in parse(uid, value, path):
                if stream.narrations:
                    out.append(stream)
                else:
                    self._skip("streams with no narrations", stream.stream_id)
        self._report_skips(path, before)
        self._streams[split] = out
        return out

    @staticmethod
    def _parse_ek100(uid, value, path):
        yield NarrationStream(uid, uid, _parse_narration_list(value, path, uid))

    @staticmethod
    def _parse_ego4d(uid, value, path):
        if not isinstance(value, dict):
            raise AnnotationError(
                f"{path}: {uid}: expected {{annotation_uid: [narrations]}}, found {type(value).__name__}"
            )
        for ann, items in value.items():
            yield NarrationStream(uid, ann, _parse_narration_list(items, path, f"{uid}/{ann}"))

    @staticmethod
    def _egoexo_annotators(uid, value, path) -> list[list[Narration]]:
        """Every annotator's descriptions, invisible ones included (``Narration.visible`` tells them apart)."""
        if not isinstance(value, list):
            raise AnnotationError(f"{path}: {uid}: expected a list of annotator entries, found {type(value).__name__}")
        lists = []
        for a, entry in enumerate(value):
            if not isinstance(entry, dict) or not isinstance(entry.get("descriptions"), list):
                raise AnnotationError(f"{path}: {uid}[{a}]: expected an object with a 'descriptions' list")
            lists.append(
                _parse_narration_list(entry["descriptions"], path, f"{uid}[{a}].descriptions", time_key="timestamp")
            )
        return lists

    @classmethod
    def _parse_egoexo4d(cls, uid, value, path):
        for a, narrations in enumerate(cls._egoexo_annotators(uid, value, path)):
            # training and oracle streams: only what the egocentric camera sees (as the original's training)
            yield NarrationStream(uid, f"{uid}#{a}", [n for n in narrations if n.visible])

    # ------------------------------------------------------------------ segment-summary (self-conditioned) clips
    def eval_clips(self, split: str = "val") -> list[EvalClip]:
        """Clips of the segment-summary split, in annotation-file order."""
        fps = self.fps
        if self.dataset == "ek100":
            clips = []
            for s in self.streams(split):
                info = self.videos[s.video_uid]
                first, last = s.narrations[0].time, s.narrations[-1].time
                start = int(first * fps)
                stop = min(int(last * fps) + 1, info.max_frame(fps) + 1)
                clips.append(EvalClip(s.video_uid, s.video_uid, start, max(stop, start + 1), first, [s.narrations]))
            return clips
        if self.dataset == "egoexo4d":
            path, raw = self._annotation(split)
            clips = []
            for uid, value in raw.items():
                if uid not in self.videos:
                    continue  # counted by streams()
                # the window and the GT keep invisible descriptions, as the original's segment-summary builder
                # and evaluator (the corrected scoring drops them from the GT: Narration.visible)
                refs = [n for n in self._egoexo_annotators(uid, value, path) if n]
                if not refs:
                    continue
                start_t = min(n[0].time for n in refs)
                end_t = max(n[-1].time for n in refs)
                if end_t == 0:  # the original skips these takes too
                    continue
                info = self.videos[uid]
                start, stop = int(start_t * fps), min(int(end_t * fps) + 1, info.max_frame(fps) + 1)
                clips.append(EvalClip(uid, uid, start, max(stop, start + 1), start_t, refs))
            self.streams(split)  # reports unknown videos once
            return clips
        return self._ego4d_summary_clips(split)

    def _ego4d_summary_clips(self, split: str) -> list[EvalClip]:
        if self.layout.summary_file is None:
            raise DataRootError(f"{self.dataset}: layout has no segment-summary file")
        path = self.root / "annotations" / self.layout.summary_file
        raw = _read_json(path, "the segment-summary file")
        if not isinstance(raw, dict):
            raise AnnotationError(f"{path}: expected {{video_uid: {{'<start>, <end>': ...}}}}")
        split_uids = None
        stream_refs: dict[str, list[list[Narration]]] = {}
        if self.layout.annotation_path(self.root, split).is_file():
            for s in self.streams(split):
                stream_refs.setdefault(s.video_uid, []).append(s.narrations)
            split_uids = set(stream_refs)
        clips = []
        before = {k: len(v) for k, v in self.skipped.items()}
        for uid, intervals in raw.items():
            if uid not in self.videos or (split_uids is not None and uid not in split_uids):
                continue
            if not isinstance(intervals, dict):
                raise AnnotationError(
                    f"{path}: {uid}: expected {{'<start>, <end>': ...}}, found {type(intervals).__name__}"
                )
            for key, value in intervals.items():
                try:
                    s_t, e_t = (float(v) for v in key.split(","))
                except ValueError:
                    raise AnnotationError(f"{path}: {uid}: interval key {key!r} is not '<start>, <end>'") from None
                if (
                    isinstance(value, dict)
                    and value
                    and all(isinstance(v, dict) and "narration" in v for v in value.values())
                ):
                    refs = [
                        _parse_narration_list(v["narration"], path, f"{uid}/{key}/{ann}") for ann, v in value.items()
                    ]
                else:  # summaries without nested narrations: take the stream narrations inside the interval
                    refs = [[n for n in lst if s_t <= n.time <= e_t] for lst in stream_refs.get(uid, [])]
                refs = [r for r in refs if r]
                if not refs:
                    self._skip("summary intervals with no narrations", f"{uid}@{key}")
                    continue
                info = self.videos[uid]
                start, stop = int(s_t * self.fps), min(int(e_t * self.fps) + 1, info.max_frame(self.fps) + 1)
                clips.append(EvalClip(f"{uid}@{s_t:g}-{e_t:g}", uid, start, max(stop, start + 1), s_t, refs))
        self._report_skips(path, before)
        return clips

    def __repr__(self) -> str:
        kind = "synthetic" if self.is_synthetic else "FlowNar-Data"
        return f"FlowNarData({self.dataset}, {kind}, {len(self.videos)} videos, fps={self.fps:g}, root={self.root})"
