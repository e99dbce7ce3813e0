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

The teacher-forced mask (:func:`flownar.models.masks.expiry_positions`) is the image of this rule over a whole
conversation: a token expires at the EOS of the narration that drops it. The parity tests hold the three to each
other: the engine's logits equal a teacher-forced pass with that mask, and the simulator's cache equals the
engine's after every frame, for every system.
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


def after_narration(frame_tokens: int, memory_tokens: int, use_memory: bool, last_k: int | None) -> list[Piece]:
    """The first frame after a narration: the narration's EOS and newline, the memory block, the new frame run."""
    pieces = [
        Piece("narration", NARRATION, ("eos",)),
        Piece("narration", NARRATION, ("newline",)) if last_k is not None else Piece("other", PERMANENT, ("newline",)),
    ]
    if use_memory:
        pieces.append(Piece("memory", SEGMENT, ("open",) + ("m",) * memory_tokens + ("close",)))
    pieces.append(Piece("frames", SEGMENT, ("open",) + ("v",) * frame_tokens))
    return pieces


def speak(first: bool = False) -> list[Piece]:
    """Speaking: close the frame run (not at frame 0, where the prompt closed it) and open the narration."""
    return ([] if first else [Piece("frames", SEGMENT, ("close",))]) + [Piece("narration", NARRATION, ("assistant",))]


def narration_token() -> Piece:
    """One decoded (or replayed) narration token."""
    return Piece("narration", NARRATION, ("text",))


def dropped_after_narration(
    dcm: bool, last_k: int | None, segment: int, narrations: int
) -> tuple[int | None, int | None]:
    """What leaves the cache once narration ``narrations - 1`` (of segment ``segment``) is decoded: (the segment
    whose pieces go, or None; the narration whose pieces go, or None)."""
    seg = segment if dcm else None
    old = narrations - 1 - last_k if last_k is not None and narrations > last_k else None
    return seg, old
