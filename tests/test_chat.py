from pathlib import Path

import pytest

from flownar.data.chat import IGNORE_INDEX, ChatTokenizer
from flownar.data.readers import Narration, NarrationStream, VideoInfo
from flownar.data.samples import DEFAULT_SYSTEM_PROMPT, NARRATION_INSTRUCTIONS, make_stream_sample
from flownar.data.tokenizer import load_tokenizer, train_word_tokenizer

TEXTS = [
    "You open the fridge.",
    "You take the jar from the cupboard.",
    "You put down the knife.",
    DEFAULT_SYSTEM_PROMPT,
    *NARRATION_INSTRUCTIONS,
]


@pytest.fixture(scope="module")
def word_tok():
    return train_word_tokenizer(TEXTS)


def sample(use_memory=True):
    stream = NarrationStream(
        "v",
        "v",
        [
            Narration(1.2, "You open the fridge."),
            Narration(2.6, "You take the jar from the cupboard."),
            Narration(4.0, "You put down the knife."),
        ],
    )
    return make_stream_sample(stream, VideoInfo("v", 10.0, Path("x")), 2.0, use_memory=use_memory, seed=None)


def test_special_tokens_order_and_layout_pieces(word_tok):
    assert word_tok.convert_tokens_to_ids("<v>") == len(word_tok) - 1
    assert word_tok.convert_tokens_to_ids("<m>") == len(word_tok) - 2
    ct = ChatTokenizer(word_tok, frame_num_tokens=3, num_m_tokens=4)
    names = word_tok.convert_ids_to_tokens(
        [ct.silent_id, ct.speak_id, ct.open_id, ct.newline_id] + ct.assistant_prompt_ids
    )
    assert names == [",", "]\n", "[", "\n", "Assistant", ":"]
    assert (
        word_tok.decode(word_tok(" You open the fridge.", add_special_tokens=False)["input_ids"])
        == " You open the fridge."
    )


def test_labels_match_the_reference_rules(word_tok):
    ct = ChatTokenizer(word_tok, frame_num_tokens=3, num_m_tokens=4)
    s = sample()
    e = ct.encode(s)
    ids, labels = e.input_ids.tolist(), e.labels.tolist()
    tok = word_tok.convert_ids_to_tokens

    # frames: 1 (unlearned) + 3 + 2; decisions on the last <v> of each learned frame only
    assert e.frame_positions.shape == (6, 3)
    dec = e.decision_positions.tolist()
    assert dec == e.frame_positions[1:, -1].tolist()
    assert [tok(labels[p]) for p in dec] == [",", ",", "]\n", ",", "]\n"]
    assert all(labels[p] == IGNORE_INDEX for p in e.frame_positions[:, :-1].flatten().tolist())
    assert labels[e.frame_positions[0, -1]] == IGNORE_INDEX  # the first frame is never learned

    # LM labels: from the token before "Assistant" through the token before EOS, pre-shifted
    narr = e.spans_of("narration")
    assert len(narr) == 3
    for sp in narr:
        assert tok(ids[sp.start]) == "Assistant" and ids[sp.stop - 1] == ct.eos_id
        for i in range(sp.start - 1, sp.stop - 1):
            assert labels[i] == ids[i + 1]
        assert labels[sp.stop - 1] == IGNORE_INDEX  # EOS -> "\n" is not learned
    assert tok(ids[narr[0].start - 1]) == ".\n"  # the first turn follows the user line
    assert tok(ids[narr[1].start - 1]) == "]\n"

    # nothing else is learned
    learned = set(dec) | {i for sp in narr for i in range(sp.start - 1, sp.stop - 1)}
    assert {i for i, l in enumerate(labels) if l != IGNORE_INDEX} == learned

    # memory blocks and their bookkeeping
    assert e.memory_positions.shape == (2, 4)
    assert all(ids[p] == ct.m_id for p in e.memory_positions.flatten().tolist())
    assert e.mem_frame_indices.tolist() == [0, 3]
    mem = e.spans_of("memory")
    assert [tok(ids[m.start]) for m in mem] == ["[", "["] and [tok(ids[m.stop - 1]) for m in mem] == ["]\n", "]\n"]
    frames = e.spans_of("frames")
    assert [tok(ids[f.start]) for f in frames] == ["["] * 3 and [tok(ids[f.stop - 1]) for f in frames] == ["]\n"] * 3


def test_without_memory_no_m_tokens(word_tok):
    e = ChatTokenizer(word_tok, 3, 4).encode(sample(use_memory=False))
    assert e.memory_positions.shape == (0, 4) and not e.spans_of("memory")


def test_chat_template_renders_the_same_text(word_tok):
    ct = ChatTokenizer(word_tok, frame_num_tokens=10, num_m_tokens=20)
    s = sample()
    assert ct.apply_chat_template(s.messages) == ct.render_text(s.messages)
    assert ct.apply_chat_template(s.messages[:3], add_generation_prompt=True).endswith("time.\nAssistant:")


def _bpe_dir(tmp_path):
    """A byte-level BPE tokenizer saved as a local Hugging Face directory (stands in for Llama-3's)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(
        TEXTS * 5 + ["]\n[", ".\n\n", ",", "]\nUser:", ".\nAssistant:"],
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<|begin_of_text|>", "<|eot_id|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    d = tmp_path / "bpe"
    fast.save_pretrained(d)
    return d


def test_local_hf_tokenizer_same_structure(tmp_path, word_tok):
    tok = load_tokenizer(_bpe_dir(tmp_path))
    assert tok.pad_token == tok.eos_token
    ct = ChatTokenizer(tok, frame_num_tokens=3, num_m_tokens=4)
    e = ct.encode(sample())
    assert e.frame_positions.shape == (6, 3) and e.memory_positions.shape == (2, 4)
    dec = e.decision_positions.tolist()
    assert dec == e.frame_positions[1:, -1].tolist()
    assert [int(e.labels[p]) for p in dec] == [ct.silent_id, ct.silent_id, ct.speak_id, ct.silent_id, ct.speak_id]
    assert ct.silent_id != ct.speak_id
    for sp in e.spans_of("narration"):
        assert int(e.input_ids[sp.stop - 1]) == ct.eos_id
    assert ct.apply_chat_template(sample().messages) == ct.render_text(sample().messages)
    assert (
        ct.decode(e.input_ids[e.spans_of("narration")[1].start : e.spans_of("narration")[1].stop])
        == "Assistant: You take the jar from the cupboard."
    )


def test_load_tokenizer_missing_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer directory does not exist"):
        load_tokenizer(tmp_path / "none")
