"""The embedded recipe's content-word loss weight (flownar.batches) and the teacher-forced content probe
(flownar.eval.oracle.content_probe)."""

import pytest
import torch
import torch.nn.functional as F

from flownar.batches import StreamDataset, content_token_ids, content_weights, model_inputs
from flownar.data.chat import IGNORE_INDEX, ChatTokenizer
from flownar.data.readers import FlowNarData
from flownar.data.synth import write_synthetic_dataset
from flownar.data.tokenizer import build_tokenizer
from flownar.eval.oracle import content_probe
from flownar.models import FlowNarForCausalLM, config_for


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = write_synthetic_dataset(tmp_path_factory.mktemp("r") / "d", "ek100", "smoke", 0, progress=False)
    data = FlowNarData(root, "ek100")
    chat = ChatTokenizer(build_tokenizer(data), data.tokens_per_frame, 20)
    torch.manual_seed(0)
    model = FlowNarForCausalLM(config_for("videollm-online", chat, data.feature_dim, size="micro")).eval()
    return data, chat, model


def test_content_words_are_weighted_and_the_loss_is_the_weighted_mean(setup):
    data, chat, model = setup
    ids = content_token_ids(chat, data)
    for word in ("knife", "put", "down", "fridge", "take"):
        assert chat.tok(" " + word, add_special_tokens=False)["input_ids"][0] in ids.tolist()
    for word in ("You", "the"):
        assert chat.tok(" " + word, add_special_tokens=False)["input_ids"][0] not in ids.tolist()
    plain = StreamDataset(data, "train", chat, model.config, 80)
    weighted = StreamDataset(data, "train", chat, model.config, 80, content_weight=3.0)
    item = weighted[0]
    labels, w = item["labels"][0], item["label_weights"][0]
    assert set(w.unique().tolist()) == {1.0, 3.0} and bool((w[torch.isin(labels, ids)] == 3.0).all())
    assert "label_weights" not in plain[0]
    with torch.no_grad():
        out = model(**model_inputs(item, "cpu"))
        base = model(**model_inputs(plain[0], "cpu"))
    learned = labels != IGNORE_INDEX
    ce = F.cross_entropy(out.logits[0].float(), labels, ignore_index=IGNORE_INDEX, reduction="none")
    assert torch.allclose(out.loss, (w * ce)[learned].sum() / learned.sum(), atol=1e-5)
    assert out.loss > base.loss  # the same logits, the content words counted three times
    assert torch.equal(
        content_weights(torch.tensor([5, IGNORE_INDEX, 7]), torch.tensor([7]), 2.0), torch.tensor([1.0, 1.0, 2.0])
    )


class _SeesTheAnswer(torch.nn.Module):
    """A stand-in model whose next token is the right one when the frames are there and "the" when they are zeroed:
    the probe must score it 1 and 0."""

    def __init__(self, config, the_id):
        super().__init__()
        self.config, self.the_id = config, the_id
        self.p = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, frames, **kw):
        L, V = input_ids.shape[1], self.config.vocab_size + 2
        logits = torch.zeros(1, L, V)
        nxt = (
            torch.cat([input_ids[0, 1:], input_ids[0, -1:]])
            if frames.abs().sum() > 0
            else torch.full((L,), self.the_id)
        )
        logits[0, torch.arange(L), nxt] = 1.0
        return type("Out", (), {"logits": logits})()


def test_content_probe_reads_the_object_token_with_and_without_frames(setup):
    data, chat, model = setup
    the = chat.tok(" the", add_special_tokens=False)["input_ids"][0]
    cheat = _SeesTheAnswer(model.config, the)
    seen = content_probe(cheat, chat, data, "val", max_num_frames=80)
    blind = content_probe(cheat, chat, data, "val", max_num_frames=80, zero_frames=True)
    assert seen["narrations"] == blind["narrations"] > 0
    assert seen["object acc."] == 1.0 and blind["object acc."] == 0.0
    real = content_probe(model, chat, data, "val", max_num_frames=80)  # an untrained model: a rate, not a crash
    assert 0.0 <= real["object acc."] <= 1.0


def test_probe_runs_in_parallel_equal_the_probes_here(setup, tmp_path):
    """Notebook 01's probes of several runs at once (processes of one thread) are those of this process."""
    from flownar.eval.oracle import decision_probe, probe_runs

    data, chat, model = setup
    runs = {}
    for name in ("videollm-online", "dcm-only"):
        torch.manual_seed(1)
        m = FlowNarForCausalLM(config_for(name, chat, data.feature_dim, size="micro"))
        runs[name] = tmp_path / name
        m.save_pretrained(runs[name])
        chat.tok.save_pretrained(runs[name])
    got = probe_runs(runs, data, max_num_frames=80, workers=2)
    assert list(got) == list(runs)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        m = FlowNarForCausalLM.from_pretrained(runs["dcm-only"]).eval()
        assert got["dcm-only"]["decision"] == decision_probe(m, chat, data, "val", max_num_frames=80)
        assert got["dcm-only"]["content, frames zeroed"] == content_probe(
            m, chat, data, "val", max_num_frames=80, zero_frames=True
        )
    finally:
        torch.set_num_threads(threads)
