"""Running both protocols over a split: ``flownar eval stream`` and ``flownar eval oracle``.

Self-conditioned: every clip of the segment-summary split is narrated by :class:`~flownar.stream.Narrator` on
the model's own outputs; each clip's predictions are written, as soon as the clip is done, to
``<out>/<clip_id>.json`` (atomically: a temporary file, then a rename), so an interrupted run resumes without
redoing finished clips. Then both scorings of :mod:`flownar.eval.metrics` are computed.

Oracle: one teacher-forced pass per narration-stream sample of the split (:mod:`flownar.eval.oracle`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import torch

from ..checkpoint import run_fingerprint  # noqa: F401 (re-exported: notebooks import it from here)
from ..data.samples import build_stream_samples
from ..errors import FlowNarError
from ..report import display_path
from ..stream import Narrator
from .metrics import ClipReference, evaluate_both
from .oracle import OracleEvaluator, aggregate, sample_summary
from .predictions import (
    ANY_MODEL,
    PREDICTION_VERSION,
    _atomic_write_json,
    clip_file,
    clip_inputs,
    load_predictions,
    read_prediction,
    why_pending,
)


def narrate_clips(
    model,
    chat,
    data,
    out_dir: str | Path,
    split: str = "val",
    system: str = "",
    progress: bool = True,
    limit: int | None = None,
    fingerprint: str | None = None,
    narrator=None,
    shard=None,
    **narrator_kwargs,
) -> dict:
    """Narrate every clip of ``split`` (the first ``limit``) that has no prediction file of this clip by this
    model (``fingerprint``, see :func:`flownar.checkpoint.run_fingerprint`) from these inputs yet (the clip's
    feature file and frames, the narrator's settings: :func:`clip_inputs`; a file made on other data with the same
    clip ids, or with other thresholds, is redone). Returns ``{"clips": [ids],
    "done": narrated now, "reused": files kept, "redone": files replaced (another model or clip, unreadable),
    "skipped": same as reused, "seconds": narration time}``. ``shard`` (:class:`~flownar.eval.shards.Shard`):
    only its part of the clips is narrated (``"clips"`` still lists them all)."""
    from ..progress import progress_bar

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clips = data.eval_clips(split)[:limit]
    if narrator is None:  # any object with narrate(frames) and counters / state_size() (the world oracle) will do
        narrator = Narrator(model, chat, **narrator_kwargs)
    begin_clip = getattr(narrator, "begin_clip", None)
    done = reused = redone = 0
    seconds = 0.0
    mine = clips if shard is None else shard.take(clips)
    desc = f"narrating {data.dataset}/{system or 'clips'}" + (f" (shard {shard})" if shard is not None else "")
    for clip in progress_bar(mine, desc=desc, enabled=progress, unit="clip"):
        path = clip_file(out_dir, clip.clip_id)
        inputs = clip_inputs(data, clip, narrator_kwargs)
        old = read_prediction(path, fingerprint, clip.clip_id)
        if old is not None and old.get("inputs") == inputs:
            reused += 1
            continue
        redone += path.exists()
        frames = data.load_features(clip.video_uid, range(clip.start_frame, clip.stop_frame))
        if begin_clip is not None:
            begin_clip(clip)
        t0 = time.perf_counter()
        events = narrator.narrate(frames)
        dt = time.perf_counter() - t0
        seconds += dt
        rec = {
            "version": PREDICTION_VERSION,
            "clip_id": clip.clip_id,
            "video_uid": clip.video_uid,
            "system": system,
            "model_fingerprint": fingerprint,
            "inputs": inputs,
            "start_frame": clip.start_frame,
            "stop_frame": clip.stop_frame,
            "narrations": {str(e.frame): e.text for e in events},
            "narrations_raw": {str(e.frame): e.raw_text for e in events},
            "forced": [e.frame for e in events if e.forced],
            "timing": {
                "seconds": round(dt, 4),
                "frames": int(frames.shape[0]),
                "fps": round(frames.shape[0] / dt, 2) if dt > 0 else None,
            },
            "counters": asdict(narrator.counters),
            "final_state": narrator.state_size(),
        }
        _atomic_write_json(path, rec)
        done += 1
    return {
        "clips": [c.clip_id for c in clips],
        "done": done,
        "reused": reused,
        "redone": redone,
        "skipped": reused,
        "seconds": round(seconds, 2),
    }


def clip_references(data, split: str = "val") -> list[ClipReference]:
    """The ground truth of every clip: for the ``paper`` scoring every narration with its text as annotated (the
    original evaluator's); for ``corrected`` the stripped texts of the visible ones (EgoExo4D's ``ego_visible``)."""
    refs = []
    for c in data.eval_clips(split):
        paper = [[(n.time, n.annotated) for n in ref] for ref in c.references]
        corrected = [lst for lst in ([(n.time, n.text) for n in ref if n.visible] for ref in c.references) if lst]
        refs.append(
            ClipReference(
                c.clip_id,
                paper,
                c.start_time,
                c.start_frame,
                data.dataset,
                corrected_references=None if corrected == paper else corrected,
            )
        )
    return refs


def score_clips(
    data,
    out_dir: str | Path,
    split: str = "val",
    eos: str | None = None,
    with_captions: bool = True,
    clip_ids: list[str] | None = None,
    fingerprint=ANY_MODEL,
) -> dict:
    """Both scorings (``paper`` and ``corrected``) of the predictions in ``out_dir``: of every clip of the split,
    or of ``clip_ids`` only (e.g. the clips a ``--limit`` run narrated)."""
    refs = clip_references(data, split)
    if clip_ids is not None:
        wanted = set(clip_ids)
        refs = [r for r in refs if r.clip_id in wanted]
    preds = load_predictions(out_dir, [r.clip_id for r in refs], fingerprint)
    if not preds:
        raise FlowNarError(f"{out_dir}: no prediction files for the {len(refs)} clips of {data.dataset}/{split}")
    kw = {"fps": data.fps, "with_captions": with_captions}
    if eos is not None:
        kw["eos"] = eos
    return evaluate_both(preds, refs, **kw)


def stream_timing(out_dir: str | Path, clip_ids: list[str] | None = None, fingerprint=ANY_MODEL) -> dict:
    """Frames per second and counters summed over the clip records of a run: of ``clip_ids`` written by
    ``fingerprint`` when given (other files in the folder, e.g. of an earlier dataset, are not counted), else of
    every readable record in the folder."""
    frames = seconds = 0.0
    counters: dict[str, int] = {}
    if clip_ids is None:
        items = [(p, None) for p in sorted(Path(out_dir).glob("*.json"))]
    else:
        items = [(clip_file(Path(out_dir), c), c) for c in clip_ids]
    for p, cid in items:
        rec = read_prediction(p, fingerprint, cid) if p.exists() else None
        if rec is None:
            continue
        frames += rec["timing"]["frames"]
        seconds += rec["timing"]["seconds"]
        for k, v in rec["counters"].items():
            counters[k] = counters.get(k, 0) + v
    return {
        "frames": int(frames),
        "seconds": round(seconds, 2),
        "fps": round(frames / seconds, 2) if seconds else None,
        **counters,
    }


@torch.no_grad()
def oracle_split(
    model,
    chat,
    data,
    split: str = "val",
    seed: int = 0,
    max_num_frames: int = 1200,
    progress: bool = True,
    limit: int | None = None,
    shard=None,
) -> tuple[dict, list[dict]]:
    """Teacher-forced metrics over a split (samples built as for training, instruction seeded per sample).
    ``shard``: only its part of the samples (rows and metrics of that part)."""
    from ..progress import progress_bar

    samples = build_stream_samples(
        data, split, use_memory=model.config.use_memory, max_num_frames=max_num_frames, seed=seed
    )[:limit]
    if shard is not None:
        samples = shard.take(samples)
    ev = OracleEvaluator(model, chat, fps=data.fps)
    rows = []
    desc = f"oracle {data.dataset}/{model.config.system}" + (f" (shard {shard})" if shard is not None else "")
    for s in progress_bar(samples, desc=desc, enabled=progress, unit="stream"):
        enc = chat.encode(s)
        frames = data.load_features(s.video_uid, s.frames).float()
        rows.append({"sample_id": s.sample_id, **sample_summary(ev.sample(enc, frames), fps=data.fps)})
    return (aggregate(rows) if rows else {}), rows


# ---------------------------------------------------------------------------------------------------- runners
# One runner per protocol: open the run (refusing another system or frames of another shape), run, write one
# artefact. The CLI (`flownar eval stream|oracle`) and notebooks 02/03 both call these.
def _open_run(run, data, system: str | None, device=None):
    from ..checkpoint import check_compatible, load_trained

    model, chat = load_trained(run, expect_system=system)
    check_compatible(model, data.tokens_per_frame, data.feature_dim, run, data.root)
    if device is not None:
        model = model.to(device)
    return model, chat


def _run_profile(run) -> str | None:
    cfg = Path(run) / "train_config.json"
    return json.loads(cfg.read_text()).get("profile") if cfg.is_file() else None


def _write_json(path: Path, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, default=float))


def _write_metrics(metrics_file, rec: dict) -> None:
    """The self-conditioned record without its per-clip tables and caption pairs, if ``metrics_file`` is given."""
    if metrics_file is not None:
        brief = {k: {m: v for m, v in sc.items() if m not in ("per_clip", "pairs")} for k, sc in rec["scores"].items()}
        _write_json(metrics_file, {**rec, "scores": brief})


def run_teacher_forced(
    run,
    data,
    out_file,
    *,
    system: str | None = None,
    split: str = "val",
    seed: int = 0,
    max_num_frames: int | None = None,
    limit: int | None = None,
    progress: bool = True,
    shard=None,
) -> dict:
    """The oracle protocol for one trained system; writes ``out_file`` as ``{system, checkpoint,
    model_fingerprint, inputs, metrics, samples}`` and returns it. The streams are cut at ``max_num_frames``; by
    default at the run's own training cap (its ``train_config.json``), as the original evaluates with the training
    dataset's ``max_num_frames``. When ``out_file`` already holds the record of the same model (fingerprint) on
    the same inputs (protocol, data, split, seed, cut, limit), it is returned (``"reused": True``) without
    evaluating again; anything else is evaluated and the file replaced.

    ``shard`` (``"i/N"``, a :class:`~flownar.eval.shards.Shard`, or None: torchrun's environment if any): this
    process evaluates its part into ``<out_file stem>.shard<i>of<N>.json``; the merging process (torchrun's rank 0
    after all ranks; with ``--shard``, whichever finds every part written) writes ``out_file`` from the parts in
    the split's order and returns it; the others return their part's record (``"shard"`` set, no ``"metrics"``)."""
    from ..provenance import data_fingerprint
    from .shards import resolve

    shard = resolve(shard)
    if max_num_frames is None:
        cfg = Path(run) / "train_config.json"
        max_num_frames = json.loads(cfg.read_text()).get("max_num_frames", 1200) if cfg.is_file() else 1200
    fingerprint = run_fingerprint(run)
    # what a record must share to be merged with another part or reused: the protocol, the data (its
    # fingerprint), the sampling seed, the cut and the limit
    inputs = {"protocol": ORACLE_PROTOCOL, "data_sha256": data_fingerprint(data.root)["sha256"], "split": split}
    inputs |= {"seed": seed, "max_num_frames": max_num_frames, "limit": limit}
    if shard is None:
        kept = _reusable_oracle(out_file, fingerprint, inputs, system)
        if kept is not None:
            return kept
    model, chat = _open_run(run, data, system, shard.device() if shard is not None else None)
    agg, rows = oracle_split(
        model,
        chat,
        data,
        split=split,
        seed=seed,
        max_num_frames=max_num_frames,
        progress=progress,
        limit=limit,
        shard=shard,
    )
    rec = {"system": model.config.system, "checkpoint": display_path(run), "model_fingerprint": fingerprint}
    rec["inputs"] = inputs
    if shard is None:
        rec |= {"metrics": agg, "samples": rows}
        _write_json(out_file, rec)
        return rec
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)  # a missing --out: made, so that the finished part is kept
    parts = [out_file.with_name(f"{out_file.stem}.shard{i}of{shard.count}.json") for i in range(shard.count)]
    part = {**rec, "shard": str(shard), "samples": rows}
    _atomic_write_json(parts[shard.index], part)
    shard.wait_for_all()
    if shard.launched and not shard.leader:
        return part
    found = [_read_shard_part(p, fingerprint) for p in parts]
    other = [str(p) for p, f in zip(parts, found) if f is not None and f.get("inputs") != inputs]
    if other:
        raise FlowNarError(
            f"{', '.join(other)}: made from other inputs than this part ({inputs}: another data root, --seed or "
            "--limit); remove them and run those shards again"
        )
    if any(f is None for f in found):
        missing = [str(p) for p, f in zip(parts, found) if f is None]
        if shard.launched:
            raise RuntimeError(f"teacher-forced shards missing after all ranks finished: {missing}")
        # --shard: another part is still running; the last one merges. Parts made with another N never merge
        # with these: name them
        mine = {p.name for p in parts}
        strays = sorted(str(p) for p in out_file.parent.glob(f"{out_file.stem}.shard*of*.json") if p.name not in mine)
        return part | {"pending": missing, "other_counts": strays}
    merged = _interleave([f["samples"] for f in found])
    rec |= {"metrics": aggregate(merged), "samples": merged}
    _write_json(out_file, rec)
    return rec


#: the teacher-forced protocol's version, part of every record's inputs: raise it when what a sample's row holds
#: changes (samples, OracleEvaluator, sample_summary), so that no record of the older protocol is reused
ORACLE_PROTOCOL = 1


def _reusable_oracle(out_file, fingerprint: str, inputs: dict, system: str | None) -> dict | None:
    """The record already in ``out_file`` when the same model (fingerprint) evaluated the same inputs, its
    metrics recomputed from its rows (so a change to :func:`aggregate` is never hidden by the reuse); None when
    there is no such record (none yet, unreadable, another model, other inputs or an older record without them)."""
    try:
        rec = json.loads(Path(out_file).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(rec, dict) or rec.get("model_fingerprint") != fingerprint or rec.get("inputs") != inputs:
        return None
    if (system is not None and rec.get("system") != system) or not rec.get("samples"):
        return None
    metrics = aggregate(rec["samples"])
    if metrics != rec.get("metrics"):
        rec["metrics"] = metrics
        _write_json(out_file, rec)
    return rec | {"reused": True}


def _read_shard_part(path: Path, fingerprint: str) -> dict | None:
    """A teacher-forced part written by this model, or None when it is not written yet. A part that cannot be
    read, or that another model wrote, is an error naming it (the shards would otherwise wait for it forever)."""
    try:
        rec = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FlowNarError(
            f"{path}: not a readable shard part ({type(e).__name__}: {e}); remove it and run that shard again"
        ) from None
    if not isinstance(rec, dict) or "samples" not in rec:
        raise FlowNarError(f"{path}: not a shard part (no samples); remove it and run that shard again")
    if rec.get("model_fingerprint") != fingerprint:
        raise FlowNarError(
            f"{path}: written by another model ({rec.get('checkpoint')}, fingerprint "
            f"{str(rec.get('model_fingerprint'))[:12]}) than this part's; give every shard the same --checkpoint"
        )
    return rec


def _interleave(parts: list[list]) -> list:
    """Undo :meth:`Shard.take`: part ``i`` holds items ``i, i + N, ...``; returns them in the original order."""
    out = []
    for k in range(max((len(p) for p in parts), default=0)):
        out += [p[k] for p in parts if k < len(p)]
    return out


def run_self_conditioned(
    run,
    data,
    predictions_dir,
    metrics_file=None,
    *,
    system: str | None = None,
    split: str = "val",
    limit: int | None = None,
    progress: bool = True,
    with_captions: bool = True,
    max_new_tokens: int | None = None,
    shard=None,
    **narrator_kwargs,
) -> dict:
    """The self-conditioned protocol for one trained system: narrate the clips not narrated yet by this model into
    ``predictions_dir`` (one file per clip), score them both ways, and write ``metrics_file`` (if given) as
    ``{system, checkpoint, model_fingerprint, run, timing, scores}``. Returns that record with the full scores
    (per-clip tables and caption pairs included). ``max_new_tokens`` defaults to the run's profile's cap
    (:attr:`flownar.profiles.Profile.narration_cap`).

    ``shard`` (``"i/N"``, a :class:`~flownar.eval.shards.Shard`, or None: torchrun's environment if any): this
    process narrates its part of the clips; the merging process (torchrun's rank 0 after all ranks; with
    ``--shard``, whichever finds every clip narrated by this model) scores all of them and writes
    ``metrics_file``; the others return ``{..., "shard", "run"}`` without ``"scores"``."""
    from .. import profiles
    from .shards import resolve

    shard = resolve(shard)
    model, chat = _open_run(run, data, system, shard.device() if shard is not None else None)
    if max_new_tokens is None:
        max_new_tokens = profiles.get(_run_profile(run)).narration_cap
    sys_name = model.config.system
    fingerprint = run_fingerprint(run)
    r = narrate_clips(
        model,
        chat,
        data,
        predictions_dir,
        split=split,
        system=sys_name,
        progress=progress,
        limit=limit,
        fingerprint=fingerprint,
        max_new_tokens=max_new_tokens,
        shard=shard,
        **narrator_kwargs,
    )
    if shard is not None:
        shard.wait_for_all()
        part = {
            "system": sys_name,
            "checkpoint": display_path(run),
            "model_fingerprint": fingerprint,
            "shard": str(shard),
        }
        if shard.launched and not shard.leader:
            return {**part, "run": r}
        pending = [c for c in r["clips"] if read_prediction(clip_file(Path(predictions_dir), c), fingerprint) is None]
        if pending:
            if shard.launched:
                raise RuntimeError(f"clips not narrated after all ranks finished: {pending}")
            # --shard: the last part to finish scores; say why the others' clips are not there yet
            why = Counter(why_pending(clip_file(Path(predictions_dir), c), fingerprint) for c in pending)
            return {**part, "run": r, "pending": pending, "pending_why": dict(why)}
    # score exactly the clips narrated here (all of the split without a limit); refuse another model's files
    scored = r["clips"] if limit is not None else None
    scores = score_clips(
        data, predictions_dir, split=split, with_captions=with_captions, clip_ids=scored, fingerprint=fingerprint
    )
    rec = {
        "system": sys_name,
        "checkpoint": display_path(run),
        "model_fingerprint": fingerprint,
        "run": r,
        "scored_clips": scores["paper"]["n_clips"],
        "timing": stream_timing(predictions_dir, r["clips"], fingerprint),
        "scores": scores,
    }
    _write_metrics(metrics_file, rec)
    return rec


def _narrate_worker(job: tuple) -> tuple[str, dict]:
    """One system's narrations in a worker process with one CPU thread (see :func:`narrate_systems`)."""
    from .. import profiles

    system, run, data, predictions_dir, kwargs = job
    torch.set_num_threads(1)
    model, chat = _open_run(run, data, system)
    kwargs = dict(kwargs)
    if kwargs.get("max_new_tokens") is None:
        kwargs["max_new_tokens"] = profiles.get(_run_profile(run)).narration_cap
    r = narrate_clips(
        model, chat, data, predictions_dir, system=model.config.system, fingerprint=run_fingerprint(run), **kwargs
    )
    return system, r


def narrate_systems(runs: dict, data, out_dir, *, workers: int | None = None, split: str = "val", **kwargs) -> dict:
    """Narrate the clips of every trained system (``runs``: system -> run directory) into ``out_dir/<system>``,
    several systems at once on the CPU: up to ``workers`` (default: the CPU count) processes of one thread each,
    since a tiny model's narration gains little from a second thread. A clip's narration does not depend on which
    process makes it (always one thread), and :func:`run_self_conditioned` then finds the files made by the same
    model and scores them. ``kwargs``: :func:`narrate_clips`'s (thresholds, ``max_new_tokens``). Returns
    ``{system: narrate_clips' record}``."""
    kwargs = dict(kwargs, split=split, progress=False)
    jobs = [(system, run, data, Path(out_dir) / system, kwargs) for system, run in runs.items()]
    return per_system_in_processes(_narrate_worker, jobs, workers)


def per_system_in_processes(worker, jobs: list[tuple], workers: int | None = None) -> dict:
    """``worker(job) -> (system, result)`` for every job (the first item of each is its system), in up to
    ``workers`` (default: the CPU count) spawned processes; returns ``{system: result}`` in the jobs' order."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    workers = workers or os.cpu_count() or 1
    out = {}
    with ProcessPoolExecutor(max_workers=max(1, min(workers, len(jobs))), mp_context=mp.get_context("spawn")) as pool:
        for fut in as_completed([pool.submit(worker, job) for job in jobs]):
            system, r = fut.result()
            out[system] = r
    return {job[0]: out[job[0]] for job in jobs}


def run_world_oracle(data, predictions_dir, metrics_file=None, *, split: str = "val", progress: bool = True) -> dict:
    """The world-oracle reference row (:mod:`flownar.eval.world_oracle`) on embedded data: narrate ``split``
    through :func:`narrate_clips`, score both ways like the systems. Raises on real data (no card, no
    prototypes)."""

    from .world_oracle import ORACLE_VERSION, WORLD_ORACLE, WorldOracleNarrator

    card = data.synthetic_card
    if card is None:
        raise FlowNarError(f"{data.root}: not embedded synthetic data (no card): the world oracle needs the world")
    oracle = WorldOracleNarrator(card)
    digest = hashlib.sha256(json.dumps(card, sort_keys=True).encode()).hexdigest()[:16]
    fingerprint = f"{WORLD_ORACLE}-v{ORACLE_VERSION}:{digest}"
    r = narrate_clips(
        None,
        None,
        data,
        predictions_dir,
        split=split,
        system=WORLD_ORACLE,
        progress=progress,
        fingerprint=fingerprint,
        narrator=oracle,
    )
    scores = score_clips(data, predictions_dir, split=split, fingerprint=fingerprint)
    rec = {
        "system": WORLD_ORACLE,
        "checkpoint": None,
        "model_fingerprint": fingerprint,
        "run": r,
        "scored_clips": scores["paper"]["n_clips"],
        "timing": stream_timing(predictions_dir, r["clips"], fingerprint),
        "scores": scores,
    }
    _write_metrics(metrics_file, rec)
    return rec
