"""The live1+ chat layout: text rendering, labels and span bookkeeping, for any fast tokenizer.

Layout (``V`` = ``frame_num_tokens`` x ``<v>``, ``M`` = ``num_m_tokens`` x ``<m>``)::

    <bos>{system}\\n
    \\n[V]\\nUser: {instruction}
    \\nAssistant: {narration_1}<eos>
    \\n[M]                                 memory block (systems with memory)
    \\n[V,V,...,V]                         the frames of the next segment
    \\nAssistant: {narration_2}<eos> ...
    \\n[V,V]\\nUser: {question}          a question during the stream after a frame
    \\nAssistant: {answer}<eos>            or after a narration (and its memory block); answered at once
    \\n[V,...]

Labels (pre-shifted, ``labels[i-1] = input_ids[i]``, as reference 3.3):

* every learned frame is labelled at its *last* ``<v>`` with the token that follows the frame: the frame
  separator (``,`` = stay silent) or the token that closes the run (``]\\n`` with Llama-3 = speak now); a run
  that a question closes is labelled "stay silent" at its last frame (the question comes after that decision);
* an answer is learned as a narration is (from ``Assistant`` through the EOS); the question is not;
* every assistant turn is labelled from the ``Assistant`` marker through the EOS, so the token before
  ``Assistant`` predicts it; the newline after EOS, memory, brackets, system, user line and the first frame are
  never learned.

Everything is computed at character level and mapped to tokens through the fast tokenizer's offsets, so the
same code serves the word-level tokenizer and Llama-3's BPE; every special id is read off the tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .samples import Message, StreamSample
from .tokenizer import M_TOKEN, V_TOKEN

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Span:
    kind: str  # "system" | "user" | "frames" | "memory" | "narration" | "question" | "answer"
    start: int  # first token
    stop: int  # one past the last token
    index: int  # ordinal among spans of this kind


@dataclass
class EncodedSample:
    input_ids: torch.Tensor  # (L,) long
    labels: torch.Tensor  # (L,) long, IGNORE_INDEX where not learned
    frame_positions: torch.Tensor  # (F, frame_num_tokens) token positions of each clip frame's <v> tokens
    memory_positions: torch.Tensor  # (B, num_m_tokens) token positions of each memory block's <m> tokens
    mem_frame_indices: torch.Tensor  # (B,) clip-relative frame after which memory block b is read
    spans: list[Span]
    sample_id: str = ""
    video_uid: str = ""
    frames: range = field(default_factory=lambda: range(0))

    def spans_of(self, kind: str) -> list[Span]:
        return [s for s in self.spans if s.kind == kind]

    @property
    def decision_positions(self) -> torch.Tensor:
        """Positions of the stay-silent/speak decisions (a learned frame's last <v>)."""
        return torch.nonzero((self.labels != IGNORE_INDEX) & (self.input_ids == self.v_id)).flatten()

    v_id: int = -1  # the <v> id of the tokenizer that encoded it


@dataclass
class _Rendered:
    text: str
    # (kind, index, char_start, char_stop) for spans; char_stop exclusive
    spans: list[tuple[str, int, int, int]]
    frame_chars: list[int]  # char start of each frame's <v> run (clip-relative frame order)
    memory_chars: list[int]  # char start of each memory block's <m> run
    decision_chars: list[int]  # char of the separator after each *learned* frame
    silent_chars: list[int]  # of those, the run-closing "]" that a question forced: labelled "stay silent"
    learn_ranges: list[tuple[int, int]]  # assistant learn ranges (char_start, char_stop)


class ChatTokenizer:
    """A fast tokenizer plus the live1+ layout.

    Args:
        tokenizer: a fast HF tokenizer that has ``<v>`` and ``<m>`` (see :mod:`flownar.data.tokenizer`).
        frame_num_tokens: ``<v>`` tokens per frame (from the data: 10 for 1 CLS + 3x3).
        num_m_tokens: ``<m>`` tokens per memory block (CLAM's query count).
    """

    def __init__(self, tokenizer, frame_num_tokens: int = 10, num_m_tokens: int = 20):
        self.tok = tokenizer
        self.frame_num_tokens = frame_num_tokens
        self.num_m_tokens = num_m_tokens
        vocab = tokenizer.get_vocab()
        for t in (V_TOKEN, M_TOKEN):
            if t not in vocab:
                raise ValueError(f"tokenizer lacks the special token {t}; build it with flownar.data.tokenizer")
        self.v_id = tokenizer.convert_tokens_to_ids(V_TOKEN)
        self.m_id = tokenizer.convert_tokens_to_ids(M_TOKEN)
        self.eos_token = tokenizer.eos_token
        self.eos_id = tokenizer.convert_tokens_to_ids(self.eos_token)
        self.bos_token = tokenizer.bos_token or ""
        # Ids of the layout's structural tokens, read off the tokenizer in context.
        self.silent_id = self._token_after_v(",<v>")  # frame separator: stay silent
        self.speak_id = self._token_after_v("]\nAssistant:")  # closes the frame run: speak now
        self.open_id = self._ids(f"{self.eos_token}\n[{V_TOKEN}")[-2]  # "[" that opens a frame/memory run
        self.newline_id = self._ids(f"{self.eos_token}\n[{V_TOKEN}")[-3]  # "\n" after an EOS
        # token ids fed after a speak decision to start a narration: "]\nAssistant:" minus the first token(s)
        # that belong to the speak token itself
        after = self._ids(f"{V_TOKEN}]\nAssistant:")
        self.assistant_prompt_ids = after[2:] if after[1] == self.speak_id else after[1:]

    def question_ids(self, question: str) -> list[int]:
        """The tokens of a question turn, ``User: {question}\\nAssistant:``, as they follow a frame run's closing
        ``]\\n`` or a turn's EOS and newline (the rendering of :meth:`render`; the same in both places, else an
        error: the tokenizer would merge the turn with what precedes it)."""
        if not question.strip():
            raise ValueError("an empty question")
        turn = f"User: {question}\nAssistant:"
        after_eos = self._ids(f"{self.eos_token}\n{turn}")
        after_run = self._ids(f"{V_TOKEN}]\n{turn}")
        if (
            after_eos[:2] != [self.eos_id, self.newline_id]
            or after_run[:2] != [self.v_id, self.speak_id]
            or after_eos[2:] != after_run[2:]
            or after_eos[-len(self.assistant_prompt_ids) :] != self.assistant_prompt_ids
        ):
            raise ValueError(f"the tokenizer merges the question turn {turn!r} with the tokens around it")
        return after_eos[2:]

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def _token_after_v(self, suffix: str) -> int:
        ids = self._ids(V_TOKEN + suffix)
        if ids[0] != self.v_id:
            raise ValueError(f"tokenizer merges {V_TOKEN!r} with what follows it")
        return ids[1]

    # ------------------------------------------------------------------ text
    def render(self, messages: list[Message], add_generation_prompt: bool = False) -> _Rendered:
        """Render messages to text, recording character positions for labels and spans."""
        parts: list[str] = []
        pos = 0
        spans, frame_chars, memory_chars, decision_chars, silent_chars, learn = [], [], [], [], [], []
        counters: dict[str, int] = {}
        v_run = V_TOKEN * self.frame_num_tokens

        def emit(s: str) -> int:
            nonlocal pos
            start = pos
            parts.append(s)
            pos += len(s)
            return start

        def span(kind: str, a: int, b: int) -> None:
            spans.append((kind, counters.get(kind, 0), a, b))
            counters[kind] = counters.get(kind, 0) + 1

        for m in messages:
            if m.role == "system":
                a = emit(self.bos_token + m.content)
                emit("\n")
                span("system", a, pos)
            elif m.role == "stream":
                if m.num_frames <= 0:
                    continue
                emit("\n")
                a = emit("[")
                for i in range(m.num_frames):
                    if i > 0:
                        emit(",")
                    frame_chars.append(emit(v_run))
                    if m.learn:
                        decision_chars.append(pos)  # the char after the frame: "," or "]"
                if m.learn and m.silent_end:
                    silent_chars.append(pos)
                emit("]")
                span("frames", a, pos)
            elif m.role == "memory":
                emit("\n")
                a = emit("[")
                memory_chars.append(emit(M_TOKEN * self.num_m_tokens))
                emit("]")
                span("memory", a, pos)
            elif m.role == "user":
                emit("\n")
                a = emit("User: " + m.content)
                span("question" if m.qa else "user", a, pos)
            elif m.role == "assistant":
                emit("\n")
                a = emit("Assistant: " + m.content + self.eos_token)
                span("answer" if m.qa else "narration", a, pos)
                if m.learn:
                    learn.append((a, pos))
            else:
                raise ValueError(f"unknown message role {m.role!r}")
        if add_generation_prompt:
            emit("\nAssistant:")
        return _Rendered("".join(parts), spans, frame_chars, memory_chars, decision_chars, silent_chars, learn)

    def render_text(self, messages: list[Message], add_generation_prompt: bool = False) -> str:
        return self.render(messages, add_generation_prompt).text

    def apply_chat_template(self, messages: list[Message], add_generation_prompt: bool = False) -> str:
        """The same text through the tokenizer's Jinja chat template (kept in sync with :meth:`render`)."""
        return self.tok.apply_chat_template(
            [{"role": m.role, "content": m.content, "num_frames": m.num_frames} for m in messages],
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            frame_num_tokens=self.frame_num_tokens,
            num_m_tokens=self.num_m_tokens,
        )

    # ------------------------------------------------------------------ tokens
    def encode(self, sample: StreamSample) -> EncodedSample:
        """Token ids, labels and spans of one sample."""
        r = self.render(sample.messages)
        enc = self.tok(r.text, add_special_tokens=False, return_offsets_mapping=True)
        ids = torch.tensor(enc["input_ids"], dtype=torch.long)
        char2tok = [-1] * (len(r.text) + 1)
        starts = []
        for i, (a, b) in enumerate(enc["offset_mapping"]):
            starts.append(a)
            for c in range(a, b):
                char2tok[c] = i

        def tok_at(c: int) -> int:
            t = char2tok[c]
            if t < 0:
                raise ValueError(f"character {c} ({r.text[c]!r}) is not covered by any token")
            return t

        labels = torch.full_like(ids, IGNORE_INDEX)
        silent = set(r.silent_chars)
        for c in r.decision_chars:
            i = tok_at(c)
            if int(ids[i - 1]) != self.v_id:
                raise ValueError(f"the token before the frame separator at char {c} is not {V_TOKEN}")
            labels[i - 1] = ids[i] if c not in silent else self.silent_id
        for a, b in r.learn_ranges:
            for i in range(tok_at(a), tok_at(b - 1) + 1):
                if a <= starts[i] < b:
                    labels[i - 1] = ids[i]

        step = len(V_TOKEN)
        frame_pos = torch.tensor(
            [[tok_at(c + k * step) for k in range(self.frame_num_tokens)] for c in r.frame_chars], dtype=torch.long
        ).reshape(-1, self.frame_num_tokens)
        mstep = len(M_TOKEN)
        mem_pos = torch.tensor(
            [[tok_at(c + k * mstep) for k in range(self.num_m_tokens)] for c in r.memory_chars], dtype=torch.long
        ).reshape(-1, self.num_m_tokens)
        if frame_pos.numel() and not bool((ids[frame_pos] == self.v_id).all()):
            raise ValueError(f"the tokenizer does not keep {V_TOKEN} as one token")
        if mem_pos.numel() and not bool((ids[mem_pos] == self.m_id).all()):
            raise ValueError(f"the tokenizer does not keep {M_TOKEN} as one token")
        if frame_pos.shape[0] != sample.num_frames:
            raise ValueError(
                f"{sample.sample_id}: {frame_pos.shape[0]} frames rendered, sample covers {sample.num_frames}"
            )
        spans = [Span(kind, tok_at(a), tok_at(b - 1) + 1, idx) for kind, idx, a, b in r.spans]
        out = EncodedSample(
            input_ids=ids,
            labels=labels,
            frame_positions=frame_pos,
            memory_positions=mem_pos,
            mem_frame_indices=torch.tensor(sample.mem_frame_indices, dtype=torch.long),
            spans=spans,
            sample_id=sample.sample_id,
            video_uid=sample.video_uid,
            frames=sample.frames,
        )
        out.v_id = self.v_id
        return out

    def decode(self, ids) -> str:
        return self.tok.decode(ids, skip_special_tokens=True).strip()

    def decode_raw(self, ids) -> str:
        """As the original's generator decodes a narration: special tokens kept, nothing stripped."""
        return self.tok.decode(ids, skip_special_tokens=False)
