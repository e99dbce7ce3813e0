"""The embedded synthetic dataset: files and schemas per layout, determinism, and the world's design properties."""

from __future__ import annotations

import hashlib
import json
import math
import re
import uuid
import warnings
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest
import torch

from flownar.data.kitchen import simulate_video, video_length
from flownar.data.layouts import METADATA_FILE, SYNTHETIC_CARD_FILE, get_layout
from flownar.data.render import narration_frames, render_features
from flownar.data.synth import SYNTH_VERSION, write_synthetic_dataset
from flownar.data.world import CENTRAL_TOKENS, NOUNS, SYNTH_PROFILES, VERBS, SynthConfig, synth_config, world_prototypes

LAYOUTS = ["ek100", "ego4d", "egoexo4d"]
SMOKE = SYNTH_PROFILES["smoke"]


def _load(path: Path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """One smoke dataset per layout (seed 0), written once for the module."""
    base = tmp_path_factory.mktemp("synth")
    return {
        lay: write_synthetic_dataset(base / lay, layout=lay, profile="smoke", seed=0, progress=False) for lay in LAYOUTS
    }


def _card(root: Path) -> dict:
    return _load(root / SYNTHETIC_CARD_FILE)


def _features(root: Path, layout: str, uid: str) -> torch.Tensor:
    meta = _load(root / METADATA_FILE)
    return torch.load(get_layout(layout).feature_dir(root) / meta[uid]["path"], weights_only=True)


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ------------------------------------------------------------------------------------------------ profiles / errors
def test_profiles_and_lookup():
    assert {"smoke", "default"} <= set(SYNTH_PROFILES)
    assert synth_config("smoke") is SYNTH_PROFILES["smoke"]
    for cfg in SYNTH_PROFILES.values():
        assert isinstance(cfg, SynthConfig) and cfg.fps == 2.0 and cfg.tokens_per_frame == 10
    with pytest.raises(ValueError, match="default.*smoke|smoke.*default"):
        synth_config("huge")
    with pytest.raises(ValueError):
        SynthConfig(n_train=1, n_val=1, cap_s=40.0, feature_dim=8, tokens_per_frame=5)
    with pytest.raises(ValueError, match="length_min"):
        SynthConfig(n_train=1, n_val=1, cap_s=40.0, feature_dim=8, length_min=2.0, length_max=2.0)
    with pytest.raises(ValueError, match="mix_share"):
        SynthConfig(n_train=1, n_val=1, cap_s=40.0, feature_dim=8, mix_share=1.0)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="smoke"):
        write_synthetic_dataset(tmp_path / "a", profile="nope", progress=False)
    with pytest.raises(ValueError, match="ek100"):
        write_synthetic_dataset(tmp_path / "b", layout="kinetics", progress=False)
    with pytest.raises(ValueError, match="safetensors"):
        write_synthetic_dataset(tmp_path / "c", feature_format="npy", progress=False)


def test_overwrite(tmp_path):
    out = tmp_path / "root"
    write_synthetic_dataset(out, layout="ek100", progress=False)
    with pytest.raises(FileExistsError, match=re.escape(str(out))):
        write_synthetic_dataset(out, layout="ek100", progress=False)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("not a dataset")
    with pytest.raises(FileExistsError):
        write_synthetic_dataset(other, progress=False)
    assert (other / "notes.txt").read_text() == "not a dataset"
    write_synthetic_dataset(tmp_path / "empty_is_fine", progress=False)  # a missing folder is created
    # overwrite with another layout: the earlier synthetic layout's files are removed
    write_synthetic_dataset(out, layout="ego4d", overwrite=True, progress=False)
    assert not get_layout("ek100").feature_dir(out).exists()
    assert not get_layout("ek100").annotation_path(out, "train").exists()
    assert _card(out)["layout"] == "ego4d"
    assert not list(out.rglob(".*tmp*"))  # no temporary files left behind


# ------------------------------------------------------------------------------------------------ files and schemas
@pytest.mark.parametrize("layout", LAYOUTS)
def test_common_files(roots, layout):
    root, lay = roots[layout], get_layout(layout)
    card, meta = _card(root), _load(root / METADATA_FILE)
    assert card["generator"] == "flownar.data.synth" and card["version"] == SYNTH_VERSION
    assert (card["layout"], card["profile"], card["seed"]) == (layout, "smoke", 0)
    assert card["fps"] == 2.0 and card["feature_dim"] == SMOKE.feature_dim and card["tokens_per_frame"] == 10
    assert card["vocabulary"] == {"verbs": VERBS, "nouns": NOUNS}
    assert 12 <= len(VERBS) <= 16 and 25 <= len(NOUNS) <= 35
    train, val = card["splits"]["train"], card["splits"]["val"]
    assert len(train) == SMOKE.n_train and len(val) == SMOKE.n_val and not set(train) & set(val)
    assert set(meta) == set(train) | set(val) == set(card["videos"])
    for uid, entry in meta.items():
        assert set(entry) == {"duration", "path"} and entry["path"] == f"{uid}.pt"
        x = _features(root, layout, uid)
        assert x.dtype == torch.bfloat16 and x.ndim == 3 and x.shape[1:] == (10, SMOKE.feature_dim)
        T = x.shape[0]
        assert entry["duration"] == (T - 1) / 2.0
        cap = SMOKE.cap_s
        assert cap * SMOKE.length_min - 0.5 <= entry["duration"] <= cap * SMOKE.length_max
        assert torch.isfinite(x.float()).all()
        video = card["videos"][uid]
        assert video["split"] == ("train" if uid in train else "val")
        assert video["duration"] == entry["duration"]
    assert sorted(p.name for p in lay.feature_dir(root).iterdir()) == sorted(e["path"] for e in meta.values())
    # features: roughly zero-mean with per-dimension variance ~1 over the split (the scale divides by the expected
    # std, the per-video scene included, so one video alone has less: ~0.5-0.7), temporally correlated noise
    pooled = torch.cat([_features(root, layout, uid).float().flatten(0, 1) for uid in train])
    assert abs(float(pooled.mean())) < 0.2 and 0.6 < float(pooled.var(dim=0).mean()) < 1.4
    x = _features(root, layout, train[0]).float()
    d = x - x.mean(0)
    lag1 = float((d[1:] * d[:-1]).mean() / (d * d).mean())
    assert 0.2 < lag1 < 0.95


def _check_stream(items, duration, time_key="time"):
    times = [n[time_key] for n in items]
    assert items and times == sorted(times)
    assert all(isinstance(t, float) and 0.0 <= t <= duration for t in times)
    for n in items:
        assert isinstance(n["text"], str) and re.fullmatch(r"You [a-z ]+\.", n["text"]), n["text"]


def test_ek100_annotations(roots):
    root = roots["ek100"]
    card, meta = _card(root), _load(root / METADATA_FILE)
    lay = get_layout("ek100")
    for split in ("train", "val"):
        ann = _load(lay.annotation_path(root, split))
        assert list(ann) == card["splits"][split]
        for uid, items in ann.items():
            assert re.fullmatch(r"P\d\d_\d\d", uid)
            assert all(set(n) == {"time", "text"} for n in items)
            _check_stream(items, meta[uid]["duration"])
            segs = card["videos"][uid]["segments"]
            assert [(n["time"], n["text"]) for n in items] == [(s["end"], s["text"]) for s in segs]


def test_ego4d_annotations(roots):
    root = roots["ego4d"]
    card, meta = _card(root), _load(root / METADATA_FILE)
    lay = get_layout("ego4d")
    n_narr = n_second = 0
    for split in ("train", "val"):
        ann = _load(lay.annotation_path(root, split))
        assert list(ann) == card["splits"][split]
        for uid, passes in ann.items():
            uuid.UUID(uid)
            assert isinstance(passes, dict) and len(passes) == 2
            (a1, first), (a2, second) = passes.items()
            uuid.UUID(a1), uuid.UUID(a2)
            for items in (first, second):
                _check_stream(items, meta[uid]["duration"])
            assert [n["time"] for n in first] == [s["end"] for s in card["videos"][uid]["segments"]]
            assert first != second
            n_narr, n_second = n_narr + len(first), n_second + len(second)
    assert 0.8 * n_narr < n_second < n_narr  # ~5% dropped in the second pass
    # segment summaries: val videos only, windows of half the training cap tiling each video (empty ones left
    # out), narrations inside their window
    from flownar.data.synth import _summary_windows

    summ = _load(root / "annotations" / lay.summary_file)
    val = _load(lay.annotation_path(root, "val"))
    assert set(summ) == set(card["splits"]["val"])
    assert SMOKE.summary_window_s == 0.5 * SMOKE.cap_s
    for uid, windows in summ.items():
        spans = [tuple(float(v) for v in key.split(", ")) for key in windows]
        tiling = [
            (round(a, 1), round(b, 1)) for a, b in _summary_windows(meta[uid]["duration"], SMOKE.summary_window_s)
        ]
        assert tiling[0][0] == 0.0 and tiling[-1][1] == meta[uid]["duration"]
        assert all(a[1] == b[0] for a, b in zip(tiling, tiling[1:]))
        assert set(spans) <= set(tiling) and spans == sorted(spans)
        assert all(e - s <= 1.5 * SMOKE.summary_window_s for s, e in spans)
        kept = {ann: [] for ann in val[uid]}
        for (s, e), per_pass in zip(spans, windows.values()):
            for ann, entry in per_pass.items():
                assert ann in val[uid] and entry["narration"]
                assert all(s <= n["time"] <= e for n in entry["narration"])
                kept[ann] += entry["narration"]
        assert kept == val[uid]  # every narration of every pass is in exactly one window


def test_egoexo4d_annotations(roots):
    root = roots["egoexo4d"]
    card, meta = _card(root), _load(root / METADATA_FILE)
    lay = get_layout("egoexo4d")
    visible = invisible = 0
    for split in ("train", "val"):
        ann = _load(lay.annotation_path(root, split))
        assert list(ann) == card["splits"][split]
        for uid, entries in ann.items():
            uuid.UUID(uid)
            assert isinstance(entries, list) and len(entries) == 2
            for entry in entries:
                descs = entry["descriptions"]
                assert all(set(d) == {"timestamp", "text", "ego_visible"} for d in descs)
                assert all(isinstance(d["ego_visible"], bool) for d in descs)
                _check_stream(descs, meta[uid]["duration"], time_key="timestamp")
                visible += sum(d["ego_visible"] for d in descs)
                invisible += sum(not d["ego_visible"] for d in descs)
            seen = [(d["timestamp"], d["text"]) for d in entries[0]["descriptions"] if d["ego_visible"]]
            assert seen == [(s["end"], s["text"]) for s in card["videos"][uid]["segments"]]
    assert 0.04 < invisible / (visible + invisible) < 0.2


def test_safetensors_variant(roots, tmp_path):
    from safetensors.torch import load_file

    root = write_synthetic_dataset(tmp_path / "st", layout="ek100", feature_format="safetensors", progress=False)
    meta = _load(root / METADATA_FILE)
    feature_dir = get_layout("ek100").feature_dir(root)
    for uid, entry in meta.items():
        assert entry["path"] == f"{uid}.safetensors"
        x = load_file(str(feature_dir / entry["path"]))["features"]
        assert x.dtype == torch.bfloat16 and x.shape == (int(entry["duration"] * 2) + 1, 10, SMOKE.feature_dim)
        assert torch.equal(x, _features(roots["ek100"], "ek100", uid))  # same data as the .pt variant
    assert _card(root)["feature_format"] == "safetensors"


def test_readers_load_every_layout(roots):
    from flownar.data.readers import FlowNarData

    for layout, root in roots.items():
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            data = FlowNarData(root, layout, strict=True)
            assert data.is_synthetic and data.fps == 2.0
            per_video = 1 if layout == "ek100" else 2
            assert len(data.streams("train")) == per_video * SMOKE.n_train
            assert len(data.streams("val")) == per_video * SMOKE.n_val
            assert len(data.eval_clips("val")) >= SMOKE.n_val
            report = data.check_features()
            assert report["tokens_per_frame"] == 10 and report["feature_dim"] == SMOKE.feature_dim


# ------------------------------------------------------------------------------------------------ determinism
def test_determinism(tmp_path):
    a = write_synthetic_dataset(tmp_path / "a", layout="ego4d", seed=3, progress=False)
    b = write_synthetic_dataset(tmp_path / "b", layout="ego4d", seed=3, progress=False)
    c = write_synthetic_dataset(tmp_path / "c", layout="ego4d", seed=4, progress=False)
    ha, hb, hc = _tree_hashes(a), _tree_hashes(b), _tree_hashes(c)
    assert ha == hb and len(ha) == SMOKE.n_videos + 7  # features, metadata, card, 2 narration + 2 QA files, summaries
    assert set(ha.values()).isdisjoint(hc.values())  # another seed: every file differs (uids too)


def test_world_is_layout_independent(roots):
    cards = {lay: _card(root) for lay, root in roots.items()}
    by_index = {lay: {v["index"]: v["segments"] for v in card["videos"].values()} for lay, card in cards.items()}
    assert by_index["ek100"] == by_index["ego4d"] == by_index["egoexo4d"]
    first = {lay: cards[lay]["splits"]["train"][0] for lay in LAYOUTS}
    x = _features(roots["ek100"], "ek100", first["ek100"])
    assert torch.equal(x, _features(roots["egoexo4d"], "egoexo4d", first["egoexo4d"]))
    assert by_index["ek100"][0] == [s.card() for s in simulate_video(SMOKE, 0, 0).segments]
    assert by_index["ek100"][0] != [s.card() for s in simulate_video(SMOKE, 1, 0).segments]


# ------------------------------------------------------------------------------------------------ the world
def test_world_structure(roots):
    card = _card(roots["ek100"])
    segs = [(uid, i, s) for uid, v in card["videos"].items() for i, s in enumerate(v["segments"])]
    kinds = {s["kind"] for _, _, s in segs}
    assert kinds <= {"local", "held_item", "hidden_item"} and {"held_item", "hidden_item"} <= kinds
    involved = set()
    for uid, v in card["videos"].items():
        prev_end = 0.0
        first = v["segments"][0]["start"]
        assert 0.5 <= first <= 5.0  # a lead-in before the first action
        for i, s in enumerate(v["segments"]):
            assert s["verb"] in VERBS and s["noun"] in NOUNS
            assert s["start"] >= prev_end and s["end"] > s["start"]
            prev_end = s["end"]
            assert s["text"][0].isupper() and s["text"].endswith(".")
            assert s["text"].startswith(f"You {s['verb']} the {s['noun']}")
            if s["kind"] == "local":
                assert s["depends_on"] is None and s["noun"] in s["visible"]
            else:  # the noun's identity is not in this segment's frames, only in an earlier one's
                j = s["depends_on"]
                assert isinstance(j, int) and 0 <= j < i
                assert s["noun"] not in s["visible"] and s["noun"] in v["segments"][j]["visible"]
                involved |= {(uid, i), (uid, j)}
            if s["kind"] == "hidden_item":
                assert s["verb"] == "take" and s["container"] in ("fridge", "drawer", "cupboard")
                assert s["text"] == f"You take the {s['noun']} from the {s['container']}."
            if s["kind"] == "held_item":
                assert s["verb"] == "put down" and s["noun"] in s["held"]
    assert 0.1 < len(involved) / len(segs) < 0.45
    durations = np.array([s["end"] - s["start"] for _, _, s in segs])
    assert 2.0 < durations.mean() < 6.0 and durations.max() <= 40.0
    assert (durations == 0.5).any()  # very quick actions exist (one frame: the world's clock ticks with the frames)


def _segment_noun_cos(x: np.ndarray, seg: dict, proto: np.ndarray) -> float:
    """Max over the central tokens of the cosine between the segment's mean token and a prototype."""
    j0, j1 = math.ceil(seg["start"] * 2), math.floor(seg["end"] * 2)
    if j1 < j0:  # a very quick action between two frames: its nearest frame
        j0 = j1 = round(seg["start"] + seg["end"])
    m = x[j0 : j1 + 1][:, CENTRAL_TOKENS].mean(axis=0)  # (5, D)
    return float(np.max(m @ proto / (np.linalg.norm(m, axis=1) * np.linalg.norm(proto))))


def test_dependencies_need_memory(roots):
    """The dependent segment's frames do not show its noun; the segment it depends on does."""
    root = roots["ek100"]
    card = _card(root)
    protos = world_prototypes(0, SMOKE.feature_dim)
    cos = {"held_item": [], "hidden_item": []}
    for uid, v in card["videos"].items():
        x = _features(root, "ek100", uid).float().numpy()
        for s in v["segments"]:
            if s["depends_on"] is not None:
                p = protos["nouns"][s["noun"]]
                src = v["segments"][s["depends_on"]]
                cos[s["kind"]].append((_segment_noun_cos(x, src, p), _segment_noun_cos(x, s, p)))
    for kind, pairs in cos.items():
        pairs = np.array(pairs)  # (n, 2): revealing, dependent
        assert len(pairs) >= 1, kind
        assert pairs[:, 0].mean() > pairs[:, 1].mean() + 0.1, (kind, pairs.mean(0))
        assert (pairs[:, 0] > pairs[:, 1]).mean() >= 0.75, kind


def test_prototypes():
    a, b = world_prototypes(0, 16), world_prototypes(1, 16)
    assert set(a["verbs"]) == set(VERBS) and set(a["nouns"]) == set(NOUNS)
    assert a["nouns"]["knife"].shape == (16,) and a["positions"].shape == (9, 16)
    assert np.array_equal(a["grasp"], world_prototypes(0, 16)["grasp"])
    assert not np.array_equal(a["grasp"], b["grasp"])


# ------------------------------------------------------------------------------------------------ world v3
def test_clock_ticks_with_the_frames(roots):
    card = _card(roots["ek100"])
    for v in card["videos"].values():
        for s in v["segments"]:
            for t in (s["start"], s["end"]):
                assert abs(t * 2.0 - round(t * 2.0)) < 1e-6, t


def test_memory_gaps_are_tagged(roots):
    card = _card(roots["ek100"])
    tagged = 0
    for v in card["videos"].values():
        segs = v["segments"]
        for i, s in enumerate(segs):
            if s["depends_on"] is None:
                assert s["gap_segments"] is None and s["gap_s"] is None
            else:
                tagged += 1
                assert s["gap_segments"] == i - s["depends_on"] >= 1
                assert s["gap_s"] == pytest.approx(s["end"] - segs[s["depends_on"]]["end"], abs=1e-6)
    assert tagged > 0


def test_length_regime():
    """Lengths in units of the training cap: validation lengths are the lognormal's quantiles (a fixed spread with
    its long tail in every seed); training cuts at the cap, which is the profile's max_num_frames."""
    from flownar.train.config import TRAIN_PROFILES

    cfg = synth_config("default")
    from flownar.data.world import training_cap

    assert training_cap("default") == cfg.cap_frames == TRAIN_PROFILES["default"]["max_num_frames"]
    assert training_cap("smoke") == SMOKE.cap_frames == TRAIN_PROFILES["smoke"]["max_num_frames"]
    assert training_cap("paper") == 1200
    val = np.array([video_length(cfg, 0, cfg.n_train + i) for i in range(cfg.n_val)])
    assert np.array_equal(np.sort(val), np.sort([video_length(cfg, 7, cfg.n_train + i) for i in range(cfg.n_val)]))
    assert 0.8 < val.mean() < 1.4 and val.max() > 4.0 and (val > 2.0).sum() >= 3
    q = np.sort(val)
    expected = [
        min(
            cfg.length_min
            + math.exp(NormalDist(math.log(cfg.length_median), cfg.length_sigma).inv_cdf((k + 0.5) / cfg.n_val)),
            cfg.length_max,
        )
        for k in range(cfg.n_val)
    ]
    assert np.allclose(q, expected, rtol=1e-9)
    train = np.array([video_length(cfg, 0, i) for i in range(cfg.n_train)])
    assert len(set(train.round(6))) == cfg.n_train and train.min() > cfg.length_min


def _render(cfg, seed=0, index=0):
    return render_features(simulate_video(cfg, seed, index), world_prototypes(seed, cfg.feature_dim), cfg, seed)


def test_completion_cue_is_causal_and_at_the_narration_frame():
    """The effect prototype appears in the central tokens of each narration frame (cue_linger of it on the next
    frame) and nowhere else: with cue_amp = 0 the features differ from the default ones exactly there."""
    import dataclasses

    from flownar.data.render import feature_scale

    cfg = dataclasses.replace(SMOKE, mix_share=0.0)
    with_cue, without = _render(cfg), _render(dataclasses.replace(cfg, cue_amp=0.0))
    video = simulate_video(cfg, 0, 0)
    frames = narration_frames(video, cfg.fps, len(with_cue))
    diff = np.abs(with_cue - without).max(axis=2)  # (T, 10)
    touched = sorted(set(np.flatnonzero(diff.max(1) > 1e-5)))
    assert set(frames) <= set(touched) and set(touched) <= set(frames) | {f + 1 for f in frames}
    assert (diff[:, [t for t in range(10) if t not in CENTRAL_TOKENS]] < 1e-5).all()  # central tokens only
    effect = world_prototypes(0, cfg.feature_dim)["effect"]
    proj = (with_cue - without)[frames][:, CENTRAL_TOKENS] @ effect / (effect @ effect)
    size = cfg.cue_amp / feature_scale(cfg)  # cue_amp is the amplitude added, in prototype units
    assert np.all(proj >= size * 0.999)  # the cue's full size (more where two narrations share a frame)
    after = [f + 1 for f in frames if f + 1 not in frames and f + 1 < len(with_cue)]
    lingering = (with_cue - without)[after][:, CENTRAL_TOKENS] @ effect / (effect @ effect)
    assert np.allclose(lingering, cfg.cue_linger * size, rtol=1e-3)


def test_content_and_the_rest_are_mixed_at_their_own_shares():
    """World v4: what the action shows is mixed across the frame's tokens at content_mix, the cue, scene and noise at
    mix_share. mix(x, s) = x - s * dev(x) (dev: the deviation from the frame's token mean), so renders at other
    shares recover each part's deviation, and they add up to the unmixed frame's."""
    import dataclasses

    from flownar.data.render import feature_scale
    from flownar.data.world import CENTER

    a, b = SMOKE.mix_share, SMOKE.content_mix
    assert 0 < b < a < 1

    def render(**kw):
        cfg = dataclasses.replace(SMOKE, **kw)
        return _render(cfg) * feature_scale(cfg)

    def dev(x):
        return x - x.mean(axis=1, keepdims=True)

    mixed, none = render(), render(mix_share=0.0, content_mix=0.0)
    d_content = (mixed - render(content_mix=a)) / (a - b)
    d_rest = (render(mix_share=b) - mixed) / (a - b)
    assert np.allclose(d_content + d_rest, dev(none), atol=1e-3)
    assert np.allclose(mixed.mean(axis=1), none.mean(axis=1), atol=1e-4)  # mixing keeps the frame mean
    # the object is content: a local segment's noun shows in the centre token's content part, not in the rest
    video = simulate_video(SMOKE, 0, 0)
    seg = next(s for s in video.segments if s.kind == "local" and s.end - s.start >= 2.0)
    noun = world_prototypes(0, SMOKE.feature_dim)["nouns"][seg.noun]
    mid = int(round((seg.start + seg.end) / 2 * SMOKE.fps))
    assert d_content[mid, CENTER] @ noun / (noun @ noun) > 1.0
    assert abs(d_rest[mid, CENTER] @ noun / (noun @ noun)) < 1.0


# ------------------------------------------------------------------------------------------------ world v4
def test_memory_segments_are_many_far_and_not_answered_by_a_habit():
    """World v4 on the default profile: hundreds of validation memory segments, over gaps past FlowNar-C's
    10-narration window and past the training cap, and the verb's most frequent training noun names at most 35 % of
    them (the cut script's knife is put down in view: a local segment)."""
    from collections import Counter

    cfg = synth_config("default")
    videos = [simulate_video(cfg, 0, i) for i in range(cfg.n_videos)]
    train = [s for v in videos[: cfg.n_train] for s in v.segments]
    val = [s for v in videos[cfg.n_train :] for s in v.segments]
    counts: dict[str, Counter] = {}
    for s in train:
        counts.setdefault(s.verb, Counter())[s.noun] += 1
    habit = {v: c.most_common(1)[0][0] for v, c in counts.items()}
    memory = [s for s in val if s.kind != "local"]
    assert len(memory) >= 250
    assert sum(habit[s.verb] == s.noun for s in memory) / len(memory) <= 0.35
    assert sum(s.gap_segments > 10 for s in memory) >= 50
    assert sum(s.gap_s > cfg.cap_s for s in memory) >= 20
    # every container holds items drawn from all portable ones: no container gives its item by habit
    hidden = Counter(s.container for s in train if s.kind == "hidden_item")
    assert len(hidden) == 3 and max(hidden.values()) / sum(hidden.values()) < 0.5
