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
CLAM runs online: its fixed-size state is updated as each frame arrives.

Engines: ``engine="static"`` (default) runs :func:`flownar.engine.forward_step` on a preallocated
:class:`~flownar.engine.StaticKVCache` that DCM compacts in place; ``engine="hf"`` runs transformers' forward with a
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
from .data.samples import Message, eval_prompt_messages
from .engine import ENGINES, SlotTags, make_kv_store
from .trigger import TriggerRule

PERMANENT = -1


def narration_cap(profile: str | None) -> int:
    """The most tokens one narration may take: the original's 100 at the ``paper`` profile (Llama-3 BPE tokens),
    32 on the embedded profiles (word-level tokens; their narrations have at most about 12)."""
    return 100 if profile == "paper" else 32


@dataclass
class NarrationEvent:
    frame: int  # frame index (0 = the first frame pushed) at which the narration was emitted
    text: str  # decoded without special tokens, stripped
    token_ids: list[int]
    forced: bool = False  # the first and the last frame always narrate
    p_silent: float = float("nan")  # P(stay silent) at the decision
    raw_text: str = ""  # as the original decodes it: special tokens kept, the EOS included when one was emitted


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
    ):
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        self.engine, self.cache_capacity = engine, cache_capacity
        self._ids_cache: dict[tuple, torch.Tensor] = {}
        self.model = model.eval()
        self.cfg = model.config
        self.chat = chat
        self.trigger = TriggerRule(threshold_high, threshold_low, avg_duration, rule)
        c = chat
        self._symbols = {  # the layout's token symbols -> ids of this tokenizer
            "v": [self.cfg.v_placeholder_id],
            "m": [self.cfg.m_placeholder_id],
            "silent": [c.silent_id],
            "open": [c.open_id],
            "close": [c.speak_id],
            "eos": [c.eos_id],
            "newline": [c.newline_id],
            "assistant": list(c.assistant_prompt_ids),
        }
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
        if self.cfg.mod and (self.cfg.dcm or self.cfg.last_k_narration is not None):
            raise NotImplementedError("MoD routing together with cache pruning (DCM, last-k) is not supported")
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget the current video."""
        self.cache = make_kv_store(
            self.engine, self.cfg, capacity=self.cache_capacity, device=self.device, dtype=self.dtype
        )
        self.tags = SlotTags(self.cache_capacity)  # one entry per cached token (of the unrouted layers)
        self.pos = 0  # next position id (counts deleted tokens too)
        self.frame = -1  # index of the last pushed frame
        self.segment = 0  # index of the current frame run
        self.narration_count = 0
        self.pending_eos = False
        self.last_narration_frame = 0
        self.clam_state = None  # CLAM's recurrent state after the last frame (fixed size)
        self.readout_state = None  # the state the next memory block reads (after the frame / its CLS token)
        self.memory = None  # the memory tokens being fed, (Q, D)
        self.counters = StreamCounters()
        self.events: list[NarrationEvent] = []
        self.fed_ids: list[int] = []  # every token id fed, in order (for tests and debugging)
        self.fed_logits: list[torch.Tensor] = []

    @property
    def has_memory(self) -> bool:
        return self.cfg.use_memory

    def kv_bytes(self) -> int:
        """Bytes of the cached keys and values (valid entries only; MoD's routed layers hold fewer)."""
        return self.cache.used_bytes()

    def state_size(self) -> dict:
        """Cached tokens per kind and bytes (KV cache; CLAM state)."""
        clam = 0 if self.clam_state is None else self.clam_state.numel() * self.clam_state.element_size()
        out = {"tokens": self.tags.n, "kv_bytes": self.kv_bytes(), "clam_state_bytes": clam, "position": self.pos}
        allocated = self.cache.allocated_bytes()
        if allocated is not None:
            out["kv_allocated_bytes"] = allocated
        return {**out, **{f"tokens_{k}": v for k, v in sorted(self.tags.counts().items())}}

    # ------------------------------------------------------------------ feeding
    def _ids_tensor(self, ids: list[int]) -> torch.Tensor:
        """Token ids on the device, clamped to the vocabulary (placeholders are overwritten). The few fixed
        patterns of the stream (a silent frame, the step after a narration, the narration prompt) are copied to the
        device once and reused: no host-to-device copy on the per-frame path."""
        key = tuple(ids)
        t = self._ids_cache.get(key)
        if t is None:
            vocab = self.cfg.vocab_size
            t = torch.tensor([min(i, vocab - 1) for i in ids], device=self.device)
            if len(ids) > 1 and len(self._ids_cache) < 64:
                self._ids_cache[key] = t
        return t

    def _tag(self, piece, narration: int) -> tuple[str, int, int]:
        """The engine's tag of a token of ``piece``: (kind, segment it goes with, narration it goes with)."""
        return (
            piece.kind,
            self.segment if piece.owner == layout.SEGMENT else PERMANENT,
            narration if piece.owner == layout.NARRATION else PERMANENT,
        )

    def _tokens(self, pieces, narration: int) -> tuple[list[int], list[tuple[str, int, int]]]:
        """Token ids and tags of a step's pieces (:mod:`flownar.layout`)."""
        ids, tags = [], []
        for piece in pieces:
            for sym in piece.tokens:
                run = self._symbols[sym]
                ids += run
                tags += [self._tag(piece, narration)] * len(run)
        return ids, tags

    @staticmethod
    def _run(ids: list[int], token: int) -> slice | None:
        """The contiguous run of ``token`` in ``ids`` (placeholders always come in one run per fed chunk)."""
        if token not in ids:
            return None
        a = ids.index(token)
        b = a
        while b < len(ids) and ids[b] == token:
            b += 1
        if token in ids[b:]:
            raise ValueError("placeholder tokens must form one contiguous run per forward")
        return slice(a, b)

    def _embed(self, ids: list[int], frame: torch.Tensor | None, v: slice | None) -> torch.Tensor:
        """(1, n, H) embeddings of ``ids`` (:meth:`FlowNarForCausalLM.stream_embed`); the placeholder runs are found
        on the host (no device sync)."""
        return self.model.stream_embed(
            self._ids_tensor(ids), frame, v, self.memory, self._run(ids, self.cfg.m_placeholder_id)
        )[None]

    @torch.no_grad()
    def _feed(
        self, ids: list[int], tags: list[tuple[str, int, int]], frame: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Run the model on new tokens; returns the logits of the last one. ``tags`` has one entry per token."""
        n = len(ids)
        v = self._run(ids, self.cfg.v_placeholder_id)
        emb = self._embed(ids, frame, v)
        pos = torch.arange(self.pos, self.pos + n, device=self.device)[None]
        fp = None
        if self.cfg.mod and v is not None:  # MoD: where the frame's tokens are among the new ones
            key = ("frame_positions", v.start, v.stop)
            if key not in self._ids_cache:
                self._ids_cache[key] = torch.arange(v.start, v.stop, device=self.device).view(
                    -1, self.cfg.frame_num_tokens
                )
            fp = self._ids_cache[key]
        hidden = self.cache.forward(self.model, emb, pos, fp)
        logits = self.model.lm_head(hidden if self.record_logits else hidden[:, -1:]).float()
        if self.record_logits:
            self.fed_logits.append(logits[0])
        kinds, segs, nars = zip(*tags)
        self.tags.add(list(kinds), list(segs), list(nars))
        self.pos += n
        self.fed_ids += ids
        return logits[0, -1]

    def _delete(self, keep: np.ndarray) -> None:
        """Remove the cached tokens where ``keep`` is False, in every layer."""
        if keep.all():
            return
        self.cache.delete(keep)
        self.counters.deleted_tokens += int((~keep).sum())
        self.tags.compact(keep)

    def _update_memory(self, frame: torch.Tensor) -> None:
        """Advance CLAM's fixed-size state with the frame's tokens (no read-out: that happens only when a memory
        block is fed, from the state after the narration frame)."""
        if not self.has_memory:
            return
        x = frame.to(self.device, self.dtype)[None]  # (1, N, D)
        if self.clam_state is None:
            self.clam_state = self.model.clam.init_state(1, device=self.device, dtype=torch.float32)
        if self.cfg.memory_readout == "frame_cls":  # the original: read after the frame's first (CLS) token
            self.readout_state = self.model.clam.update(x[:, :1], self.clam_state)
            self.clam_state = self.model.clam.update(x[:, 1:], self.readout_state)
        else:
            self.clam_state = self.model.clam.update(x, self.clam_state)
            self.readout_state = self.clam_state

    # ------------------------------------------------------------------ decoding
    def _decode(self, first_logits: torch.Tensor) -> tuple[list[int], bool]:
        """Greedy narration: feed argmax tokens until EOS (not fed) or the cap. Returns (ids, capped)."""
        out: list[int] = []
        logits = first_logits
        nid = self.narration_count
        for _ in range(self.max_new_tokens):
            tok = int(logits.argmax())
            if tok == self.chat.eos_id:
                return out, False
            out.append(tok)
            logits = self._feed([tok], [self._tag(layout.narration_token(), nid)])
        return out, True

    def _narrate(
        self,
        frame_idx: int,
        pieces: list,
        forced: bool,
        p_silent: float,
        script_text: str | list[int] | None = None,
    ) -> NarrationEvent:
        """Speak at ``frame_idx``: feed ``pieces`` (:func:`flownar.layout.speak`), decode (or replay) the narration,
        then drop what the cache policy drops (:func:`flownar.layout.dropped_after_narration`)."""
        nid = self.narration_count
        logits = self._feed(*self._tokens(pieces, narration=nid))
        if script_text is not None:  # replay a given narration (teacher-forced schedules, benchmarks)
            ids = (
                self.chat.tok(" " + script_text, add_special_tokens=False)["input_ids"]
                if isinstance(script_text, str)
                else list(script_text)
            )  # text, or token ids (benchmarks)
            for t in ids:
                self._feed([t], [self._tag(layout.narration_token(), nid)])
            capped = False
        else:
            ids, capped = self._decode(logits)
        if capped:
            self.counters.capped += 1
        self.counters.narrations += 1
        self.narration_count += 1
        self.pending_eos = True
        self.last_narration_frame = frame_idx
        segment, narration = layout.dropped_after_narration(
            self.cfg.dcm, self.cfg.last_k_narration, self.segment, self.narration_count
        )
        if segment is not None:  # DCM: the segment's frame run and the memory block before it
            self._delete(self.tags.keep_mask(segment=segment))
        if narration is not None:  # FlowNar-C: the narration that left the window
            self._delete(self.tags.keep_mask(narration=narration))
        self.segment += 1
        raw = self.chat.decode_raw(ids + ([] if capped else [self.chat.eos_id]))
        ev = NarrationEvent(frame_idx, self.chat.decode(ids), ids, forced, p_silent, raw)
        self.events.append(ev)
        return ev

    # ------------------------------------------------------------------ public API
    @torch.no_grad()
    def push(
        self, frame: torch.Tensor, speak: bool | None = None, script_text: str | list[int] | None = None
    ) -> NarrationEvent | None:
        """Feed one frame ``(tokens_per_frame, D)``. Returns a narration or None.

        ``speak`` / ``script_text`` override the model's decision / text (replaying a schedule); ``script_text`` may
        be token ids. A replayed narration is fed one token per forward, like greedy decoding."""
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
        if i == 0:
            return self._prompt(frame, script_text)
        if self.pending_eos:
            pieces = layout.after_narration(
                self.cfg.frame_num_tokens, self.chat.num_m_tokens, self.has_memory, self.cfg.last_k_narration
            )
            if self.has_memory:
                self.memory = self.model.clam.read(self.readout_state)[0]  # (Q, D) after the narration frame
            # the EOS and the newline belong to the narration just decoded
            ids, tags = self._tokens(pieces, narration=self.narration_count - 1)
            self.pending_eos = False
        else:
            ids, tags = self._tokens(self._silent, narration=PERMANENT)
        logits = self._feed(ids, tags, frame)
        self._update_memory(frame)
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
        return self._narrate(i, layout.speak(), False, p_silent, script_text=script_text)

    def _prompt(self, frame: torch.Tensor, script_text: str | list[int] | None) -> NarrationEvent:
        """Frame 0: the prompt with the first frame embedded, then the forced first narration."""
        head, head_tags, tail = prompt_plan(self.chat, self.prompt_messages)
        self._update_memory(frame)
        # feed everything up to (not including) "Assistant:" then the narration prompt, as _narrate does
        self._feed(head, head_tags, frame)
        return self._narrate(0, layout.speak(first=True), True, float("nan"), script_text=script_text)

    @torch.no_grad()
    def finish(self) -> NarrationEvent | None:
        """End of the video: force a narration at the last frame unless it just narrated."""
        if self.frame < 0 or (self.events and self.events[-1].frame == self.frame):
            return None
        ev = self._narrate(self.frame, layout.speak(), True, float("nan"))
        return ev

    def narrate(self, frames: torch.Tensor, progress: bool = False) -> list[NarrationEvent]:
        """Narrate a whole clip ``(T, tokens, D)``; returns every narration event."""
        from tqdm.auto import tqdm

        self.reset()
        for f in tqdm(frames, disable=not progress, desc="narrating", leave=False):
            self.push(f)
        self.finish()
        return self.events


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
