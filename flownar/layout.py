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
a question                     after a frame: ``]\\n`` -> segment; after a turn: its EOS and newline, and
                               after a narration the memory block -> segment (the next one); then
                               ``User: {question}\\nAssistant:`` and each answer token -> the answer's turn
                               (:meth:`CachePolicy.before_question`, :func:`question`)
the frame after an answer      EOS, ``\\n`` -> the answer's turn (or permanent); ``[`` V x N -> segment
speaking after an answer       (the forced narration at the end) EOS, ``\\n`` as above; ``Assistant:`` ...
=============================  ==========================================================================

A narration and an answer are both *turns* (the engine's narration ids count turns). A question does not end a
segment: DCM drops a segment's frames (all its runs, when questions split them) at its narration, as before; a
last-k window keeps the last k turns, narrations and answers alike, a question leaving with its answer; a
vision window treats the run-closing ``]\\n`` before a question as it treats the one before a narration. Without a
window the question and answer stay. There is no memory block after an answer: the block after each narration
(read after the narration frame) and the frames since are what the model sees.

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
    kind: str  # what the tokens are: "frames", "memory", "narration", "question" or "other" (SlotTags kinds)
    owner: str  # SEGMENT, NARRATION or PERMANENT: when the tokens leave the cache
    tokens: tuple[str, ...]  # symbols: v, m, silent (","), open ("["), close ("]\n"), eos, newline, assistant

    @property
    def vision(self) -> int:
        return self.tokens.count("v")


def silent_frame(frame_tokens: int) -> list[Piece]:
    """A frame the model stayed silent after the previous one: ``,`` then its ``<v>`` tokens."""
    return [Piece("frames", SEGMENT, ("silent",) + ("v",) * frame_tokens)]


def open_frame(frame_tokens: int) -> Piece:
    """A frame that opens a new run (after a turn): ``[`` then its ``<v>`` tokens."""
    return Piece("frames", SEGMENT, ("open",) + ("v",) * frame_tokens)


def speak(first: bool = False) -> list[Piece]:
    """Speaking: close the frame run (not at frame 0, where the prompt closed it) and open the narration."""
    return ([] if first else [Piece("frames", SEGMENT, ("close",))]) + [Piece("narration", NARRATION, ("assistant",))]


def narration_token() -> Piece:
    """One decoded (or replayed) narration or answer token."""
    return Piece("narration", NARRATION, ("text",))


def question(tokens: int) -> Piece:
    """A question's ``User: {question}\\nAssistant:`` (``tokens`` long; the engine fills in the ids)."""
    return Piece("question", NARRATION, ("question",) * tokens)


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
        return pieces + [open_frame(frame_tokens)]

    def after_answer(self, frame_tokens: int) -> list[Piece]:
        """The first frame after an answer: its EOS and newline (as after a narration), the new frame run."""
        return self.after_narration(frame_tokens, 0, memory=False)

    def before_question(self, after: str | None, frame_tokens: int, memory_tokens: int, memory: bool) -> list[Piece]:
        """What precedes a question's ``User:`` line: the open frame run's closing token (``after=None``), or the
        EOS and newline of the turn just decoded (``"narration"``: and the memory block; ``"answer"``)."""
        if after is None:
            return [Piece("frames", SEGMENT, ("close",))]
        if after == "narration":
            return self.after_narration(frame_tokens, memory_tokens, memory)[:-1]
        return self.after_answer(frame_tokens)[:-1]

    def dropped_after_narration(self, segment: int, turns: int) -> tuple[int | None, int | None]:
        """What leaves the cache once turn ``turns - 1``, a narration of segment ``segment``, is decoded: (the
        segment whose pieces go, or None; the turn whose pieces go, or None)."""
        seg = segment if self.prune_at_narration else None
        return seg, self.dropped_after_answer(turns)

    def dropped_after_answer(self, turns: int) -> int | None:
        """The turn that leaves the cache once turn ``turns - 1``, an answer, is decoded (a last-k window), or None."""
        k = self.last_k_narrations
        return turns - 1 - k if k is not None and turns > k else None

    def frames_leaving(self, frame: int) -> int | None:
        """As ``frame`` arrives, the frames up to this index leave (a vision window), or None."""
        W = self.vision_window
        return frame - W if W is not None and frame >= W else None
