"""A decoder's weights arranged for the per-frame step (fused projections per layer, a RoPE table), and which
step replaces the eager one (compiled, captured)."""

from __future__ import annotations

import torch

from .layer import Projections
from .steps import CapturedStep, CompiledStep


class RopeTable:
    """cos/sin of the decoder's rotary embedding for a block of consecutive positions, computed by the model's own
    ``rotary_emb`` (so bit-identical to a per-step call) and sliced by the steps that fall inside it. Streams only
    move forward, so one block is kept (``block`` positions, then the next): memory stays flat however long the
    stream. Rotary types whose frequencies depend on the sequence length (``dynamic``, ``longrope``) are computed
    per step instead."""

    def __init__(self, rotary_emb, block: int = 4096):
        self.rotary_emb, self.block = rotary_emb, block
        rope_type = str(getattr(rotary_emb, "rope_type", "default"))
        self.static = "dynamic" not in rope_type and "longrope" not in rope_type
        self.start, self.cos, self.sin = -1, None, None

    def __call__(self, x: torch.Tensor, start: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin ``(1, n, head_dim)`` for positions ``start .. start + n - 1``, in ``x``'s dtype and device."""
        if not self.static or n > self.block:
            return self.rotary_emb(x, torch.arange(start, start + n, device=x.device)[None])
        inside = self.cos is not None and self.start <= start and start + n <= self.start + self.block
        if not inside or self.cos.dtype != x.dtype or self.cos.device != x.device:
            self.start = start
            pos = torch.arange(start, start + self.block, device=x.device)[None]
            self.cos, self.sin = self.rotary_emb(x, pos)  # (1, block, hd)
        a = start - self.start
        return self.cos[:, a : a + n], self.sin[:, a : a + n]


class StepWeights:
    """A decoder's weights arranged for the per-frame step: fused projections per layer
    (:class:`~flownar.engine.layer.Projections`) and a RoPE table. Built once per
    :class:`~flownar.stream.Narrator`; :meth:`stale` tells when the model's weights have changed in place since (an
    optimizer step, ``load_state_dict``), and the Narrator rebuilds it at the next video.

    ``fuse``: ``"auto"`` (default) fuses unless the fused copies would take more than ``FUSE_LIMIT_BYTES``
    (real-size LLMs keep their separate projections: a second copy of most of a 1B model's weights costs more
    memory than the few launches it saves on a GPU), ``True`` / ``False`` force it."""

    FUSE_LIMIT_BYTES = 256 * 2**20

    def __init__(self, model, fuse: bool | str = "auto", compile: bool = False, capture: bool = False):
        dec = model.model
        self.sources = [p for layer in dec.layers for p in fusable_params(layer)]
        if compile and capture:
            raise ValueError("choose the compiled step or the captured one, not both")
        if fuse == "auto":
            fuse = (
                compile or capture or sum(p.numel() * p.element_size() for p in self.sources) <= self.FUSE_LIMIT_BYTES
            )
        self.layers = [Projections(layer, bool(fuse)) for layer in dec.layers]
        self.rope = RopeTable(dec.rotary_emb)
        self.version = self._version()
        self.compiled: CompiledStep | CapturedStep | None = None  # the step that replaces the eager one
        if compile:
            why = CompiledStep.unsupported(model, self)
            if why is not None:
                raise ValueError(f"{model.config.system}: the step cannot be compiled: {why}")
            self.compiled = CompiledStep(model, self)
        if capture:
            why = CapturedStep.unsupported(model, self)
            if why is not None:
                raise ValueError(f"{model.config.system}: the step cannot be captured: {why}")
            self.compiled = CapturedStep(model, self)

    def _version(self) -> tuple[int, ...]:
        return tuple(p._version for p in self.sources) + tuple(p.data_ptr() for p in self.sources)

    def stale(self) -> bool:
        return self._version() != self.version

    @property
    def fused(self) -> bool:
        return any(p.fused for p in self.layers)

    def nbytes(self) -> int:
        """Bytes of the fused copies (0 when not fused)."""
        return sum(p.nbytes() for p in self.layers)


def fusable_params(layer) -> list[torch.Tensor]:
    attn, mlp = layer.self_attn, layer.mlp
    mods = (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj)
    return [p for m in mods for p in (m.weight, m.bias) if isinstance(p, torch.Tensor)]
