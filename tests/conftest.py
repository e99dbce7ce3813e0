"""Shared fixtures: tiny datasets written by hand in the real FlowNar-Data formats."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from flownar.data.layouts import METADATA_FILE, get_layout

os.environ.setdefault("TQDM_DISABLE", "1")


def write_dataset(
    root: Path,
    layout: str,
    videos: dict[str, int],
    annotations: dict[str, object],
    dim: int = 8,
    tokens: int = 10,
    summaries: dict | None = None,
    seed: int = 0,
) -> Path:
    """Write a dataset root: ``videos`` maps uid -> number of frames; ``annotations`` maps split -> the raw JSON
    object of that split's annotation file (in the layout's own schema)."""
    lay = get_layout(layout)
    fdir = lay.feature_dir(root)
    fdir.mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    meta = {}
    for uid, T in videos.items():
        torch.save(torch.randn(T, tokens, dim, generator=g).to(torch.bfloat16), fdir / f"{uid}.pt")
        meta[uid] = {"duration": (T - 1) / 2, "path": f"{uid}.pt"}
    (root / METADATA_FILE).write_text(json.dumps(meta))
    for split, obj in annotations.items():
        lay.annotation_path(root, split).write_text(json.dumps(obj))
    if summaries is not None:
        (root / "annotations" / lay.summary_file).write_text(json.dumps(summaries))
    return root


def nar(*pairs):
    return [{"time": t, "text": x} for t, x in pairs]


@pytest.fixture
def ek100_root(tmp_path):
    ann = {
        "train": {
            "P01_01": nar((1.2, "You open the fridge."), (2.6, "You take the jar."), (4.0, "You close the fridge.")),
            "P01_02": nar((0.5, "You wash the knife."), (3.0, "You dry the knife.")),
        },
        "val": {"P02_01": nar((2.0, "You cut the onion."), (5.5, "You put down the knife."))},
    }
    return write_dataset(tmp_path / "ek100", "ek100", {"P01_01": 12, "P01_02": 9, "P02_01": 14}, ann)


def write_tiny_llama(path: Path, tok, hidden: int = 64, intermediate: int = 128) -> Path:
    """A local Llama folder (random weights, seed 0) with ``tok`` saved beside it, as a paper-scale ``--llm``. The
    placeholders <m>, <v> lie beyond its vocabulary, as with Llama-3 (they are clamped, then replaced)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tok) - 2,
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=intermediate,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path
