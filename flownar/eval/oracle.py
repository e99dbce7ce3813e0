"""The oracle (teacher-forcing) protocol: LM-PPL, TimeDiff, Fluency and LM-Correctness (reference section 9).

One teacher-forced pass over each validation sample (built exactly like training, with the system's DCM mask),
plus a look-ahead for turns the model would answer late. Definitions, per turn (a turn = the tokens after the
previous EOS through this turn's EOS; its *decision positions* are the labelled last ``<v>`` of each frame, its
*LM positions* every other labelled position, i.e. the targets ``Assistant``, ``:``, the text and the EOS):

* **LM-PPL** = exp(mean cross-entropy over the LM positions).
* **LM-Correctness** = (index of the first wrong argmax among the LM positions) / (number of LM positions);
  1 if none is wrong.
* **TimeDiff**: a decision predicts "speak" when its argmax is not the stay-silent token. If one does, with i the
  first such decision and n_v the number of decisions, ``frame_diff = n_v - i - 1`` (frames too early; 0 = on
  time). If none does: the last turn counts 0; otherwise the look-ahead keeps the context the stream would have
  right after the turn's last frame (the GT narration removed; with DCM only what is still alive) and appends
  ``min(frames of the next turn, n_v - 1)`` next frames, each after the stay-silent token, with position ids
  that continue right after the turn's last frame token (as the original: ``arange + turn_start + last_idx + 1``,
  which is also what a stream that stayed silent would see); ``frame_diff = -(k + 1)`` for the first appended
  frame k that speaks, or minus the number appended. TimeDiff (s) = mean |frame_diff| / fps.
* **Fluency**, with c the number of LM tokens right before the first error: on time ``(n_v + c) / (n_v + n_lm)``,
  early by d ``(n_v - d) / (n_v + n_lm)``, late ``(n_v - 1) / (n_v + n_lm)``.
* Each metric is averaged over a sample's turns (TimeDiff and Fluency over turns that have decisions; the first
  turn has none), then over samples (unweighted). Undefined values default to PPL 1, TimeDiff 0, Fluency 1,
  Correctness 1, as the original.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..data.chat import IGNORE_INDEX
from ..data.probes import roc_auc
from ..engine.kv import StaticKVCache
from ..engine.steps import forward_step
from ..models.masks import additive_mask, frame_steps, sample_expiry, visibility
from ..trigger import TriggerRule


@dataclass
class TurnMetrics:
    lm_ppl: float
    lm_correctness: float
    frame_diff: int | None  # None: the turn has no decisions
    fluency: float | None
    n_v: int
    n_lm: int


def turn_metrics(
    lm_logits: torch.Tensor,
    lm_labels: torch.Tensor,
    decision_argmax: torch.Tensor,
    silent_id: int,
    is_last: bool,
    look_ahead=lambda: 0,
) -> TurnMetrics:
    """The four metrics of one turn from its LM logits/labels and the argmax at its decision positions.

    ``look_ahead()`` is called only when the model never speaks in a turn that is not the last; it returns the
    (negative) frame difference found by appending future frames."""
    n_v, n_lm = decision_argmax.numel(), lm_labels.numel()
    if n_lm:
        ppl = float(torch.exp(F.cross_entropy(lm_logits.float(), lm_labels)))
        wrong = (lm_logits.argmax(-1) != lm_labels).nonzero().flatten()
        c = int(wrong[0]) if wrong.numel() else n_lm
        corr = c / n_lm
    else:
        ppl, c, corr = 1.0, 0, 1.0
    if n_v == 0:
        return TurnMetrics(ppl, corr, None, None, n_v, n_lm)
    speak = (decision_argmax != silent_id).nonzero().flatten()
    if speak.numel():
        diff = n_v - int(speak[0]) - 1
        flu = (n_v + c) / (n_v + n_lm) if diff == 0 else (n_v - diff) / (n_v + n_lm)
    else:
        diff = 0 if is_last else int(look_ahead())
        flu = (n_v - 1) / (n_v + n_lm)
    return TurnMetrics(ppl, corr, diff, flu, n_v, n_lm)


def _turns(input_ids: torch.Tensor, eos_id: int) -> list[tuple[int, int]]:
    """[start, stop) token ranges, each ending with (and including) an EOS."""
    ends = (input_ids == eos_id).nonzero().flatten().tolist()
    out, start = [], 0
    for e in ends:
        out.append((start, e + 1))
        start = e + 1
    return out


@dataclass
class LookAhead:
    """What the look-ahead of one late turn feeds: after the cached tokens ``alive`` (full-sequence indices still
    visible right after the turn's last frame token, the GT narration never seen), ``m`` future frames, each as
    the stay-silent token then the frame's ``<v>`` tokens."""

    alive: list[int]
    frame_tokens: torch.Tensor  # (m, N) full-sequence positions of the appended frames' <v> tokens (their features)
    position_ids: torch.Tensor  # (m * (N + 1),) position ids of the appended tokens


def frame_owner(enc, length: int) -> np.ndarray:
    """(L,) the frame each token belongs to (:func:`flownar.models.masks.frame_steps`), -1 for other tokens."""
    owner = np.full(length, -1, np.int64)
    for f, (_, first, stop) in enumerate(frame_steps(enc.spans, enc.frame_positions)):
        owner[first:stop] = f
    return owner


def look_ahead_plan(
    enc, until: torch.Tensor, turns: list[tuple[int, int]], t: int, last_v: int, n_v: int
) -> LookAhead | None:
    """The look-ahead of turn ``t`` whose last decision is at ``last_v`` (None when there is nothing to append)."""
    na, nb = turns[t + 1]
    fp = enc.frame_positions  # (F, N)
    nxt = fp[(fp[:, 0] >= na) & (fp[:, 0] < nb)]
    m = min(nxt.shape[0], n_v - 1)
    if m <= 0:
        return None
    alive = [j for j in range(last_v + 1) if int(until[j]) > last_v]
    n_new = m * (fp.shape[1] + 1)
    return LookAhead(alive, nxt[:m], torch.arange(last_v + 1, last_v + 1 + n_new))


class OracleEvaluator:
    """Teacher-forced metrics for one model. Call :meth:`sample` per encoded sample, then :func:`aggregate`.

    The teacher-forced pass is the model's own forward (with the system's mask). The look-ahead of a late turn runs
    on :mod:`flownar.engine` (our cache and decoder step, the streaming engine's): the keys/values of the whole
    stream are computed once per sample with the same mask, and each look-ahead continues from the tokens still
    alive. No transformers cache object is involved, so nothing here depends on its private behaviour."""

    def __init__(self, model, chat, fps: float = 2.0):
        self.model = model.eval()
        self.cfg = model.config
        self.chat = chat
        self.fps = fps
        self.device = next(model.parameters()).device

    @torch.no_grad()
    def sample(self, enc, frames: torch.Tensor) -> list[TurnMetrics]:
        cfg = self.cfg
        ids = enc.input_ids.to(self.device)
        L = ids.numel()
        expiry = sample_expiry(enc, cfg)
        until = expiry if expiry is not None else torch.full((L,), L, dtype=torch.long)
        frames = frames.to(self.device)
        mem_idx = enc.mem_frame_indices.to(self.device)
        emb = self.model.joint_embed(ids[None], frames, mem_idx)
        # contiguous positions: the look-ahead continues from the pass's own (un-rotated) keys and values
        kv_out = {} if cfg.cache_policy.contiguous_positions and expiry is not None else None
        extra = {"dcm_kv_out": kv_out} if kv_out is not None else {}
        out = self.model(input_ids=ids[None], inputs_embeds=emb, expiry=expiry, use_cache=False, **extra)
        logits = out.logits[0].float()
        labels = enc.labels.to(self.device)
        pred = logits.argmax(-1)
        is_v = ids == cfg.v_placeholder_id
        learned = labels != IGNORE_INDEX
        turns = _turns(ids, self.chat.eos_id)
        stream_kv = []  # computed on the first look-ahead of this sample, then shared by the others

        def look_ahead(t: int, last_v: int, n_v: int) -> int:
            plan = look_ahead_plan(enc, until, turns, t, last_v, n_v)
            if plan is None:
                return 0
            if not stream_kv:
                stream_kv.append(self._stream_kv(enc, emb[0], expiry, kv_out))
            return self._look_ahead(plan, emb[0], *stream_kv[0])

        results = []
        for t, (a, b) in enumerate(turns):
            pos = torch.arange(a, b, device=self.device)
            dec = pos[(learned[a:b] & is_v[a:b])]
            lm = pos[(learned[a:b] & ~is_v[a:b])]
            la = lambda t=t, dec=dec: look_ahead(t, int(dec[-1]), dec.numel())
            results.append(
                turn_metrics(logits[lm], labels[lm], pred[dec], self.chat.silent_id, t == len(turns) - 1, la)
            )
        return results

    def _stream_kv(self, enc, emb: torch.Tensor, until: torch.Tensor | None, kv_out: dict | None = None):
        """Keys/values of the whole stream under the system's mask, and the full-sequence index of every cached
        token per layer (a MoD-routed layer caches only the tokens it computed), and the frame each token belongs
        to (:func:`frame_owner`; contiguous positions only, else None). ``kv_out``: the teacher-forced pass's own
        keys/values (contiguous positions: un-rotated), used as they are."""
        L = emb.shape[0]
        kv = StaticKVCache.for_model(self.cfg, capacity=L, device=self.device, dtype=emb.dtype)
        if kv_out is not None:
            for li in range(len(self.model.model.layers)):
                kv.append(li, *kv_out[li])
            return kv, [torch.arange(L, device=self.device)] * len(self.model.model.layers), frame_owner(enc, L)
        mask = None if until is None else additive_mask(visibility(until.cpu()), emb.dtype)[0, 0].to(self.device)
        fp = enc.frame_positions.to(self.device) if self.cfg.mod else None
        routed: dict[int, torch.Tensor] = {}  # layer -> the tokens it computed (and cached)
        forward_step(
            self.model, emb[None], torch.arange(L, device=self.device)[None], kv, fp, mask=mask, routing_log=routed
        )
        cached = [routed.get(i, torch.arange(L, device=self.device)) for i in range(len(self.model.model.layers))]
        return kv, cached, None

    def _look_ahead(
        self, plan: LookAhead, emb: torch.Tensor, kv: StaticKVCache, cached: list[torch.Tensor], owner
    ) -> int:
        """Frames (negative) until the model would speak if the GT narration of the turn were not there."""
        decisions = self._look_ahead_logits(plan, emb, kv, cached, owner).argmax(-1)
        speak = (decisions != self.chat.silent_id).nonzero().flatten()
        m = plan.frame_tokens.shape[0]
        return -(int(speak[0]) + 1) if speak.numel() else -m

    def _look_ahead_logits(
        self, plan: LookAhead, emb: torch.Tensor, kv: StaticKVCache, cached: list[torch.Tensor], owner=None
    ) -> torch.Tensor:
        """(m, V) logits at the last ``<v>`` of each appended frame (``owner``: see :meth:`_stream_kv`)."""
        n = self.cfg.frame_num_tokens
        m = plan.frame_tokens.shape[0]
        alive = torch.tensor(plan.alive, device=self.device)
        sub = StaticKVCache.for_model(
            self.cfg, capacity=len(plan.alive) + m * (n + 1), device=self.device, dtype=emb.dtype
        )
        for li, idx in enumerate(cached):
            sel = torch.isin(idx, alive).nonzero().flatten()  # this layer's cached tokens that are still alive
            length = kv.lengths[li]
            sub.append(
                li, kv.keys[li][:, :, :length].index_select(2, sel), kv.values[li][:, :, :length].index_select(2, sel)
            )
        silent = self.model.model.embed_tokens(torch.tensor([self.chat.silent_id], device=self.device))
        new_emb = torch.cat([piece for j in range(m) for piece in (silent, emb[plan.frame_tokens[j].to(self.device)])])
        if self.cfg.cache_policy.contiguous_positions:
            return self._look_ahead_window(plan, new_emb, sub, owner)
        fpos = None
        if self.cfg.mod:  # where each appended frame's <v> tokens are among the new tokens
            fpos = torch.stack([torch.arange(j * (n + 1) + 1, (j + 1) * (n + 1)) for j in range(m)]).to(self.device)
        hidden = forward_step(self.model, new_emb[None], plan.position_ids.to(self.device)[None], sub, fpos)
        last = torch.tensor([(j + 1) * (n + 1) - 1 for j in range(m)], device=self.device)
        return self.model.lm_head(hidden[0, last]).float()

    def _look_ahead_window(
        self, plan: LookAhead, new_emb: torch.Tensor, sub: StaticKVCache, frame_of: np.ndarray
    ) -> torch.Tensor:
        """The look-ahead of a system with contiguous positions (streaming-vlm): one frame at a time, as the
        stream that stayed silent would feed them, each after its vision window has let the oldest frame go (the
        positions are re-indexed, so the frames cannot be fed as one block)."""
        n = self.cfg.frame_num_tokens
        policy = self.cfg.cache_policy
        owner = frame_of[np.asarray(plan.alive)]  # frame of each cached token (-1: not a frame's)
        first = int(frame_of[plan.alive[-1]]) + 1  # the appended frames continue the turn's last one
        out = []
        for j in range(plan.frame_tokens.shape[0]):
            f = first + j
            upto = policy.frames_leaving(f)
            if upto is not None:
                keep = (owner < 0) | (owner > upto)
                sub.compact(keep)
                owner = owner[keep]
            hidden = forward_step(self.model, new_emb[None, j * (n + 1) : (j + 1) * (n + 1)], None, sub)
            owner = np.concatenate([owner, np.full(n + 1, f)])
            out.append(self.model.lm_head(hidden[0, -1:]).float())
        return torch.cat(out)

    @torch.no_grad()
    def look_ahead_logits(self, enc, frames: torch.Tensor, t: int) -> tuple[LookAhead, torch.Tensor] | None:
        """The look-ahead of turn ``t`` of one sample on its own (for tests and inspection): its plan and logits."""
        cfg = self.cfg
        ids = enc.input_ids.to(self.device)
        expiry = sample_expiry(enc, cfg)
        L = ids.numel()
        until = expiry if expiry is not None else torch.full((L,), L, dtype=torch.long)
        emb = self.model.joint_embed(ids[None], frames.to(self.device), enc.mem_frame_indices.to(self.device))[0]
        turns = _turns(ids, self.chat.eos_id)
        a, b = turns[t]
        dec = [i for i in range(a, b) if int(enc.labels[i]) != IGNORE_INDEX and int(ids[i]) == cfg.v_placeholder_id]
        plan = look_ahead_plan(enc, until, turns, t, dec[-1], len(dec))
        if plan is None:
            return None
        kv_out = None
        if cfg.cache_policy.contiguous_positions and expiry is not None:
            kv_out = {}
            self.model(input_ids=ids[None], inputs_embeds=emb[None], expiry=expiry, use_cache=False, dcm_kv_out=kv_out)
        return plan, self._look_ahead_logits(plan, emb, *self._stream_kv(enc, emb, expiry, kv_out))


@torch.no_grad()
def decision_probe(
    model,
    chat,
    data,
    split: str = "val",
    limit: int | None = None,
    threshold: float = 0.8,
    max_num_frames: int | None = None,
) -> dict:
    """Has the model learned *when* to speak? Teacher-forced P(speak) = 1 - P(stay silent) at every learned
    decision (a frame's last ``<v>``) of ``split``'s streams, against where the ground truth speaks.

    Returns the number of decisions, the base rate, the ROC AUC, the mean P(speak) at narration frames and
    elsewhere, its maximum, and the share of decisions where the trigger would fire
    (:class:`~flownar.trigger.TriggerRule` with ``threshold`` as its high threshold, whatever the time since the
    last narration).
    A diagnostic, not a paper metric.
    """
    from ..batches import StreamDataset, model_inputs
    from ..data.samples import MAX_NUM_FRAMES

    model.eval()
    device = next(model.parameters()).device
    ds = StreamDataset(data, split, chat, model.config, max_num_frames or MAX_NUM_FRAMES)
    ps, ys = [], []
    for i in range(len(ds) if limit is None else min(limit, len(ds))):
        batch = model_inputs(ds[i], device)
        labels, ids = batch.pop("labels")[0], batch["input_ids"][0]
        logits = model(**batch).logits[0]
        dec = (labels != IGNORE_INDEX) & (ids == model.config.v_placeholder_id)
        p_silent = logits[dec].float().softmax(-1)[:, chat.silent_id]
        ps.append((1.0 - p_silent).cpu().numpy())
        ys.append((labels[dec] != chat.silent_id).cpu().numpy())
    p, y = np.concatenate(ps), np.concatenate(ys)
    fires = TriggerRule(threshold_high=threshold, rule="single").speaks(1.0 - p, frames_since_last=0)
    return {
        "streams": len(ps),
        "decisions": int(y.size),
        "base rate": float(y.mean()),
        "AUC": roc_auc(p, y),
        "P(speak) at narration frames": float(p[y].mean()) if y.any() else float("nan"),
        "P(speak) elsewhere": float(p[~y].mean()) if (~y).any() else float("nan"),
        "max P(speak)": float(p.max()),
        "trigger fires (%)": 100.0 * float(fires.mean()),
    }


@torch.no_grad()
def content_probe(
    model,
    chat,
    data,
    split: str = "val",
    limit: int | None = None,
    max_num_frames: int | None = None,
    zero_frames: bool = False,
) -> dict:
    """Does the model name what it sees? Teacher-forced, at the object token of every narration of ``split``'s
    streams (the first token of the first vocabulary noun after the verb), the share where the most likely token is
    the right one: overall, on local segments where the verb's habit (its most frequent training noun) is wrong,
    and on memory segments (held / hidden items). With ``zero_frames`` every frame feature (and Flash Memory's
    read-outs) is zeroed: a model that names objects from the verb's habit alone scores the same both ways.
    Needs the synthetic card (embedded data); a diagnostic, not a paper metric."""
    import math

    from ..batches import StreamDataset, model_inputs
    from ..data.probes import segment_table, verb_habit
    from ..data.samples import MAX_NUM_FRAMES
    from .text import parse_narration

    card = data.synthetic_card
    if not card or "videos" not in card:
        raise ValueError(f"{data.root}: the content probe needs the synthetic world's card (embedded data only)")
    verbs, nouns = card["vocabulary"]["verbs"], card["vocabulary"]["nouns"]
    habit = verb_habit(segment_table(data, "train")[0]) if "train" in data.available_splits() else {}
    first_id = {n: chat.tok(" " + n, add_special_tokens=False)["input_ids"][0] for n in nouns}
    model.eval()
    device = next(model.parameters()).device
    ds = StreamDataset(data, split, chat, model.config, max_num_frames or MAX_NUM_FRAMES)
    hits = {"all": [], "local, habit wrong": [], "memory": []}
    for i in range(len(ds) if limit is None else min(limit, len(ds))):
        item, sample = ds[i], ds.samples[i]
        enc = chat.encode(sample)
        if zero_frames:
            item = dict(item, frames=torch.zeros_like(item["frames"]))
            if "memory_features" in item:
                item["memory_features"] = torch.zeros_like(item["memory_features"])
        batch = model_inputs(item, device)
        batch.pop("labels")
        logits = model(**batch).logits[0]
        ids = enc.input_ids
        segments = card["videos"][sample.video_uid]["segments"]
        kind_at = {math.ceil(s["end"] * data.fps - 1e-6): s["kind"] for s in segments}
        turns = [m for m in sample.messages if m.role == "assistant"]
        for span, msg, f in zip(enc.spans_of("narration"), turns, sample.narration_frames):
            if not msg.learn:
                continue
            verb, noun = parse_narration(msg.content, verbs, nouns)
            if noun is None:
                continue
            pos = next((p for p in range(span.start, span.stop) if int(ids[p]) == first_id[noun]), None)
            if pos is None or int(enc.labels[pos - 1]) != int(ids[pos]):
                continue
            ok = int(logits[pos - 1].argmax()) == int(ids[pos])
            kind = kind_at.get(sample.frames.start + f, "local")
            hits["all"].append(ok)
            if kind != "local":
                hits["memory"].append(ok)
            elif habit.get(verb) != noun:
                hits["local, habit wrong"].append(ok)
    out = {"narrations": len(hits["all"])}
    for k, v in hits.items():
        out[f"object acc. ({k})" if k != "all" else "object acc."] = float(np.mean(v)) if v else float("nan")
    return out


def _probe_run(job: tuple) -> tuple[str, dict]:
    system, run, data, max_num_frames, threads = job
    from ..checkpoint import load_trained

    if threads:
        torch.set_num_threads(threads)
    model, chat = load_trained(run)
    out = {"decision": decision_probe(model, chat, data, "val", max_num_frames=max_num_frames)}
    if data.synthetic_card:
        out["content"] = content_probe(model, chat, data, "val", max_num_frames=max_num_frames)
        out["content, frames zeroed"] = content_probe(
            model, chat, data, "val", max_num_frames=max_num_frames, zero_frames=True
        )
    return system, out


def probe_runs(runs: dict, data, max_num_frames: int | None = None, workers: int | None = None) -> dict:
    """Notebook 01's probes of every trained run (``runs``: system -> run directory): ``{system: {"decision":
    :func:`decision_probe`, and on embedded data "content" and "content, frames zeroed": :func:`content_probe`}}``.
    On the CPU several runs at once, in up to ``workers`` (default: the CPU count) processes of one thread each;
    with a GPU one after the other in this process."""
    import os

    jobs = [(s, r, data, max_num_frames, 1) for s, r in runs.items()]
    if torch.cuda.is_available() or len(jobs) < 2:
        return dict(_probe_run((s, r, d, m, 0)) for s, r, d, m, _ in jobs)
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    workers = workers or os.cpu_count() or 1
    with ProcessPoolExecutor(max_workers=max(1, min(workers, len(jobs))), mp_context=mp.get_context("spawn")) as pool:
        out = dict(pool.map(_probe_run, jobs))
    return {s: out[s] for s in runs}


def sample_summary(turns: list[TurnMetrics], fps: float = 2.0) -> dict:
    """Mean over a sample's turns (TimeDiff and Fluency over turns with decisions)."""
    with_v = [t for t in turns if t.frame_diff is not None]
    lm = [t for t in turns if t.n_lm > 0]
    return {
        "lm_ppl": float(np.mean([t.lm_ppl for t in lm])) if lm else 1.0,
        "lm_correctness": float(np.mean([t.lm_correctness for t in lm])) if lm else 1.0,
        "time_diff": float(np.mean([abs(t.frame_diff) for t in with_v])) / fps if with_v else 0.0,
        "fluency": float(np.mean([t.fluency for t in with_v])) if with_v else 1.0,
        "turns": len(turns),
    }


def aggregate(per_sample: list[dict]) -> dict:
    """Unweighted means over samples."""
    df = pd.DataFrame(per_sample)
    return {k: float(df[k].mean()) for k in ("lm_ppl", "time_diff", "fluency", "lm_correctness")} | {"samples": len(df)}
