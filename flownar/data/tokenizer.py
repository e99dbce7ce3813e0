"""Tokenizers for the live1+ layout: a word-level one trained here (embedded default) or any local HF tokenizer.

Both get the same two extra special tokens, ``<m>`` (memory placeholder) and ``<v>`` (frame-token placeholder),
added in that order as the original does (so ``<v>`` is the last id), and the same chat template
(:data:`LIVE_CHAT_TEMPLATE`), which renders a message list exactly like :func:`flownar.data.chat.render`.

The word-level tokenizer keeps the layout's punctuation as the Llama-3 BPE does: ``]\\n``, ``.\\n``,
``.\\n\\n`` and ``\\n`` are single tokens, ``[`` and ``,`` stand alone, and spaces are kept (Metaspace) so that
decoding gives the text back.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

V_TOKEN = "<v>"
M_TOKEN = "<m>"

# Rendered with messages [{role, content, num_frames}], as transformers' apply_chat_template does. Every newline
# is an expression: transformers renders with trim_blocks, which would swallow literal ones after a block tag.
LIVE_CHAT_TEMPLATE = (
    "{%- set fnt = frame_num_tokens | default(10) -%}"
    "{%- set nm = num_m_tokens | default(20) -%}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}{{ bos_token if bos_token else '' }}{{ m['content'] }}{{ '\\n' }}"
    "{%- elif m['role'] == 'stream' and m['num_frames'] > 0 -%}{{ '\\n[' }}"
    "{%- for i in range(m['num_frames']) -%}{%- if i > 0 -%}{{ ',' }}{%- endif -%}{{ '<v>' * fnt }}{%- endfor -%}"
    "{{ ']' }}"
    "{%- elif m['role'] == 'memory' -%}{{ '\\n[' }}{{ '<m>' * nm }}{{ ']' }}"
    "{%- elif m['role'] == 'user' -%}{{ '\\nUser: ' }}{{ m['content'] }}"
    "{%- elif m['role'] == 'assistant' -%}{{ '\\nAssistant: ' }}{{ m['content'] }}{{ eos_token }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '\\nAssistant:' }}{%- endif -%}"
)

# Pieces of the layout that must be single tokens of the word-level vocabulary.
LAYOUT_PIECES = ["]\n", ".\n\n", ".\n", "\n", "[", "]", ",", ".", ":", "User", "Assistant", "?", "!"]
_PUNCT = Regex(r"\]\n|\.\n\n|\.\n|\n|[\[\],.:;!?]")


def _add_live_tokens(tok: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Add <m>, <v> (in this order), a pad token and the live chat template."""
    missing = [t for t in (M_TOKEN, V_TOKEN) if t not in tok.get_vocab()]
    if missing:
        tok.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if tok.eos_token is None:
        raise ValueError("the tokenizer has no eos token; the live layout ends every narration with one")
    tok.chat_template = LIVE_CHAT_TEMPLATE
    return tok


def train_word_tokenizer(texts: Iterable[str], min_frequency: int = 1) -> PreTrainedTokenizerFast:
    """Train a word-level tokenizer on narration/prompt texts (no special tokens inside them).

    Every word is learned both sentence-initial (``You``) and after a space (``▁You``).
    """
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True),
            pre_tokenizers.Split(_PUNCT, behavior="isolated"),
        ]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    trainer = trainers.WordLevelTrainer(special_tokens=specials, min_frequency=min_frequency)

    def corpus():
        yield from LAYOUT_PIECES
        for t in texts:
            yield t
            yield " " + t

    tok.train_from_iterator(corpus(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    return _add_live_tokens(fast)


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """A Hugging Face tokenizer from a local directory (e.g. Llama-3.2-1B-Instruct), with the live tokens.

    Never downloads and never runs remote code."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: tokenizer directory does not exist")
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"{path}: a fast tokenizer (tokenizer.json) is needed for character offsets")
    return _add_live_tokens(tok)


def dataset_corpus(data, splits=("train",), questions: bool = False) -> list[str]:
    """Texts a word-level tokenizer is trained on: the prompts plus every narration of ``splits`` (and with
    ``questions``, every question and answer of the world's QA files)."""
    from .samples import DEFAULT_SYSTEM_PROMPT, NARRATION_INSTRUCTIONS

    texts = [DEFAULT_SYSTEM_PROMPT, *NARRATION_INSTRUCTIONS]
    for split in splits:
        if split in data.available_splits():
            texts += [n.text for s in data.streams(split) for n in s.narrations]
            if questions:
                texts += [x for qs in data.questions(split).values() for q in qs for x in (q.text, q.answer)]
    return texts


def build_tokenizer(data=None, tokenizer_path: str | Path | None = None, questions: bool = False):
    """The run's tokenizer: a local HF tokenizer when ``tokenizer_path`` is given (paper scale), else a
    word-level tokenizer trained on the training narrations of ``data`` (embedded default; ``questions``: and the
    world's training questions and answers)."""
    if tokenizer_path:
        return load_tokenizer(tokenizer_path)
    if data is None:
        raise ValueError("build_tokenizer needs a dataset to train a word-level tokenizer on, or a tokenizer_path")
    return train_word_tokenizer(dataset_corpus(data, questions=questions))
