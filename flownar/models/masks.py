"""Dynamic Context Management (DCM) as an attention mask: who may see whom in a teacher-forced pass.

Every token ``j`` gets an expiry position ``until[j]``: query ``i`` may attend to ``j`` iff ``j <= i < until[j]``.
The streaming engine deletes the KV entries of token ``j`` just before it feeds position ``until[j]``, so the
teacher-forced pass and the stream see exactly the same context. Position ids are never compacted.

Rules (``L`` = sequence length, "narration g" = the ``Assistant ... <eos>`` span that follows frame run g):

* without DCM every token lives forever (``until = L``): plain causal attention (VideoLLM-online, -MoD);
* with DCM, frame run g (``[`` through ``]\\n``) and the memory block just before it expire at the EOS of
  narration g: the narration is decoded while its segment is visible, then the segment is dropped;
* with ``last_k_narration = k``, narration j (and the newline after its EOS) expires at the EOS of narration
  j + k: after a narration is produced, k narrations remain, and the cache stays bounded.

* with ``vision_window = W`` (streaming-vlm), frame f's tokens (its ``,`` or ``[``, its ``<v>`` run and, for the
  last frame of a run, the run-closing token) expire where the step of frame ``f + W`` starts: its ``,``, or the
  EOS of the narration before it when it opens a new run (the engine feeds ``<eos>\n[V`` as one step).

Deviations from the original training mask (reference 4.2 and 11.2), made so training matches streaming:
the original lets the ``<eos> \\n [ <m>... ]\\n`` rows after a narration still see the segment that just ended
(and the previous memory block), and its last-k window lets frame rows see k + 1 narrations. Here both follow
what the streaming generator keeps in its cache.
"""

from __future__ import annotations

import torch

from ..data.chat import Span
from ..layout import CachePolicy

TURNS = ("narration", "answer")  # the assistant turns: each ends with an EOS and counts in a last-k window


def frame_steps(spans: list[Span], frame_positions: torch.Tensor) -> list[tuple[int, int, int]]:
    """Per frame of a sample, ``(step, first, stop)``: where the streaming step that feeds it starts (its ``,``, or
    the EOS of the turn before it for the first frame of a run; 0 for a run no turn precedes: the prompt)
    and the token range the frame owns (its ``,`` / ``[``, its ``<v>`` tokens, and the run-closing token after the
    last frame of a run). ``frame_positions``: (F, N) positions of each frame's ``<v>`` tokens."""
    fp = frame_positions
    eos = [s.stop - 1 for s in spans if s.kind in TURNS]
    out = []
    for run in (s for s in spans if s.kind == "frames"):
        inside = [f for f in range(fp.shape[0]) if run.start <= int(fp[f, 0]) < run.stop]
        for a, f in enumerate(inside):
            first = int(fp[f, 0]) - 1  # "," or "["
            stop = int(fp[inside[a + 1], 0]) - 1 if a + 1 < len(inside) else run.stop
            if a:
                step = first
            else:
                before = [e for e in eos if e < run.start]
                step = before[-1] if before else 0
            out.append((step, first, stop))
    if len(out) != fp.shape[0]:
        raise ValueError(f"{fp.shape[0]} frames but {len(out)} found inside the frame runs")
    return out


def sample_expiry(enc, cfg) -> torch.Tensor | None:
    """The expiry positions of an encoded sample under ``cfg``'s cache policy (None when nothing ever leaves the
    cache: plain causal attention). The one call every teacher-forced pass makes (training, oracle, tests)."""
    policy = cfg.cache_policy
    if not policy.evicts:
        return None
    return expiry_positions(len(enc.input_ids), enc.spans, policy, frame_positions=enc.frame_positions)


def expiry_positions(
    length: int, spans: list[Span], policy: CachePolicy, frame_positions: torch.Tensor | None = None
) -> torch.Tensor:
    """``until`` (L,) long under ``policy``: the first query position that may no longer see each token
    (``frame_positions`` (F, N) is needed with a vision window)."""
    until = torch.full((length,), length, dtype=torch.long)
    vision_window, last_k_narration = policy.vision_window, policy.last_k_narrations
    if vision_window is not None:
        if frame_positions is None:
            raise ValueError("a vision window needs the frames' token positions")
        steps = frame_steps(spans, frame_positions)
        W = int(vision_window)
        for f, (_, first, stop) in enumerate(steps):
            if f + W < len(steps):
                until[first:stop] = steps[f + W][0]
    narrations = [s for s in spans if s.kind == "narration"]
    if policy.prune_at_narration:
        _prune_segments(until, spans, [s.stop - 1 for s in narrations], length)
    if last_k_narration is not None:
        _window_turns(until, spans, int(last_k_narration), length)
    return until


def _prune_segments(until: torch.Tensor, spans: list[Span], eos: list[int], length: int) -> None:
    """DCM: the frame runs of segment g (those before narration g: a question may split a segment's frames into
    several runs) and the memory block before its first run expire at the EOS of narration g."""
    frames = [s for s in spans if s.kind == "frames"]
    memory = [s for s in spans if s.kind == "memory"]
    for g, run in enumerate(frames):
        segment = sum(e < run.start for e in eos)
        end = eos[segment] if segment < len(eos) else length
        until[run.start : run.stop] = end
        # the memory block that precedes this run (if any, and no run between them) lives as long as the run
        before = [m for m in memory if m.stop <= run.start]
        if before and (g == 0 or before[-1].start > frames[g - 1].stop):
            until[before[-1].start : before[-1].stop] = end


def _window_turns(until: torch.Tensor, spans: list[Span], k: int, length: int) -> None:
    """The last-k window over assistant turns (narrations and answers alike): turn j (with the question before an
    answer, and the newline after its EOS) expires at the EOS of turn j + k."""
    turns = [s for s in spans if s.kind in TURNS]
    starts = {s.start for s in spans}
    for j, span in enumerate(turns):
        if j + k >= len(turns):
            continue
        first, stop = span.start, span.stop
        if span.kind == "answer":  # its question goes with it
            first = max(s.start for s in spans if s.kind == "question" and s.stop <= span.start)
        # the newline token after the EOS (when it stands alone) goes with its turn, so that FlowNar-C's cache is
        # truly bounded (deviation: the original keeps every EOS and newline)
        if stop < length and stop not in starts:
            stop += 1
        until[first:stop] = torch.minimum(until[first:stop], torch.tensor(turns[j + k].stop - 1))


def visibility(until: torch.Tensor) -> torch.Tensor:
    """Boolean (L, L): ``[i, j]`` is True iff query i may attend to key j."""
    L = until.shape[0]
    i = torch.arange(L)[:, None]
    j = torch.arange(L)[None, :]
    return (j <= i) & (i < until[None, :])


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(L, L) boolean -> (1, 1, L, L) additive mask (0 where allowed, the dtype's min elsewhere)."""
    m = torch.zeros(allowed.shape, dtype=dtype)
    m.masked_fill_(~allowed, torch.finfo(dtype).min)
    return m[None, None]


def render_visibility(allowed: torch.Tensor, labels: list[str]) -> str:
    """A text picture of the mask: one row per query, '#' = visible, '.' = causal but hidden, ' ' = future."""
    L = allowed.shape[0]
    width = max(len(s) for s in labels)
    rows = []
    for i in range(L):
        cells = "".join("#" if allowed[i, j] else ("." if j <= i else " ") for j in range(L))
        rows.append(f"{labels[i]:>{width}} {cells}")
    return "\n".join(rows)
