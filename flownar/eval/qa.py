"""Streaming question answering: ask the world's questions during the stream, score the answers.

* :func:`run_qa`: one trained system narrates every clip of a split through the streaming engine while the
  world's questions (:mod:`flownar.data.questions`) are asked at their frames (:meth:`flownar.stream.Narrator.ask`);
  writes ``{system, checkpoint, model_fingerprint, questions_sha256, settings, answers}``. A file of the same model,
  questions and settings is reused; anything else is redone.
* :func:`answer_correct`: an answer is right when it contains every key word of the true answer (lower case, whole
  words: "twice", "fridge", "the knife and the cup" needs both items).
* :func:`oracle_answer`: the world oracle (perfect memory of what the card's segments showed: their actions,
  the items each showed, what an open container revealed); :func:`prior_answers`: the no-memory prior (the
  training questions' most frequent answer per type).
* :func:`qa_long` / :func:`qa_table` / :func:`plot_qa`: accuracy with n and a Wilson interval per system and
  oracle/prior row, overall, in view, by type, by gap in training caps and in segments; caption metrics of the
  answers (:func:`flownar.eval.captions.caption_scores`).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import Counter
from pathlib import Path

import pandas as pd

from ..data.layouts import QA_FILE
from ..data.questions import QUESTION_TYPES
from ..data.samples import Question
from ..errors import FlowNarError
from ..report import display_path
from .content import wilson

QA_RECORD_VERSION = 1
ORACLE, PRIOR = "world oracle", "prior (most frequent answer per type)"
GAP_CAPS = ("<1", "1-2", ">=2")
GAP_SEGMENTS = ("0", "1-10", "11-40", ">40")


# ---------------------------------------------------------------------------------------------------- scoring
def _words(text: str) -> str:
    return " " + " ".join(re.findall(r"[a-z0-9]+", text.lower())) + " "


def answer_correct(predicted: str, keywords) -> bool:
    """Every key word (or key phrase) of the true answer appears in ``predicted`` as whole words."""
    got = _words(predicted)
    return bool(keywords) and all(_words(k) in got for k in keywords)


def gap_caps_bin(gap_caps: float) -> str:
    return GAP_CAPS[0] if gap_caps < 1 else GAP_CAPS[1] if gap_caps < 2 else GAP_CAPS[2]


def gap_segments_bin(n: int) -> str:
    return (
        GAP_SEGMENTS[0] if n == 0 else GAP_SEGMENTS[1] if n <= 10 else GAP_SEGMENTS[2] if n <= 40 else GAP_SEGMENTS[3]
    )


# ---------------------------------------------------------------------------------------------------- references
def oracle_answer(question: str, kind: str, time: float, segments: list[dict]) -> str:
    """The world oracle's answer: perfect memory of the card's segments that ended by ``time`` (their verb and
    noun, the items each showed, the front item an open container revealed). No kitchen state is read."""
    past = [s for s in segments if s["end"] <= time + 1e-6]
    if kind == "last_action":
        return past[-1]["text"]
    if kind == "put_down":
        return f"The {[s for s in past if s['verb'] == 'put down'][-1]['noun']}."
    held: list[str] = []
    for s in past:
        if s["verb"] == "take":
            held.append(s["noun"])
        elif s["verb"] == "put down" and s["noun"] in held:
            held.remove(s["noun"])
    if kind == "held":
        return " and the ".join(["The " + held[0], *held[1:]]) + "." if held else "Nothing."
    if kind == "count":
        verb, noun = question.removeprefix("How many times did I ").removesuffix("?").split(" the ")
        from ..data.questions import NUMBER_WORDS

        n = sum((s["verb"], s["noun"]) == (verb, noun) for s in past)
        return NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else f"{n} times."
    if kind == "container":
        c = question.removeprefix("What did I last see in the ").removesuffix("?")
        shown = [s["revealed"] for s in past if s.get("revealed") and c in s["visible"] and s["noun"] == c]
        shown = shown or [s["revealed"] for s in past if s.get("revealed") and s.get("container") == c]
        return f"The {shown[-1]}." if shown else "Nothing."
    if kind == "where":
        return _oracle_where(question.removeprefix("Where did I last see the ").removesuffix("?"), past)
    raise ValueError(f"unknown question type {kind!r}")


def _oracle_where(x: str, past: list[dict]) -> str:
    i = max(i for i, s in enumerate(past) if x in s["visible"])
    held: list[str] = []
    for s in past[: i + 1]:
        if s["verb"] == "take":
            held.append(s["noun"])
        elif s["verb"] == "put down" and s["noun"] in held:
            held.remove(s["noun"])
    seg = past[i]
    if x in held:
        return "In my hands."
    if seg.get("revealed") == x:  # seen at the front of an open container
        opened = seg["noun"] if seg["verb"] in ("open", "close") else seg.get("container")
        return f"In the {opened}."
    return "On the counter."


def prior_answers(data) -> dict[str, str]:
    """The no-memory prior: per question type, the most frequent answer of the training questions."""
    counts: dict[str, Counter] = {}
    for qs in data.questions("train").values():
        for q in qs:
            counts.setdefault(q.type, Counter())[q.answer] += 1
    return {k: c.most_common(1)[0][0] for k, c in counts.items()}


# ---------------------------------------------------------------------------------------------------- the runner
def questions_sha256(data, split: str) -> str:
    return hashlib.sha256((data.root / "annotations" / QA_FILE.format(split=split)).read_bytes()).hexdigest()[:16]


def clip_questions(data, split: str = "val", limit: int | None = None):
    """(clip, its questions as clip-relative :class:`~flownar.data.samples.Question`, the world's questions) for
    every clip of ``split`` (the first ``limit``) that has questions inside its frames."""
    asked = data.questions(split)
    out = []
    for clip in data.eval_clips(split)[:limit]:
        world = [
            q for q in asked.get(clip.video_uid, ()) if clip.start_frame <= round(q.time * data.fps) < clip.stop_frame
        ]
        if world:
            rel = [Question(round(q.time * data.fps) - clip.start_frame, q.text) for q in world]
            out.append((clip, rel, world))
    return out


def run_qa(
    run,
    data,
    out_file,
    *,
    system: str | None = None,
    split: str = "val",
    limit: int | None = None,
    progress: bool = True,
    **narrator_kwargs,
) -> dict:
    """Stream every clip of ``split`` with its questions through one trained system; writes and returns the
    record (see the module docstring). Reused when ``out_file`` holds this model's answers to these questions
    with these settings."""
    from ..checkpoint import run_fingerprint
    from ..progress import progress_bar
    from ..stream import Narrator
    from .runner import _open_run, _write_json

    out_file = Path(out_file)
    data.questions(split)  # a clear error when there are none (real data, or a world written before questions)
    fingerprint = run_fingerprint(run)
    sha = questions_sha256(data, split)
    settings = {"split": split, "limit": limit, **{k: v for k, v in sorted(narrator_kwargs.items())}}
    if out_file.is_file():
        try:
            old = json.loads(out_file.read_text())
        except (OSError, json.JSONDecodeError):
            old = {}
        if (old.get("model_fingerprint"), old.get("questions_sha256"), old.get("settings")) == (
            fingerprint,
            sha,
            settings,
        ):
            return old
    model, chat = _open_run(run, data, system)
    if narrator_kwargs.get("max_new_tokens") is None:  # the run's profile's cap, as the narration eval
        from .. import profiles
        from .runner import _run_profile

        narrator_kwargs["max_new_tokens"] = profiles.get(_run_profile(run)).narration_cap
    narrator = Narrator(model, chat, **narrator_kwargs)
    answers, t0 = [], time.perf_counter()
    jobs = clip_questions(data, split, limit)
    for clip, rel, world in progress_bar(
        jobs, desc=f"questions {data.dataset}/{model.config.system}", enabled=progress
    ):
        frames = data.load_features(clip.video_uid, range(clip.start_frame, clip.stop_frame))
        narrator.narrate(frames, questions=rel)
        answers += [_answer_row(clip, r, q, a) for q, r, a in zip(world, rel, narrator.answers)]
    rec = {
        "version": QA_RECORD_VERSION,
        "system": model.config.system,
        "checkpoint": display_path(run),
        "model_fingerprint": fingerprint,
        "questions_sha256": sha,
        "settings": settings,
        "seconds": round(time.perf_counter() - t0, 2),
        "answers": answers,
    }
    _write_json(out_file, rec)
    return rec


def _answer_row(clip, asked: Question, q, answer) -> dict:
    """One answer of :func:`run_qa`: the world's question ``q`` asked at clip frame ``asked.frame``."""
    return {
        "clip_id": clip.clip_id,
        "video_uid": clip.video_uid,
        "frame": asked.frame,
        "time": q.time,
        "question": q.text,
        "answer": q.answer,
        "keywords": list(q.keywords),
        "type": q.type,
        "gap_s": q.gap_s,
        "gap_segments": q.gap_segments,
        "gap_caps": q.gap_caps,
        "in_view": q.in_view,
        "predicted": answer.text,
        "correct": answer_correct(answer.text, q.keywords),
    }


# ---------------------------------------------------------------------------------------------------- tables
def reference_rows(data, split: str = "val", limit: int | None = None) -> dict[str, list[dict]]:
    """The world oracle's and the prior's answers to the questions :func:`run_qa` asks, as answer rows."""
    card = data.synthetic_card or {}
    prior = prior_answers(data)
    rows: dict[str, list[dict]] = {ORACLE: [], PRIOR: []}
    for clip, _, world in clip_questions(data, split, limit):
        segments = card["videos"][clip.video_uid]["segments"]
        for q in world:
            base = {"type": q.type, "gap_caps": q.gap_caps, "gap_segments": q.gap_segments, "in_view": q.in_view}
            base |= {"answer": q.answer, "keywords": list(q.keywords)}
            for name, said in (
                (ORACLE, oracle_answer(q.text, q.type, q.time, segments)),
                (PRIOR, prior.get(q.type, "")),
            ):
                rows[name].append(base | {"predicted": said, "correct": answer_correct(said, q.keywords)})
    return rows


def qa_long(records: dict[str, dict], references: dict[str, list[dict]] | None = None) -> pd.DataFrame:
    """One row per (system key, its table name, group, value): ``k`` right of ``n``, the rate (%) and its 95% Wilson
    interval. Groups: ``all``, ``in_view``, ``type``, ``gap_caps``, ``gap_segments``."""
    from ..systems import display_name

    answers = {k: r["answers"] for k, r in records.items()} | (references or {})
    out = []
    for key, rows in answers.items():
        name = display_name(key)
        if not rows:
            raise FlowNarError(f"{name}: no answers to score")
        df = pd.DataFrame(rows)
        df["all"] = "all"
        df["in_view"] = df["in_view"].map({True: "in view", False: "from memory"})
        df["gap_caps"] = df["gap_caps"].map(gap_caps_bin)
        df["gap_segments"] = df["gap_segments"].map(gap_segments_bin)
        for group in ("all", "in_view", "type", "gap_caps", "gap_segments"):
            for value, g in df.groupby(group, sort=False):
                k, n = int(g["correct"].sum()), len(g)
                lo, hi = wilson(k, n)
                out.append(
                    {
                        "system": key,
                        "row": name,
                        "group": group,
                        "value": value,
                        "k": k,
                        "n": n,
                        "rate": 100 * k / n,
                        "lo": 100 * lo,
                        "hi": 100 * hi,
                    }
                )
    return pd.DataFrame(out)


def _cell(r) -> str:
    return f"{r.rate:.1f} [{r.lo:.0f}-{r.hi:.0f}] (n={r.n})"


def qa_table(long: pd.DataFrame) -> pd.DataFrame:
    """The QA table: one row per system (then the oracle and the prior), answers right (%) with the 95% interval
    and n, overall, in view / from memory, per type and per gap in training caps."""
    order = ["all", "in view", "from memory", *QUESTION_TYPES, *(f"gap {g} caps" for g in GAP_CAPS)]
    df = long[long.group.isin(["all", "in_view", "type", "gap_caps"])].copy()
    df["column"] = [f"gap {v} caps" if g == "gap_caps" else v for g, v in zip(df.group, df.value)]
    table = df.assign(cell=[_cell(r) for r in df.itertuples()]).pivot(index="row", columns="column", values="cell")
    rows = list(dict.fromkeys(long.row))
    return table.reindex(index=rows, columns=[c for c in order if c in table.columns]).fillna("")


def caption_table(records: dict[str, dict]) -> pd.DataFrame:
    """Caption metrics of each system's answers against the true answers (METEOR needs Java)."""
    from ..systems import display_name
    from .captions import caption_scores

    return pd.DataFrame(
        {
            display_name(k): caption_scores((a["answer"], a["predicted"]) for a in r["answers"])
            for k, r in records.items()
        }
    ).T


def plot_qa(long: pd.DataFrame, title: str = ""):
    """Answers right (%) by memory gap (in training caps), one line per row, with the 95% intervals."""
    import matplotlib.pyplot as plt

    from ..systems import colour, key_of

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, group, values, label in (
        (axes[0], "gap_caps", GAP_CAPS, "memory gap (training caps)"),
        (axes[1], "gap_segments", GAP_SEGMENTS, "memory gap (segments)"),
    ):
        for name, g in long[long.group == group].groupby("row", sort=False):
            g = g.set_index("value").reindex(list(values))
            style = dict(color="k", ls="--") if name in (ORACLE, PRIOR) else dict(color=colour(key_of(name)))
            if name == PRIOR:
                style["ls"] = ":"
            ax.errorbar(
                range(len(values)),
                g.rate,
                yerr=[(g.rate - g.lo).clip(lower=0), (g.hi - g.rate).clip(lower=0)],  # float rounding at 0 and 100
                marker="o",
                capsize=3,
                label=name,
                **style,
            )
        ax.set(xticks=range(len(values)), xticklabels=values, xlabel=label, ylabel="answers right (%)", ylim=(0, 100))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _qa_worker(job: tuple) -> tuple[str, dict]:
    """One system's answers in a worker process with one CPU thread (see :func:`qa_systems`)."""
    import torch

    system, run, data, out_file, kwargs = job
    torch.set_num_threads(1)
    return system, run_qa(run, data, out_file, system=system, **kwargs)


def qa_systems(runs: dict, data, out_dir, *, workers: int | None = None, **kwargs) -> dict[str, dict]:
    """:func:`run_qa` for every trained system (``runs``: system -> run directory) into ``out_dir/<system>.json``,
    several systems at once on the CPU (processes of one thread each, as
    :func:`flownar.eval.runner.narrate_systems`). Returns ``{system: record}`` in ``runs``' order."""
    from .runner import per_system_in_processes

    kwargs = dict(kwargs, progress=False)
    jobs = [(system, run, data, Path(out_dir) / f"{system}.json", kwargs) for system, run in runs.items()]
    return per_system_in_processes(_qa_worker, jobs, workers)
