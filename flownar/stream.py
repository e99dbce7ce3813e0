"""The streaming engine: narrate a video one frame at a time, on the model's own outputs, with a KV cache.

``Narrator(model, chat).push(frame)`` feeds one frame (``(tokens_per_frame, D)`` features) and returns a
:class:`NarrationEvent` when the model speaks, else None; ``finish()`` forces a narration at the last frame.

What is fed, token for token, is exactly the training layout (:mod:`flownar.data.chat`), with the same position
ids, so that the logits equal those of one teacher-forced pass with the DCM mask (tested):

* prompt: ``<bos>{system}\\n\\n[V_0]\\nUser: {instruction}\\nAssistant:`` then greedy decoding of narration 0;
* after a narration: ``<eos>\\n`` [``[M]\\n`` memory block, systems with CLAM] ``[V_i``;
* after a silent frame: ``,V_i``;
* the decision is read at the frame's last ``<v>``: the model speaks when P(stay silent) is below the trigger's
  threshold (:class:`flownar.trigger.TriggerRule`, the original's two-threshold rule);
* to speak: feed the run-closing token (``]\\n``) and ``Assistant:``, decode greedily until EOS or
  ``max_new_tokens``; the EOS is fed with the next frame.

The tokens of each step and what leaves the cache are described once, in :mod:`flownar.layout`.
Cache policy (what DCM means at inference): right after a narration is decoded, FlowNar / FlowNar-C / dcm-only
delete the KV entries of the segment's frame run (``[`` ... ``]\\n``) and of the memory block before it; FlowNar-C
also deletes the oldest narration (``Assistant`` ... ``<eos>``) when more than ``last_k_narration`` remain.
VideoLLM-online and -MoD keep everything. Position ids keep counting (RoPE positions are never reused).
streaming-vlm drops nothing at a narration: as frame i arrives, frame i - ``vision_window``'s tokens leave; its
narration window works as FlowNar-C's; its positions are the tokens' indices in the cache (the static engine
re-rotates the cached keys at every step, :mod:`flownar.engine`).
CLAM runs online: its fixed-size state is updated as each frame arrives (flash-vstream: Flash Memory takes in each
frame, and the memory block is its read-out after the narration frame).

Engines: ``engine="static"`` (default) runs :func:`flownar.engine.steps.forward_step` on a preallocated
:class:`~flownar.engine.kv.StaticKVCache` that DCM compacts in place; ``engine="hf"`` runs transformers' forward with a
growing ``DynamicCache`` pruned by ``index_select`` (what the original code does; kept as the reference and as the
baseline of the speed benchmark). Both give the same logits (tested). The only host synchronisations per frame are
the trigger decision (and, when speaking, one per decoded token for the EOS check).

Robustness (reference 11.3): an unexpected argmax after the silent token is zeroed is treated as "speak" and
counted; a narration that hits the token cap is closed with an EOS and counted. Neither crashes the stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import layout
from .data.chat import ChatTokenizer
from .data.samples import Message, Question, eval_prompt_messages
from .engine.chunks import Chunk, ChunkBuilder
from .engine.kv import ENGINES, SlotTags, make_kv_store
from .engine.weights import StepWeights
from .trigger import TriggerRule

PERMANENT = -1


@dataclass
class NarrationEvent:
    frame: int  # frame index (0 = the first frame pushed) at which the narration was emitted
    text: str  # decoded without special tokens, stripped
    token_ids: list[int]
    forced: bool = False  # the first and the last frame always narrate
    p_silent: float = float("nan")  # P(stay silent) at the decision
    raw_text: str = ""  # as the original decodes it: special tokens kept, the EOS included when one was emitted


@dataclass
class AnswerEvent:
    frame: int  # the frame after which the question was asked (0 = the first frame pushed)
    question: str
    text: str  # the answer, decoded without special tokens, stripped
    token_ids: list[int]
    raw_text: str = ""  # special tokens kept, the EOS included when one was emitted


@dataclass
class StepRequest:
    """One decoder step a narrator needs: the tokens of ``chunk`` at positions ``start, ...`` on its cache, with
    ``frame`` (N, D) in the chunk's ``<v>`` run and the CLAM read-out ``memory`` (Q, D) in its ``<m>`` run.
    ``advance``: after the step, advance the narrator's CLAM state with ``frame`` (the frame just fed).

    The request carries the inputs rather than the embeddings so that several streams' steps embed their tokens
    and frames in one call and advance their CLAM states as one batch (:func:`flownar.drive.drive_streams`)."""

    narrator: "Narrator"
    chunk: Chunk
    start: int
    frame: torch.Tensor | None = None
    memory: torch.Tensor | None = None
    advance: bool = False

    def embed_args(self) -> tuple:
        """The arguments of ``stream_embed`` for this step: ``(ids, frame, v, memory, m)``."""
        c = self.chunk
        return c.ids_t, self.frame, c.v, self.memory, c.m

    def run(self) -> torch.Tensor:
        """This step alone, on the narrator's own key/value store."""
        nr = self.narrator
        emb = nr.model.stream_embed(*self.embed_args())[None]  # (1, n, H)
        hidden = nr.cache.forward(nr.model, emb, self.start, self.chunk.frame_positions)
        if self.advance:
            advance_memories([nr], [self.frame])
        return hidden


@dataclass
class StreamCounters:
    frames: int = 0
    narrations: int = 0
    unexpected_argmax: int = 0  # after zeroing the silent token, something other than the speak token won
    capped: int = 0  # narrations closed at max_new_tokens without an EOS
    deleted_tokens: int = 0


class Narrator:
    """Streams narrations of one video at a time. See the module docstring for the protocol.

    Args:
        model: a :class:`~flownar.models.FlowNarForCausalLM` (any system).
        chat: the :class:`~flownar.data.chat.ChatTokenizer` it was trained with.
        threshold_high, threshold_low, avg_duration, rule: the trigger (:class:`~flownar.trigger.TriggerRule`).
        max_new_tokens: cap on one narration's length.
        record_logits: keep the logits of every fed position (for the equality test).
        engine: ``"static"`` (preallocated cache, the fast path) or ``"hf"`` (transformers' DynamicCache).
        cache_capacity: initial tokens per layer of the static cache (it doubles when full).
        fuse: fused q/k/v and gate/up projections on the static engine (:class:`~flownar.engine.weights.StepWeights`:
            ``"auto"`` fuses small models).
        compile: run the static engine's decoder step compiled (:class:`~flownar.engine.steps.CompiledStep`; not for
            VideoLLM-MoD). Pays a compilation at the first frames of the first video.
        capture: run the static engine's decoder step with static shapes, replayed as CUDA graphs on a GPU
            (:class:`~flownar.engine.steps.CapturedStep`; eager on the CPU; not for VideoLLM-MoD).
        step_weights: another narrator's :class:`~flownar.engine.weights.StepWeights` of the same model, to share
            (several streams at once: :func:`flownar.drive.narrators_for`).
    """

    def __init__(
        self,
        model,
        chat: ChatTokenizer,
        *,
        threshold_high: float = 0.8,
        threshold_low: float = 0.5,
        avg_duration: int = 8,
        rule: str = "two_threshold",
        max_new_tokens: int = 32,
        system_prompt: str | None = None,
        instruction: str | None = None,
        record_logits: bool = False,
        engine: str = "static",
        cache_capacity: int = 2048,
        fuse: bool | str = "auto",
        compile: bool = False,
        capture: bool = False,
        step_weights: StepWeights | None = None,
    ):
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        if (compile or capture) and engine != "static":
            raise ValueError("compile=True / capture=True need the static engine")
        self.engine, self.cache_capacity, self.fuse, self.compile = engine, cache_capacity, fuse, compile
        self.capture = capture
        self.step_weights: StepWeights | None = step_weights

        self.model = model.eval()
        self.cfg = model.config
        self.chat = chat
        self.trigger = TriggerRule(threshold_high, threshold_low, avg_duration, rule)
        self._silent = layout.silent_frame(self.cfg.frame_num_tokens)
        self.max_new_tokens = max_new_tokens
        kw = {}
        if system_prompt is not None:
            kw["system_prompt"] = system_prompt
        if instruction is not None:
            kw["instruction"] = instruction
        self.prompt_messages: list[Message] = eval_prompt_messages(**kw)
        self.record_logits = record_logits
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.chunks = ChunkBuilder(self.cfg, chat, self.device)  # a step's pieces -> token ids and tags
        self.policy = self.cfg.cache_policy  # what leaves the cache (flownar.layout.CachePolicy)
        if self.cfg.mod and self.policy.evicts:
            raise NotImplementedError(
                "MoD routing together with cache pruning (DCM, last-k, a window) is not supported"
            )
        if self.policy.contiguous_positions and engine != "static":
            raise ValueError(f"{self.cfg.system}: contiguous positions run on the static engine only (engine='static')")
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget the current video. (The static engine's :class:`~flownar.engine.weights.StepWeights` are rebuilt
        here if the model's weights changed in place since they were built.)"""
        if self.engine == "static" and (self.step_weights is None or self.step_weights.stale()):
            self.step_weights = StepWeights(self.model, self.fuse, compile=self.compile, capture=self.capture)
        self.cache = make_kv_store(
            self.engine,
            self.cfg,
            capacity=self.cache_capacity,
            device=self.device,
            dtype=self.dtype,
            weights=self.step_weights,
        )
        self.tags = SlotTags(self.cache_capacity)  # one entry per cached token (of the unrouted layers)
        self.pos = 0  # next position id (counts deleted tokens too)
        self.frame = -1  # index of the last pushed frame
        self.segment = 0  # index of the current segment (it ends at a narration; questions split its frame run)
        self.turns = 0  # assistant turns decoded: narrations and answers (the tags' narration ids count turns)
        self.pending: str | None = None  # "narration" / "answer": that turn's EOS is fed with the next step
        self.last_narration_frame = 0
        self.memory = None  # the memory tokens being fed, (Q, D)
        kind = self.cfg.memory_kind  # this stream's memory state (flownar.models.memory), None without memory
        self.memory_stream = kind.stream(self.model, self.device, self.dtype) if kind is not None else None
        self.counters = StreamCounters()
        self.events: list[NarrationEvent] = []
        self.answers: list[AnswerEvent] = []
        self.fed_ids: list[int] = []  # every token id fed, in order (for tests and debugging)
        self.fed_logits: list[torch.Tensor] = []

    @property
    def has_memory(self) -> bool:
        return self.cfg.use_memory

    def kv_bytes(self) -> int:
        """Bytes of the cached keys and values (valid entries only; MoD's routed layers hold fewer)."""
        return self.cache.used_bytes()

    def state_size(self) -> dict:
        """Cached tokens per kind and bytes (KV cache; the memory's bounded state, under the key
        ``clam_state_bytes`` whatever the memory, and a growing bank apart)."""
        mem = self.memory_stream
        state = 0 if mem is None else mem.state_bytes
        out = {"tokens": self.tags.n, "kv_bytes": self.kv_bytes(), "clam_state_bytes": state, "position": self.pos}
        if mem is not None and mem.bank_bytes is not None:
            out["memory_bank_bytes"] = mem.bank_bytes
        allocated = self.cache.allocated_bytes()
        if allocated is not None:
            out["kv_allocated_bytes"] = allocated
        return {**out, **{f"tokens_{k}": v for k, v in sorted(self.tags.counts().items())}}

    # ------------------------------------------------------------------ feeding
    def _feed(self, chunk: Chunk, narration: int = PERMANENT, frame: torch.Tensor | None = None, advance=False):
        """Run the model on a chunk of new tokens; returns the logits of the last one. Its tokens are tagged with
        the current segment and with ``narration`` where the chunk says they belong to them. ``advance``: CLAM's
        state takes in ``frame`` along with the step (systems with memory).

        A generator: it yields the decoder step it needs (a :class:`StepRequest`) and is sent the final hidden
        states, so that one stream (:meth:`_drive`) or several at once (:func:`narrate_streams`, one batched step
        for all of them) can run the same narrator code."""
        n = len(chunk.ids)
        memory = self.memory if chunk.m is not None else None
        # contiguous positions (streaming-vlm): the new tokens sit at the cache's end, whatever left it before
        start = self.tags.n if self.policy.contiguous_positions else self.pos
        hidden = yield StepRequest(self, chunk, start, frame, memory, advance)
        logits = self.model.lm_head(hidden if self.record_logits else hidden[:, -1:]).float()
        if self.record_logits:
            self.fed_logits.append(logits[0])
        self.tags.add_codes(
            chunk.kind,
            np.where(chunk.seg_owned, self.segment, PERMANENT),
            np.where(chunk.nar_owned, narration + chunk.nar_next, PERMANENT),
            self.frame,  # kept for "frames" tokens only (the vision window)
        )
        self.pos += n
        self.fed_ids += chunk.ids
        return logits[0, -1]

    def _delete(self, keep: np.ndarray) -> None:
        """Remove the cached tokens where ``keep`` is False, in every layer."""
        if keep.all():
            return
        self.cache.delete(keep)
        self.counters.deleted_tokens += int((~keep).sum())
        self.tags.compact(keep)

    def _read_memory(self) -> torch.Tensor:
        """The memory tokens (Q, D) read out of CLAM's state after the narration frame (its query side, which
        depends on the weights only, computed once per video), or out of Flash Memory."""
        return self.memory_stream.read(self.dtype)

    # ------------------------------------------------------------------ decoding
    def _decode(self, first_logits: torch.Tensor) -> tuple[list[int], bool]:
        """Greedy narration or answer: feed argmax tokens until EOS (not fed) or the cap. Returns (ids, capped)."""
        out: list[int] = []
        logits = first_logits
        nid = self.turns
        for _ in range(self.max_new_tokens):
            tok = int(logits.argmax())
            if tok == self.chat.eos_id:
                return out, False
            out.append(tok)
            logits = yield from self._feed(self.chunks.token(tok), nid)
        return out, True

    def _turn_text(self, logits: torch.Tensor, script_text: str | list[int] | None):
        """Decode a turn greedily from ``logits``, or replay ``script_text`` (text or token ids) one token per
        forward. Returns (ids, capped)."""
        if script_text is None:
            return (yield from self._decode(logits))
        ids = (
            self.chat.tok(" " + script_text, add_special_tokens=False)["input_ids"]
            if isinstance(script_text, str)
            else list(script_text)
        )
        for t in ids:
            yield from self._feed(self.chunks.token(t), self.turns)
        return ids, False

    def _end_turn(self, ids: list[int], capped: bool, kind: str) -> str:
        """Count a decoded turn; its EOS is fed with the next step. Returns its raw text."""
        self.counters.capped += capped
        self.turns += 1
        self.pending = kind
        return self.chat.decode_raw(ids + ([] if capped else [self.chat.eos_id]))

    def _narrate(
        self,
        frame_idx: int,
        pieces: list,
        forced: bool,
        p_silent: float,
        script_text: str | list[int] | None = None,
    ) -> NarrationEvent:
        """Speak at ``frame_idx``: feed ``pieces`` (:func:`flownar.layout.speak`), decode (or replay) the narration,
        then drop what the cache policy drops (:meth:`flownar.layout.CachePolicy.dropped_after_narration`)."""
        logits = yield from self._feed(self.chunks.pieces(pieces), self.turns)
        ids, capped = yield from self._turn_text(logits, script_text)
        self.counters.narrations += 1
        self.last_narration_frame = frame_idx
        raw = self._end_turn(ids, capped, "narration")
        segment, turn = self.policy.dropped_after_narration(self.segment, self.turns)
        if segment is not None:  # DCM: the segment's frame runs and the memory block before them
            self._delete(self.tags.keep_mask(segment=segment))
        if turn is not None:  # a last-k window: the turn that left it
            self._delete(self.tags.keep_mask(narration=turn))
        self.segment += 1
        ev = NarrationEvent(frame_idx, self.chat.decode(ids), ids, forced, p_silent, raw)
        self.events.append(ev)
        return ev

    def _after_turn(self, frame_tokens: int) -> list:
        """The pieces that feed the EOS (and the newline, and after a narration the memory block) of the turn just
        decoded, before anything else; reads the memory for its block."""
        if self.pending == "narration" and self.has_memory:
            self.memory = self._read_memory()  # (Q, D) after the narration frame
        return self.policy.before_question(self.pending, frame_tokens, self.chat.num_m_tokens, self.has_memory)

    def ask_steps(self, question: str, answer: str | list[int] | None = None):
        """:meth:`ask` as a step generator."""
        if self.frame < 0:
            raise ValueError("a question is asked after a frame: push the first frame before asking")
        qids = self.chat.question_ids(question)
        if self.pos + len(qids) + self.max_new_tokens > self.cfg.max_position_embeddings:
            raise ValueError(
                f"the question ({len(qids)} tokens) and its answer do not fit in the model's context "
                f"({self.cfg.max_position_embeddings} positions, {self.pos} used)"
            )
        pieces = self._after_turn(self.cfg.frame_num_tokens) + [layout.question(len(qids))]
        chunk = self.chunks.pieces(pieces, fill=qids)
        # the EOS and newline before it belong to the turn before; the question to its own (the answer's) turn
        logits = yield from self._feed(chunk, self.turns - 1)
        ids, capped = yield from self._turn_text(logits, answer)
        raw = self._end_turn(ids, capped, "answer")
        turn = self.policy.dropped_after_answer(self.turns)
        if turn is not None:
            self._delete(self.tags.keep_mask(narration=turn))
        ev = AnswerEvent(self.frame, question, self.chat.decode(ids), ids, raw)
        self.answers.append(ev)
        return ev

    # ------------------------------------------------------------------ public API
    @torch.no_grad()
    def push(
        self, frame: torch.Tensor, speak: bool | None = None, script_text: str | list[int] | None = None
    ) -> NarrationEvent | None:
        """Feed one frame ``(tokens_per_frame, D)``. Returns a narration or None.

        ``speak`` / ``script_text`` override the model's decision / text (replaying a schedule); ``script_text`` may
        be token ids. A replayed narration is fed one token per forward, like greedy decoding."""
        return self._drive(self.push_steps(frame, speak, script_text))

    @torch.no_grad()
    def ask(self, question: str, answer: str | list[int] | None = None) -> AnswerEvent:
        """Ask ``question`` now, after the last pushed frame (and its narration, if it spoke): the model answers at
        once, greedily (``answer``: replay this text or these token ids instead), then the stream goes on with the
        next :meth:`push`. The layout and what the cache keeps of it: :mod:`flownar.layout`."""
        return self._drive(self.ask_steps(question, answer))

    @torch.no_grad()
    def finish(self, script_text: str | list[int] | None = None) -> NarrationEvent | None:
        """End of the video: force a narration at the last frame unless it just narrated (``script_text``: replay
        this text or these token ids instead of decoding)."""
        return self._drive(self.finish_steps(script_text))

    def _drive(self, gen):
        """Run one of the narrator's step generators to its end on this stream's own cache; returns its value."""
        try:
            request = next(gen)
            while True:
                request = gen.send(request.run())
        except StopIteration as stop:
            return stop.value

    def push_steps(self, frame: torch.Tensor, speak: bool | None, script_text: str | list[int] | None):
        """:meth:`push` as a step generator: it yields each decoder step it needs (a :class:`StepRequest`) and is
        sent the step's hidden states. :meth:`push` runs it on this stream alone;
        :func:`flownar.drive.drive_streams` runs several streams' generators together, one batched step per round."""
        if (
            frame.ndim != 2
            or frame.shape[0] != self.cfg.frame_num_tokens
            or frame.shape[1] != self.cfg.vision_hidden_size
        ):
            raise ValueError(
                f"frame of shape {tuple(frame.shape)}; this model takes "
                f"({self.cfg.frame_num_tokens}, {self.cfg.vision_hidden_size})"
            )
        self.frame += 1
        self.counters.frames += 1
        i = self.frame
        upto = self.policy.frames_leaving(i)
        if upto is not None:  # a vision window (streaming-vlm): frame i - W leaves as frame i arrives
            self._delete(self.tags.keep_mask(frames_upto=upto))
        if i == 0:
            return (yield from self._prompt(frame, script_text))
        if self.pending is not None:
            # the EOS and the newline belong to the turn just decoded (after a narration: then the memory block)
            pieces = self._after_turn(self.cfg.frame_num_tokens) + [layout.open_frame(self.cfg.frame_num_tokens)]
            logits = yield from self._feed(self.chunks.pieces(pieces), self.turns - 1, frame, self.has_memory)
            self.pending = None
        else:
            logits = yield from self._feed(self.chunks.pieces(self._silent), PERMANENT, frame, self.has_memory)
        p = torch.softmax(logits, dim=-1)
        p_silent = float(p[self.chat.silent_id])
        if speak is None:
            speak = self.trigger.speaks(p_silent, i - self.last_narration_frame)
            if speak:
                p2 = p.clone()
                p2[self.chat.silent_id] = 0
                if int(p2.argmax()) != self.chat.speak_id:
                    self.counters.unexpected_argmax += 1
        if not speak:
            return None
        return (yield from self._narrate(i, layout.speak(), False, p_silent, script_text=script_text))

    def _prompt(self, frame: torch.Tensor, script_text: str | list[int] | None) -> NarrationEvent:
        """Frame 0: the prompt with the first frame embedded, then the forced first narration."""
        head, head_tags, tail = prompt_plan(self.chat, self.prompt_messages)
        if self.has_memory:
            advance_memories([self], [frame])
        # feed everything up to (not including) "Assistant:" then the narration prompt, as _narrate does
        kinds, segs, nars = zip(*head_tags)
        if any(n != PERMANENT for n in nars) or any(g not in (PERMANENT, self.segment) for g in segs):
            raise AssertionError(f"prompt tags {head_tags} outside the current segment")
        chunk = self.chunks.tokens(head, list(kinds), [g != PERMANENT for g in segs], [False] * len(head))
        yield from self._feed(chunk, PERMANENT, frame)
        return (yield from self._narrate(0, layout.speak(first=True), True, float("nan"), script_text=script_text))

    def finish_steps(self, script_text: str | list[int] | None = None):
        """:meth:`finish` as a step generator."""
        if self.frame < 0 or (self.events and self.events[-1].frame == self.frame):
            return None
        pieces = layout.speak() if self.pending is None else self._after_turn(0) + layout.speak(first=True)
        return (yield from self._narrate(self.frame, pieces, True, float("nan"), script_text))

    def clip_steps(self, frames: torch.Tensor, questions: list[Question] = ()):
        """A whole clip as one step generator (reset, every frame and the questions asked after it, finish);
        returns the narration events (the answers are in :attr:`answers`)."""
        self.reset()
        at = _by_frame(questions, len(frames))
        for i, f in enumerate(frames):
            yield from self.push_steps(f, None, None)
            for q in at.get(i, ()):
                yield from self.ask_steps(q.text)
        yield from self.finish_steps()
        return self.events

    def narrate(
        self, frames: torch.Tensor, progress: bool = False, questions: list[Question] = ()
    ) -> list[NarrationEvent]:
        """Narrate a whole clip ``(T, tokens, D)``, answering ``questions`` after their frames; returns every
        narration event (the answers are in :attr:`answers`)."""
        from tqdm.auto import tqdm

        self.reset()
        at = _by_frame(questions, len(frames))
        for i, f in enumerate(tqdm(frames, disable=not progress, desc="narrating", leave=False)):
            self.push(f)
            for q in at.get(i, ()):
                self.ask(q.text)
        self.finish()
        return self.events


def _by_frame(questions: list[Question], n_frames: int) -> dict[int, list[Question]]:
    at: dict[int, list[Question]] = {}
    for q in questions:
        if not 0 <= q.frame < n_frames:
            raise ValueError(f"a question at frame {q.frame}, outside the clip's frames 0..{n_frames - 1}: {q.text!r}")
        at.setdefault(q.frame, []).append(q)
    return at


def prompt_plan(
    chat: ChatTokenizer, messages: list[Message]
) -> tuple[list[int], list[tuple[str, int, int]], list[int]]:
    """The prompt fed at frame 0: (ids up to ``Assistant:``, their tags, the ``Assistant:`` ids).

    Tags: the frame run ``[ V ]\n`` of frame 0 is segment 0, the rest is permanent; ``Assistant:`` is narration 0."""
    r = chat.render(messages, add_generation_prompt=True)
    enc = chat.tok(r.text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    span = next(s for s in r.spans if s[0] == "frames")
    n_head = len(ids) - len(chat.assistant_prompt_ids)
    tags = [
        ("frames", 0, PERMANENT) if span[2] <= a < span[3] else ("other", PERMANENT, PERMANENT)
        for a, _ in enc["offset_mapping"][:n_head]
    ]
    return ids[:n_head], tags, ids[n_head:]


def advance_memories(narrators: list[Narrator], frames: list[torch.Tensor]) -> None:
    """Advance each narrator's memory with its frame's tokens (N, D) (no read-out: that happens only when a memory
    block is fed, from the state after the narration frame), all streams at once where the memory can batch them
    (:meth:`flownar.models.memory.MemoryKind.write`; CLAM: one batch, each state equal to its state alone up to
    float rounding)."""
    first = narrators[0]
    first.cfg.memory_kind.write(first.model, [nr.memory_stream for nr in narrators], frames)
