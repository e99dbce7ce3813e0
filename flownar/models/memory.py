"""The memory a system's ``<m>`` block reads: one interface, CLAM and Flash Memory behind it.

A memory *kind* (:class:`MemoryKind`, registered in :data:`MEMORIES` under the name a config's ``memory`` field
gives) says everything the rest of the package needs:

* **parameters**: :meth:`~MemoryKind.build` returns the module it adds to the model (CLAM's) or None (Flash Memory
  is non-parametric); the model holds it under :attr:`~MemoryKind.module_name` (its state-dict prefix) and lets the
  kind initialise it (:meth:`~MemoryKind.init_module`);
* **teacher forcing**: :meth:`~MemoryKind.readouts`, the memory tokens ``(B, Q, D)`` every memory block of a
  sample reads (before the connector), and :meth:`~MemoryKind.precompute`, what training may compute once per
  sample (Flash Memory's read-outs) instead of at every step;
* **streaming**: :meth:`~MemoryKind.stream` gives one stream's state (:class:`StreamMemory`: :meth:`read`, its
  bounded state's bytes and its bank's), and :meth:`~MemoryKind.write` advances the states of several streams of
  one model with their frames, as one batch where the kind can;
* **accounting**: :meth:`~MemoryKind.macs`, the multiply-accumulates of a frame update, a read and the read's
  query side (None: not counted).

The narrator, the batched advance (:func:`flownar.stream.advance_memories`), the teacher-forced pass, training's
batches and the MAC accounting call the interface, never a kind by name. A new memory is one subclass and one
:func:`register_memory` call; the parity tests (engine == teacher forcing, batched == alone) hold it like the two
here.
"""

from __future__ import annotations

import torch
from torch import nn

from .clam import CLAM, CLAMConfig
from .flash_memory import FlashMemory, flash_readouts


class StreamMemory:
    """One stream's memory state: written with every frame (by its kind's :meth:`MemoryKind.write`), read after a
    narration frame."""

    def read(self, dtype: torch.dtype) -> torch.Tensor:
        """The memory tokens ``(Q, D)`` a memory block feeds now."""
        raise NotImplementedError

    @property
    def state_bytes(self) -> int:
        """Bytes of the bounded state (what stays the same size however long the stream)."""
        raise NotImplementedError

    @property
    def bank_bytes(self) -> int | None:
        """Bytes of a store that grows with the stream (Flash Memory's bank, on the host), or None."""
        return None


class MemoryKind:
    """A kind of memory (see the module docstring). Subclasses set ``name`` and ``module_name``."""

    name: str = ""
    module_name: str | None = None  # the model attribute (and state-dict prefix) of its parameters

    def check(self, config) -> None:
        """Refuse config fields this memory cannot work with (a ValueError saying why)."""

    def build(self, config) -> nn.Module | None:
        return None

    def init_module(self, module: nn.Module, config) -> None:
        """Initialise one of its own submodules (a fresh model, or one missing from a checkpoint)."""

    def readouts(self, model, frames: torch.Tensor, mem_frame_indices: torch.Tensor, features=None) -> torch.Tensor:
        """Teacher forcing: the memory tokens ``(B, Q, D)`` of each memory block of one sample (``frames``
        ``(F, N, D)``; block b reads after frame ``mem_frame_indices[b]``). ``features``: :meth:`precompute`'s."""
        raise NotImplementedError

    def precompute(self, config, frames: torch.Tensor, mem_frame_indices: torch.Tensor) -> torch.Tensor | None:
        """What a training batch may compute once per sample and pass to :meth:`readouts` (None: nothing)."""
        return None

    def stream(self, model, device, dtype) -> StreamMemory:
        raise NotImplementedError

    def write(self, model, streams: list[StreamMemory], frames: list[torch.Tensor]) -> None:
        """Advance each stream with its frame's tokens ``(N, D)``."""
        raise NotImplementedError

    def macs(self, config) -> dict[str, int] | None:
        """``{"update", "read", "queries"}`` MACs (a frame, a read, a read's query side), or None if not counted."""
        return None


# ---------------------------------------------------------------------------------------------------- CLAM
class ClamStream(StreamMemory):
    def __init__(self, clam: CLAM):
        self.clam = clam
        self.state = None  # the recurrent state after the last frame (B=1, H, dk, dv), fixed size
        self.readout_state = None  # the state the next memory block reads (after the frame / its CLS token)
        self._queries = None  # the read's query side (weights only): computed at the first read

    def read(self, dtype: torch.dtype) -> torch.Tensor:
        if self._queries is None:
            self._queries = self.clam.queries(dtype)
        return self.clam.read(self.readout_state, self._queries)[0]

    @property
    def state_bytes(self) -> int:
        return 0 if self.state is None else self.state.numel() * self.state.element_size()


class ClamMemory(MemoryKind):
    """FlowNar's CLAM (:mod:`flownar.models.clam`): a gated linear recurrence over every frame token, read by
    learned queries."""

    name, module_name = "clam", "clam"

    @staticmethod
    def clam_config(config, dropout: float | None = None) -> CLAMConfig:
        """CLAM's sizes from a FlowNarConfig (``dropout``: the config's unless given)."""
        return CLAMConfig(
            d_model=config.vision_hidden_size,
            n_heads=config.clam_heads,
            n_queries=config.num_m_tokens,
            expand_k=config.clam_expand_k,
            dropout=config.clam_dropout if dropout is None else dropout,
            gate_bias_init=config.clam_gate_bias_init,
        )

    def build(self, config) -> CLAM:
        clam = CLAM(self.clam_config(config))
        clam.gk_proj[1]._clam_gate = True  # the forget gate: its bias starts at clam_gate_bias_init
        return clam

    @torch.no_grad()
    def init_module(self, module: nn.Module, config) -> None:
        """CLAM's own scheme for the parts HF initialises: xavier on matrices, norms at 1, MHA biases at 0, the
        forget gate's bias at ``clam_gate_bias_init``."""
        if isinstance(module, nn.MultiheadAttention):
            module._reset_parameters()
        is_norm = "norm" in type(module).__name__.lower()
        for name, p in module.named_parameters(recurse=False):
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
            elif is_norm:
                nn.init.ones_(p) if name == "weight" else nn.init.zeros_(p)
            elif name == "bias" and getattr(module, "_clam_gate", False) and config.clam_gate_bias_init is not None:
                nn.init.constant_(p, config.clam_gate_bias_init)

    @staticmethod
    def readout_index(config, mem_frame_indices: torch.Tensor) -> torch.Tensor:
        """Flattened-token index at which each memory block reads, from the frame it follows."""
        n = config.frame_num_tokens
        if config.memory_readout == "segment_end":
            return (mem_frame_indices + 1) * n - 1  # after the last token of the previous segment's last frame
        return mem_frame_indices * n  # the original: the narration frame's CLS token

    def readouts(self, model, frames, mem_frame_indices, features=None):
        x = frames.to(model.connector.fc1.weight.dtype).reshape(1, -1, frames.shape[-1])  # (1, F*N, D)
        mem, _ = model.clam(x, readout_index=self.readout_index(model.config, mem_frame_indices.to(x.device)))
        return mem[0]  # (B, Q, D)

    def stream(self, model, device, dtype) -> ClamStream:
        return ClamStream(model.clam)

    def write(self, model, streams, frames):
        """All streams' states as one batch: CLAM's update is per-sequence arithmetic, so each stream's state
        equals its state alone up to float rounding."""
        clam, first = model.clam, streams[0]
        x = (frames[0][None] if len(frames) == 1 else torch.stack(frames)).to(
            clam.q_proj.weight.device, clam.q_proj.weight.dtype
        )  # (B, N, D)
        for s in streams:
            if s.state is None:
                s.state = clam.init_state(1, device=x.device, dtype=torch.float32)
        state = first.state if len(streams) == 1 else torch.cat([s.state for s in streams])  # (B, H, dk, dv)
        if model.config.memory_readout == "frame_cls":  # the original: read after the frame's first (CLS) token
            readout = clam.update(x[:, :1], state)
            state = clam.update(x[:, 1:], readout)
        else:
            state = readout = clam.update(x, state)
        for s, st, r in zip(streams, state.split(1), readout.split(1)):
            s.state, s.readout_state = st, r

    def macs(self, config) -> dict[str, int]:
        """Counted by ``torch.utils.flop_counter`` on a meta-device CLAM of this config (FLOP / 2)."""
        from torch.utils.flop_counter import FlopCounterMode

        with torch.device("meta"):
            clam = CLAM(self.clam_config(config, dropout=0.0)).eval()
            x = torch.zeros(1, config.frame_num_tokens, config.vision_hidden_size)
            state = clam.init_state(1, dtype=torch.float32)
            queries = clam.queries()
            out = {}
            for name, fn in (
                ("update", lambda: clam.update(x, state)),
                ("read", lambda: clam.read(state, queries)),
                ("queries", lambda: clam.queries()),
            ):
                with FlopCounterMode(display=False) as fc:
                    fn()
                out[name] = fc.get_total_flops() // 2
        return out


# ---------------------------------------------------------------------------------------------------- Flash
class FlashStream(StreamMemory):
    def __init__(self, memory: FlashMemory):
        self.memory = memory

    def read(self, dtype: torch.dtype) -> torch.Tensor:
        return self.memory.read().to(dtype)

    @property
    def state_bytes(self) -> int:
        return self.memory.state_bytes

    @property
    def bank_bytes(self) -> int:
        return self.memory.bank_bytes


class FlashMemoryKind(MemoryKind):
    """Flash-VStream's Flash Memory (:mod:`flownar.models.flash_memory`): non-parametric, a weighted k-means
    synopsis of every frame plus the real frames nearest the heaviest clusters. Its k-means runs on the host and
    is not counted in the MACs."""

    name = "flash"

    def check(self, config) -> None:
        N, Q = config.frame_num_tokens, config.num_m_tokens
        if config.memory_readout != "segment_end":
            raise ValueError("Flash Memory is read after the narration frame (memory_readout='segment_end')")
        fc = config.flash_config
        if fc.tokens(N) != Q:
            raise ValueError(
                f"Flash Memory reads out {fc.tokens(N)} tokens ({fc.clusters} centroids + {fc.detail_frames} frames "
                f"x {N}) but the memory block has num_m_tokens={Q}"
            )

    def readouts(self, model, frames, mem_frame_indices, features=None):
        if features is None:
            features = flash_readouts(model.config.flash_config, frames.float(), mem_frame_indices)
        return features.to(frames.device)

    def precompute(self, config, frames, mem_frame_indices):
        return flash_readouts(config.flash_config, frames, mem_frame_indices)

    def stream(self, model, device, dtype) -> FlashStream:
        cfg = model.config
        return FlashStream(FlashMemory(cfg.flash_config, cfg.frame_num_tokens, cfg.vision_hidden_size, device))

    def write(self, model, streams, frames):
        for s, frame in zip(streams, frames):  # per stream: a weighted k-means on its own synopsis
            s.memory.write(frame)


MEMORIES: dict[str, MemoryKind] = {}


def register_memory(kind: MemoryKind, *, replace: bool = False) -> MemoryKind:
    """Make ``kind`` available to configs as ``memory=kind.name``."""
    if kind.name in MEMORIES and not replace:
        raise ValueError(f"memory {kind.name!r} is already registered (replace=True to redefine it)")
    MEMORIES[kind.name] = kind
    return kind


def memory_kind(name: str) -> MemoryKind:
    try:
        return MEMORIES[name]
    except KeyError:
        raise ValueError(f"unknown memory {name!r}; expected one of {sorted(MEMORIES)}") from None


register_memory(ClamMemory())
register_memory(FlashMemoryKind())
