"""The tokens of one streaming step: a step's pieces (:mod:`flownar.layout`) as token ids and cache tags, built once
per pattern (a silent frame, the frame after a narration, speaking, a decoded token) so that the per-frame path
builds no lists. A question's tokens are filled in per question and not kept."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .. import layout
from .kv import SlotTags


@dataclass(frozen=True)
class Chunk:
    """One step's tokens: ids (host and device), the SlotTags kind codes, which tokens belong to the current
    segment / turn, and where the placeholder runs are."""

    ids: list[int]
    ids_t: torch.Tensor  # (n,) on the device, clamped to the vocabulary (placeholders are overwritten)
    kind: np.ndarray  # (n,) int8 SlotTags kind codes
    seg_owned: np.ndarray  # (n,) bool: tagged with the current segment (else permanent)
    nar_owned: np.ndarray  # (n,) bool: tagged with the turn being fed (else permanent)
    nar_next: np.ndarray  # (n,) bool: of those, a question's tokens: tagged with the turn after it (its answer's)
    v: slice | None  # the <v> run
    m: slice | None  # the <m> run
    frame_positions: torch.Tensor | None  # (1, N) positions of the <v> run (MoD routing), else None


class ChunkBuilder:
    """Builds (and keeps) the :class:`Chunk` of each step pattern for one model config and chat tokenizer."""

    def __init__(self, cfg, chat, device):
        self.cfg, self.device = cfg, device
        self.symbols = {  # the layout's token symbols -> ids of this tokenizer
            "v": [cfg.v_placeholder_id],
            "m": [cfg.m_placeholder_id],
            "silent": [chat.silent_id],
            "open": [chat.open_id],
            "close": [chat.speak_id],
            "eos": [chat.eos_id],
            "newline": [chat.newline_id],
            "assistant": list(chat.assistant_prompt_ids),
        }
        self.kept: dict[tuple, Chunk] = {}

    def tokens(self, ids: list[int], kinds: list[str], seg_owned: list[bool], nar_owned: list[bool]) -> Chunk:
        """A chunk of tokens with their kinds and owners (a question's tokens, kind "question", belong to the turn
        after the one being fed: its answer's)."""
        cfg = self.cfg
        v = _run(ids, cfg.v_placeholder_id)
        fp = None
        if cfg.mod and v is not None:  # MoD: where the frame's tokens are among the new ones
            fp = torch.arange(v.start, v.stop, device=self.device).view(-1, cfg.frame_num_tokens)
        return Chunk(
            ids=list(ids),
            ids_t=torch.tensor([min(i, cfg.vocab_size - 1) for i in ids], device=self.device),
            kind=np.array([SlotTags.KINDS.index(k) for k in kinds], np.int8),
            seg_owned=np.array(seg_owned, bool),
            nar_owned=np.array(nar_owned, bool),
            nar_next=np.array([k == "question" for k in kinds], bool),
            v=v,
            m=_run(ids, cfg.m_placeholder_id),
            frame_positions=fp,
        )

    def pieces(self, pieces, fill: list[int] | None = None) -> Chunk:
        """The chunk of a step's pieces, built once per pattern; ``fill``: the ids of a question's symbols, in
        order (that chunk is not kept)."""
        key = tuple(pieces)
        c = self.kept.get(key) if fill is None else None
        if c is None:
            ids, kinds, seg, nar = [], [], [], []
            fill_ids = iter(fill or ())
            for piece in pieces:
                for sym in piece.tokens:
                    run = [next(fill_ids)] if sym == "question" else self.symbols[sym]
                    ids += run
                    kinds += [piece.kind] * len(run)
                    seg += [piece.owner == layout.SEGMENT] * len(run)
                    nar += [piece.owner == layout.NARRATION] * len(run)
            c = self.tokens(ids, kinds, seg, nar)
            if fill is None:
                self.kept[key] = c
        return c

    def token(self, token: int) -> Chunk:
        """One decoded (or replayed) narration or answer token (kept for the most frequent 4096 tokens of a run)."""
        key = ("token", token)
        c = self.kept.get(key)
        if c is None:
            c = self.tokens([token], ["narration"], [False], [True])
            if len(self.kept) < 4096:
                self.kept[key] = c
        return c


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
