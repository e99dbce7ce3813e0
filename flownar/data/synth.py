"""The embedded synthetic dataset: a procedural kitchen written in the exact FlowNar-Data file layout.

FlowNar-Data cannot be downloaded here, so ``write_synthetic_dataset`` writes a dataset root that the same readers
load as the real one (``features_metadata.json``, ``features/<folder>/<uid>.pt``, ``annotations/...``), plus a card
(``flownar_synthetic.json``) holding the generator settings and the ground truth of every video.

The world is defined in :mod:`flownar.data.world` (settings, vocabulary, prototypes; its description),
simulated in :mod:`flownar.data.kitchen` and rendered in :mod:`flownar.data.render`; this module writes the
annotations of each layout and the dataset.

Everything random comes from ``numpy.random.default_rng(SeedSequence(seed, spawn_key=...))``: prototypes from the
seed alone, video ``i``'s world, features and annotation noise from (seed, i), so the world of video ``i`` is the
same in every layout and the same (seed, profile, layout) gives byte-identical files.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import uuid
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .kitchen import SynthVideo, simulate_video
from .layouts import METADATA_FILE, QA_FILE, SYNTHETIC_CARD_FILE, get_layout
from .questions import IN_VIEW_S, QA_VERSION, question_counts, world_questions
from .render import render_features
from .world import (
    AFFORDANCES,
    CENTER,
    CENTRAL_TOKENS,
    CLS_TOKEN,
    CORNER_TOKENS,
    HANDS,
    LEFT,
    NOUNS,
    PARAPHRASES,
    RIGHT,
    TOP,
    VERBS,
    SynthConfig,
    action_text,
    rng_for,
    synth_config,
    world_prototypes,
)

# bump when the generated data changes (prepare.py rewrites embedded data on a mismatch); 5: world v4 plus the
# questions (annotations/flownar_qa_<split>.json; every other file as in 4)
SYNTH_VERSION = 5
# ----------------------------------------------------------------------------------------------------------------
# Annotations


def _first_pass(video: SynthVideo) -> list[dict]:
    """The reference narrations: one per action, said at its end."""
    return [{"time": s.end, "text": s.text} for s in video.segments]


def _second_pass(video: SynthVideo, cfg: SynthConfig, rng: np.random.Generator) -> list[dict]:
    """Another annotator: times jittered, a few narrations dropped, some verbs paraphrased."""
    out = []
    for s in video.segments:
        drop, jitter, para = rng.random(), rng.uniform(-cfg.jitter_s, cfg.jitter_s), rng.random()
        if drop < cfg.drop_rate:
            continue
        text = s.text
        if para < cfg.paraphrase_rate and s.verb in PARAPHRASES:
            text = action_text(PARAPHRASES[s.verb], s.noun, s.container)
        out.append({"time": round(min(max(s.end + jitter, 0.0), video.duration), 2), "text": text})
    out.sort(key=lambda n: n["time"])
    return out


def _egoexo_descriptions(
    narrations: list[dict], video: SynthVideo, cfg: SynthConfig, rng: np.random.Generator
) -> list[dict]:
    """EgoExo4D descriptions: the narrations (ego-visible) plus ~invisible_rate of descriptions of actions the
    egocentric camera does not see (``ego_visible: false``; nothing in the features matches them)."""
    out = [{"timestamp": n["time"], "text": n["text"], "ego_visible": True} for n in narrations]
    n_extra = int(rng.binomial(len(out), cfg.invisible_rate / (1.0 - cfg.invisible_rate))) if out else 0
    for _ in range(n_extra):
        verb, noun = AFFORDANCES[int(rng.integers(len(AFFORDANCES)))]
        t = round(float(rng.uniform(0.5, video.duration)), 2)
        out.append({"timestamp": t, "text": action_text(verb, noun), "ego_visible": False})
    out.sort(key=lambda d: d["timestamp"])
    return out


def _summary_windows(duration: float, window: float) -> list[tuple[float, float]]:
    """Windows of ~``window`` seconds tiling [0, duration]; a short remainder joins the last window."""
    edges = [0.0]
    while duration - edges[-1] > 1.5 * window:
        edges.append(edges[-1] + window)
    edges.append(duration)
    return list(zip(edges[:-1], edges[1:]))


def _segment_summaries(duration: float, passes: dict[str, list[dict]], window: float) -> dict:
    """Ego4D ``{"<start>, <end>": {annotation_uid: {"narration": [...]}}}`` for one video (empty windows left out)."""
    out = {}
    windows = _summary_windows(duration, window)
    for w, (s, e) in enumerate(windows):
        last = w == len(windows) - 1
        inside = {
            ann: [n for n in nars if s <= n["time"] < e or (last and n["time"] == e)] for ann, nars in passes.items()
        }
        inside = {ann: {"narration": nars} for ann, nars in inside.items() if nars}
        if inside:
            out[f"{s:.1f}, {e:.1f}"] = inside
    return out


def _uuid(rng: np.random.Generator) -> str:
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


def _video_uid(layout: str, seed: int, index: int) -> str:
    """EK100: ``P01_01``-style ids (4 videos per participant, seed-independent); Ego4D / EgoExo4D: UUIDs derived
    from (seed, index)."""
    if layout == "ek100":
        return f"P{index // 4 + 1:02d}_{index % 4 + 1:02d}"
    return _uuid(rng_for(seed, 1, index, 3))


# ----------------------------------------------------------------------------------------------------------------
# Writing


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _write_json(path: Path, obj) -> None:
    _atomic_write(path, json.dumps(obj).encode("utf-8"))


def _feature_bytes(x: np.ndarray, feature_format: str) -> bytes:
    t = torch.from_numpy(x).to(torch.bfloat16).contiguous()
    if feature_format == "safetensors":
        from safetensors.torch import save  # the bytes of save_file({"features": t}), written atomically here

        return save({"features": t})
    buf = io.BytesIO()  # saving to a buffer keeps the archive's inner name fixed ("archive"): identical bytes
    torch.save(t, buf)
    return buf.getvalue()


def _clear_previous(out: Path) -> None:
    """Before an overwrite: remove what an earlier synthetic write left (its card says which layout); a folder
    without a card (not ours) keeps its other files and ours are written over them."""
    card_path = out / SYNTHETIC_CARD_FILE
    if not card_path.is_file():
        return
    try:
        old = get_layout(json.loads(card_path.read_text()).get("layout", ""))
    except (ValueError, OSError, AttributeError):
        old = None
    card_path.unlink(missing_ok=True)
    (out / METADATA_FILE).unlink(missing_ok=True)
    if old is not None:
        shutil.rmtree(old.feature_dir(out), ignore_errors=True)
        for name in list(old.narration_files.values()) + ([old.summary_file] if old.summary_file else []):
            (out / "annotations" / name).unlink(missing_ok=True)


def write_synthetic_dataset(
    out,
    layout: str = "ek100",
    profile: str = "smoke",
    seed: int = 0,
    feature_format: str = "pt",
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write the synthetic world (``profile``, ``seed``) as a complete dataset root in ``layout``'s file layout.

    Returns the root. Raises FileExistsError when ``out`` is non-empty and ``overwrite`` is False. Files are
    written atomically; the card is written last (a partly written root has no card)."""
    from tqdm.auto import tqdm

    cfg = synth_config(profile)
    lay = get_layout(layout)
    if feature_format not in ("pt", "safetensors"):
        raise ValueError(f"unknown feature format {feature_format!r}; expected 'pt' or 'safetensors'")
    out = _prepare_out(Path(out), overwrite)
    feature_dir = lay.feature_dir(out)
    feature_dir.mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)

    protos = world_prototypes(seed, cfg.feature_dim)
    splits = {"train": [], "val": []}
    narrations = {"train": {}, "val": {}}
    questions = {"train": {}, "val": {}}
    summaries, metadata, videos = {}, {}, {}
    for i in tqdm(range(cfg.n_videos), desc=f"synthetic {lay.name} ({profile})", disable=not progress):
        split = "train" if i < cfg.n_train else "val"
        video = simulate_video(cfg, seed, i)
        uid = _video_uid(lay.name, seed, i)
        x = render_features(video, protos, cfg, seed)  # (T, 10, D)
        name = f"{uid}.{feature_format}"
        _atomic_write(feature_dir / name, _feature_bytes(x, feature_format))
        metadata[uid] = {"duration": (x.shape[0] - 1) / cfg.fps, "path": name}
        splits[split].append(uid)
        videos[uid] = {
            "split": split,
            "index": i,
            "duration": video.duration,
            "length_over_cap": round(video.duration / cfg.cap_s, 4),
            "segments": [s.card() for s in video.segments],
        }

        questions[split][uid] = world_questions(video, cfg, rng_for(seed, 1, i, 7))
        ann_rng = rng_for(seed, 1, i, 2)
        first = _first_pass(video)
        if lay.name == "ek100":
            narrations[split][uid] = first
        elif lay.name == "ego4d":
            passes = {_uuid(ann_rng): first, _uuid(ann_rng): _second_pass(video, cfg, ann_rng)}
            narrations[split][uid] = passes
            if split == "val":
                summaries[uid] = _segment_summaries(video.duration, passes, cfg.summary_window_s)
        else:  # egoexo4d: two annotator entries per take
            second = _second_pass(video, cfg, ann_rng)
            narrations[split][uid] = [
                {"descriptions": _egoexo_descriptions(n, video, cfg, ann_rng)} for n in (first, second)
            ]

    for split, obj in narrations.items():
        _write_json(lay.annotation_path(out, split), obj)
        _write_json(
            out / "annotations" / QA_FILE.format(split=split), {"version": QA_VERSION, "questions": questions[split]}
        )
    if lay.summary_file is not None:
        _write_json(out / "annotations" / lay.summary_file, summaries)
    _write_json(out / METADATA_FILE, metadata)
    card = _card(cfg, lay.name, profile, seed, feature_format, splits, videos)
    card["questions"] = {
        "files": {split: f"annotations/{QA_FILE.format(split=split)}" for split in questions},
        "version": QA_VERSION,
        "in_view_s": IN_VIEW_S,
        "counts": {split: question_counts(qs) for split, qs in questions.items()},
    }
    _write_json(out / SYNTHETIC_CARD_FILE, card)
    return out


def _prepare_out(out: Path, overwrite: bool) -> Path:
    """The dataset root, empty: refused when it holds something and ``overwrite`` is False."""
    if out.exists():
        if not out.is_dir():
            raise FileExistsError(f"{out} exists and is not a directory")
        if any(out.iterdir()):
            if not overwrite:
                raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True to replace the dataset")
            _clear_previous(out)
    return out


def _card(cfg: SynthConfig, layout: str, profile: str, seed: int, feature_format: str, splits, videos) -> dict:
    """The data card (``flownar_synthetic.json``): the generator, its settings and the ground truth of every
    video."""
    return {
        "generator": "flownar.data.synth",
        "version": SYNTH_VERSION,
        "note": "embedded synthetic data (procedural kitchen), not FlowNar-Data",
        "layout": layout,
        "profile": profile,
        "seed": seed,
        "fps": cfg.fps,
        "feature_dim": cfg.feature_dim,
        "tokens_per_frame": cfg.tokens_per_frame,
        "feature_format": feature_format,
        "config": asdict(cfg),
        "cap_s": cfg.cap_s,  # training clips are cut at this length (the original's max_num_frames)
        "cap_frames": cfg.cap_frames,
        "token_layout": {"cls": CLS_TOKEN, "central": CENTRAL_TOKENS, "corners": CORNER_TOKENS},
        # where each part of an action is shown (world v4): the object, again beside it, the verb, the container,
        # an open container's front item
        "token_roles": {"noun": CENTER, "noun_side": RIGHT, "verb": HANDS, "container": LEFT, "revealed": TOP},
        "splits": splits,
        "vocabulary": {"verbs": VERBS, "nouns": NOUNS},
        "videos": videos,
    }
