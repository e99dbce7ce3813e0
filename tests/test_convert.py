"""flownar convert-checkpoint: a checkpoint in the original code's exact naming (written here from the facts in
flownar/resources/original_checkpoint_layout.md, not from the converter's tables) becomes a run whose model gives
the source model's logits; unknown or missing tensors are refused by name."""

import json

import pytest
import torch
from conftest import write_tiny_llama
from peft import get_peft_model_state_dict
from safetensors.torch import save_file

from flownar.checkpoint import CheckpointError, load_trained
from flownar.cli import main
from flownar.data.chat import ChatTokenizer
from flownar.data.tokenizer import train_word_tokenizer
from flownar.train.config import TrainConfig
from flownar.train.model import build_model

D, N, M = 16, 10, 4  # vision width, tokens per frame, memory tokens


def original_name(ours: str) -> str:
    """Our PEFT key -> the original's (base_model.model. prefix kept; peft 0.4.0 naming)."""
    name = ours.removeprefix("base_model.model.")
    table = {
        "connector.fc1.": "connector.0.",
        "connector.fc2.": "connector.2.",
        "clam.query_embed.": "clustering.query_embed.",
        "clam.self_attn.": "clustering.layers.0.self_attn.",
        "clam.norm1.": "clustering.layers.0.norm1.",
        "clam.norm2.": "clustering.layers.0.norm2.",
        "clam.mlp_norm.": "clustering.layers.0.mlp_norm.",
        "clam.mlp.": "clustering.layers.0.mlp.",
        "clam.q_proj.": "clustering.layers.0.multihead_attn.q.",
        "clam.k_proj.": "clustering.layers.0.multihead_attn.k.",
        "clam.v_proj.": "clustering.layers.0.multihead_attn.v.",
        "clam.g_proj.": "clustering.layers.0.multihead_attn.g_proj.",
        "clam.gk_proj.": "clustering.layers.0.multihead_attn.gk_proj.",
        "clam.o_proj.": "clustering.layers.0.multihead_attn.o_proj.",
        "clam.g_norm.": "clustering.layers.0.multihead_attn.g_norm.",
    }
    for a, b in table.items():
        if name.startswith(a):
            return "base_model.model." + b + name[len(a) :]
    assert "lora_" in name, name
    return "base_model.model." + name


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    base = tmp_path_factory.mktemp("convert")
    tok = train_word_tokenizer(["you take the cup", "you open the fridge", "you wash the knife"])
    llm = write_tiny_llama(base / "tiny-llama", tok, hidden=32, intermediate=64)
    chat = ChatTokenizer(tok, N, M)
    tcfg = TrainConfig(system="flownar", llm_path=str(llm), lora_r=4, lora_alpha=8, num_m_tokens=M)
    tcfg.memory_readout = "frame_cls"
    model, _ = build_model(tcfg, chat, D)
    with torch.no_grad():  # a trained-looking adapter: every LoRA B, connector and CLAM tensor non-zero
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn_like(p) * 0.2)
    model.eval()
    state = {original_name(k): v for k, v in get_peft_model_state_dict(model).items() if ".base_layer." not in k}
    assert "base_model.model.clustering.layers.0.multihead_attn.gk_proj.1.bias" in state
    src = base / "original"
    src.mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, src / "adapter_model.safetensors")
    (src / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8, "peft_type": "LORA"}))
    return base, llm, chat, model, src, state


def sample_logits(model, chat):
    ids = chat.tok("you take the cup", add_special_tokens=False)["input_ids"]
    input_ids = torch.tensor([[chat.tok.bos_token_id] + [chat.v_id] * 2 * N + [chat.m_id] * M + ids])
    frames = torch.randn(2, N, D, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return model(input_ids=input_ids, frames=frames, mem_frame_indices=torch.tensor([1])).logits


def test_converted_run_gives_the_source_logits(source, tmp_path):
    base, llm, chat, model, src, state = source
    out = tmp_path / "run"
    args = ["convert-checkpoint", str(src), "--system", "flownar", "--llm", str(llm), "--out", str(out)]
    assert main(args + ["--frame-tokens", str(N)]) == 0
    converted, chat2 = load_trained(out, expect_system="flownar")
    assert converted.config.memory_readout == "frame_cls" and converted.config.num_m_tokens == M
    params = dict(converted.named_parameters())

    def ours(name):  # the connector and CLAM sit in PEFT's modules_to_save wrapper
        module, rest = name.split(".", 1)
        return params[f"{module}.modules_to_save.default.{rest}"]

    # every tensor landed where the table says: the connector and CLAM in full
    torch.testing.assert_close(ours("connector.fc1.weight"), state["base_model.model.connector.0.weight"])
    torch.testing.assert_close(
        ours("clam.q_proj.weight"), state["base_model.model.clustering.layers.0.multihead_attn.q.weight"]
    )
    torch.testing.assert_close(
        ours("clam.mlp.down_proj.weight"), state["base_model.model.clustering.layers.0.mlp.down_proj.weight"]
    )
    torch.testing.assert_close(sample_logits(converted, chat2), sample_logits(model, chat), atol=1e-5, rtol=1e-5)
    assert json.loads((out / "train_config.json").read_text())["converted_from"] == str(src)


def test_unknown_and_missing_tensors_are_named(source, tmp_path):
    from flownar.convert import convert_checkpoint

    base, llm, chat, model, src, state = source
    extra = tmp_path / "extra"
    extra.mkdir()
    save_file({**state, "base_model.model.foo.weight": torch.zeros(2)}, extra / "adapter_model.safetensors")
    (extra / "adapter_config.json").write_text((src / "adapter_config.json").read_text())
    with pytest.raises(CheckpointError, match="foo.weight"):
        convert_checkpoint(extra, "flownar", tmp_path / "o1", llm)
    short = tmp_path / "short"
    short.mkdir()
    gone = "base_model.model.model.layers.1.mlp.up_proj.lora_B.weight"
    save_file({k: v for k, v in state.items() if k != gone}, short / "adapter_model.safetensors")
    (short / "adapter_config.json").write_text((src / "adapter_config.json").read_text())
    with pytest.raises(CheckpointError, match="layers.1.mlp.up_proj.lora_B"):
        convert_checkpoint(short, "flownar", tmp_path / "o2", llm)
    with pytest.raises(CheckpointError, match="not a 'videollm-online' checkpoint"):
        convert_checkpoint(src, "videollm-online", tmp_path / "o3", llm)


def test_bad_adapter_files_and_a_used_out_are_refused_by_name(source, tmp_path):
    """issue 28: a truncated, empty or pickled adapter, an invalid adapter_config.json and a non-empty --out each end
    in one error naming the file; a finished run's folder is never written into."""
    import pickle

    from flownar.convert import convert_checkpoint

    base, llm, chat, model, src, state = source
    cfg = (src / "adapter_config.json").read_text()
    blob = (src / "adapter_model.safetensors").read_bytes()

    def adapter(name, files):
        d = tmp_path / name
        d.mkdir()
        for f, content in files.items():
            (d / f).write_bytes(content if isinstance(content, bytes) else content.encode())
        return d

    cases = {
        "truncated": ({"adapter_config.json": cfg, "adapter_model.safetensors": blob[: len(blob) // 2]}, "safetensors"),
        "empty": ({"adapter_config.json": cfg, "adapter_model.safetensors": b""}, "adapter_model.safetensors"),
        "pickle": ({"adapter_config.json": cfg, "adapter_model.bin": pickle.dumps({"x": object()})}, "weights_only"),
        "badjson": ({"adapter_config.json": "{r: 4", "adapter_model.safetensors": blob}, "not valid JSON"),
        "listjson": ({"adapter_config.json": "[4]", "adapter_model.safetensors": blob}, "JSON object"),
    }
    for name, (files, why) in cases.items():
        d = adapter(name, files)
        with pytest.raises(CheckpointError, match=why) as err:
            convert_checkpoint(d, "flownar", tmp_path / f"out-{name}", llm)
        assert str(d) in str(err.value), name
        assert not (tmp_path / f"out-{name}").exists(), name
    used = tmp_path / "finished-run"
    used.mkdir()
    (used / "model.safetensors").write_bytes(b"an older run")
    with pytest.raises(CheckpointError, match="not empty"):
        convert_checkpoint(src, "flownar", used, llm)
    assert (used / "model.safetensors").read_bytes() == b"an older run" and len(list(used.iterdir())) == 1
    rc = main(
        [
            "convert-checkpoint",
            str(tmp_path / "pickle"),
            "--system",
            "flownar",
            "--llm",
            str(llm),
            "--out",
            str(tmp_path / "cli-out"),
        ]
    )
    assert rc == 2
