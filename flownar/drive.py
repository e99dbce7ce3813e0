"""Several streams at once: narrators of one model driven together, one batched decoder step per round.

:func:`drive_streams` runs the narrators' step generators (:meth:`flownar.stream.Narrator.push_steps`,
``clip_steps``) side by side; each round stacks every running stream's new tokens into one decoder step
(:func:`flownar.engine.steps.forward_batch`: the projections and MLPs as one matmul over all streams, attention per
stream on its own cache) and one memory update. Only the matmuls are shared: every stream's tokens, decisions and
cache are its own (tested equal to each stream alone).
"""

from __future__ import annotations

import torch

from .stream import Narrator, StepRequest, advance_memories


def narrators_for(model, chat, n: int, **kwargs) -> list[Narrator]:
    """``n`` narrators of one model that share its :class:`~flownar.engine.weights.StepWeights` (for
    :func:`drive_streams`)."""
    first = Narrator(model, chat, **kwargs)
    return [first] + [Narrator(model, chat, step_weights=first.step_weights, **kwargs) for _ in range(n - 1)]


def _batchable(narrators: list[Narrator]) -> bool:
    """Whether these narrators' steps can run as one batched step: one model on the static engine, one set of
    StepWeights, no routing (MoD) and no compiled step."""
    first = narrators[0]
    return (
        len(narrators) > 1
        and first.engine == "static"
        and not first.cfg.mod
        and not first.compile
        and not first.capture
        and all(nr.model is first.model and nr.step_weights is first.step_weights for nr in narrators)
    )


def _run_round(requests: list[StepRequest]) -> list[torch.Tensor]:
    """One decoder step for each request: batched when the narrators run one model on the static engine without
    routing (one embedding call, :func:`flownar.engine.steps.forward_batch`, one CLAM update for the frames), one by one
    otherwise."""
    from .engine.steps import forward_batch

    first = requests[0].narrator
    if not _batchable([r.narrator for r in requests]):
        return [r.run() for r in requests]
    embeds = first.model.stream_embed_many([r.embed_args() for r in requests])
    hidden = forward_batch(
        first.model,
        [(e[None], r.start, r.narrator.cache) for e, r in zip(embeds, requests)],
        weights=first.step_weights,
    )
    advancing = [r for r in requests if r.advance]
    if advancing:
        advance_memories([r.narrator for r in advancing], [r.frame for r in advancing])
    return hidden


@torch.no_grad()
def drive_streams(narrators: list[Narrator], jobs):
    """Run step generators on several narrators at once. ``jobs``: an iterable of ``(key, make)``, ``make(narrator)``
    returning a step generator (e.g. ``lambda nr: nr.clip_steps(frames)``). Each free narrator takes the next job;
    each round runs one decoder step of every running job, batched. Yields ``(key, result)`` as jobs end.

    Every stream's tokens, decisions and cache are its own: only the matmuls are shared, so each stream's logits
    equal those of the stream alone up to float rounding (tested)."""
    jobs = iter(jobs)
    running: dict[int, tuple[object, object, StepRequest]] = {}  # narrator index -> (key, generator, request)
    done: list[tuple[object, object]] = []

    def take(i: int) -> None:
        for key, make in jobs:
            gen = make(narrators[i])
            try:
                running[i] = (key, gen, next(gen))
                return
            except StopIteration as stop:  # a job that needed no step
                done.append((key, stop.value))

    for i in range(len(narrators)):
        take(i)
    yield from done
    while running:
        done = []
        order = sorted(running)
        hidden = _run_round([running[i][2] for i in order])
        for i, h in zip(order, hidden):
            key, gen, _ = running[i]
            try:
                running[i] = (key, gen, gen.send(h))
            except StopIteration as stop:
                del running[i]
                done.append((key, stop.value))
                take(i)
        yield from done
