"""The per-step token layout of a live stream, and what DCM keeps: one description for the streaming engine
(:class:`flownar.stream.Narrator` feeds these tokens) and the token simulator
(:func:`flownar.efficiency.simulate_stream` counts them).

A live stream is fed in steps; each step is a list of pieces, and a piece is a run of tokens with one *owner*,
which decides when the tokens leave the cache:

=============================  ==========================================================================
step                           pieces: tokens -> owner
=============================  ==========================================================================
frame 0                        the prompt up to ``Assistant:`` (:func:`flownar.stream.prompt_plan`: frame 0's
                               run ``[ V.. ]\\n`` -> segment 0, the rest -> permanent)
a silent frame                 ``,`` V x N -> segment
the frame after a narration    EOS -> narration; ``\\n`` -> narration (last-k systems) or permanent;
                               [``[`` M x Q ``]\\n`` -> segment: the memory block, CLAM systems];
                               ``[`` V x N -> segment
speaking                       ``]\\n`` -> segment; ``Assistant:`` and each decoded token -> narration
=============================  ==========================================================================

What is kept (:func:`dropped_after_narration`): once the narration of segment ``s`` is decoded, DCM drops the
pieces owned by segment ``s`` (its frame run and the memory block before it); with ``last_k_narration = k`` the
pieces of the narration ``k`` narrations older go too (its text, EOS and newline). Without DCM a segment's pieces
stay for good, except with a vision window (streaming-vlm, ``vision_window = W``): as frame ``i`` arrives, before
its step, the "frames" tokens fed with frame ``i - W`` leave (its ``,`` or ``[``, its ``<v>`` run, and the ``]\n``
fed when speaking at it). Nothing else is ever dropped. Position ids keep counting, except with contiguous
positions (streaming-vlm), where a token's position is its current index in the cache.

A system's rule is one :class:`CachePolicy` (a config's ``cache_policy``): the engine's evictions, the simulator,
the teacher-forced mask (:func:`flownar.models.masks.expiry_positions`, the image of this rule over a whole
conversation: a token expires at the EOS of the narration that drops it, or where the frame that pushes it out of
a window starts) and the oracle's look-ahead all ask it. The parity tests hold them to each other: the engine's
logits equal a teacher-forced pass with that mask, and the simulator's cache equals the engine's after every
frame, for every system.
"""

from __future__ import annotations

from dataclasses import dataclass

SEGMENT, NARRATION, PERMANENT = "segment", "narration", "permanent"


@dataclass(frozen=True)
class Piece:
    kind: str  # what the tokens are: "frames", "memory", "narration" or "other" (the engine's SlotTags kinds)
    owner: str  # SEGMENT, NARRATION or PERMANENT: when the tokens leave the cache
    tokens: tuple[str, ...]  # symbols: v, m, silent (","), open ("["), close ("]\n"), eos, newline, assistant

    @property
    def vision(self) -> int:
        return self.tokens.count("v")


def silent_frame(frame_tokens: int) -> list[Piece]:
    """A frame the model stayed silent after the previous one: ``,`` then its ``<v>`` tokens."""
    return [Piece("frames", SEGMENT, ("silent",) + ("v",) * frame_tokens)]


def speak(first: bool = False) -> list[Piece]:
    """Speaking: close the frame run (not at frame 0, where the prompt closed it) and open the narration."""
    return ([] if first else [Piece("frames", SEGMENT, ("close",))]) + [Piece("narration", NARRATION, ("assistant",))]


def narration_token() -> Piece:
    """One decoded (or replayed) narration token."""
    return Piece("narration", NARRATION, ("text",))


@dataclass(frozen=True)
class CachePolicy:
    """What leaves a stream's KV cache, and how positions count: declared once per system (its config's
    ``cache_policy``, from the preset's fields); every form of the rule asks this object.

    * ``prune_at_narration`` (DCM): once a segment's narration is decoded, its frame run and the memory block
      before it leave.
    * ``last_k_narrations`` (FlowNar-C, streaming-vlm): after a narration, only the last k narrations (text, EOS
      and newline) stay; None keeps them all.
    * ``vision_window`` (streaming-vlm): as frame i arrives, the tokens fed with frame i - W leave; None: no window.
      A window and pruning at narrations are two answers to one question: a policy has at most one.
    * ``contiguous_positions`` (streaming-vlm): a token's RoPE position is its current index in the cache
      (re-indexed after every eviction); otherwise positions keep counting.
    """

    prune_at_narration: bool = False
    last_k_narrations: int | None = None
    vision_window: int | None = None
    contiguous_positions: bool = False

    def __post_init__(self):
        if self.vision_window is not None and int(self.vision_window) < 1:
            raise ValueError(f"vision_window must be >= 1 frames (or None), got {self.vision_window!r}")
        if self.vision_window is not None and self.prune_at_narration:
            raise ValueError("a vision window and DCM are two cache policies: choose one")
        if self.last_k_narrations is not None and int(self.last_k_narrations) < 0:
            raise ValueError(f"last_k_narrations must be >= 0 (or None), got {self.last_k_narrations!r}")

    @property
    def evicts(self) -> bool:
        """Whether anything ever leaves the cache: then a teacher-forced pass needs expiry positions."""
        return self.prune_at_narration or self.last_k_narrations is not None or self.vision_window is not None

    @property
    def bounded_vision(self) -> bool:
        """Whether the frames in the cache are bounded (pruned at narrations or windowed)."""
        return self.prune_at_narration or self.vision_window is not None

    @property
    def bounded(self) -> bool:
        """Whether the whole cache is bounded: the frames and the narrations."""
        return self.bounded_vision and self.last_k_narrations is not None

    def after_narration(self, frame_tokens: int, memory_tokens: int, memory: bool) -> list[Piece]:
        """The first frame after a narration: the narration's EOS and newline (the newline goes with its
        narration under a last-k window, else it stays for good), the memory block, the new frame run."""
        windowed = self.last_k_narrations is not None
        pieces = [
            Piece("narration", NARRATION, ("eos",)),
            Piece("narration", NARRATION, ("newline",)) if windowed else Piece("other", PERMANENT, ("newline",)),
        ]
        if memory:
            pieces.append(Piece("memory", SEGMENT, ("open",) + ("m",) * memory_tokens + ("close",)))
        pieces.append(Piece("frames", SEGMENT, ("open",) + ("v",) * frame_tokens))
        return pieces

    def dropped_after_narration(self, segment: int, narrations: int) -> tuple[int | None, int | None]:
        """What leaves the cache once narration ``narrations - 1`` (of segment ``segment``) is decoded: (the
        segment whose pieces go, or None; the narration whose pieces go, or None)."""
        k = self.last_k_narrations
        seg = segment if self.prune_at_narration else None
        old = narrations - 1 - k if k is not None and narrations > k else None
        return seg, old

    def frames_leaving(self, frame: int) -> int | None:
        """As ``frame`` arrives, the frames up to this index leave (a vision window), or None."""
        W = self.vision_window
        return frame - W if W is not None and frame >= W else None
