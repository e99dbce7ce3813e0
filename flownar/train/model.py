"""The model a run trains: from scratch (embedded) or a local Llama with LoRA (paper scale), and its counts."""

from __future__ import annotations

from pathlib import Path

import torch

from ..data.chat import ChatTokenizer
from ..models import FlowNarForCausalLM, config_for
from .config import TrainConfig


def lora_target_modules() -> str:
    """Every attention/MLP projection of the LLM plus lm_head (CLAM's own projections are not matched)."""
    return r".*model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)|.*lm_head"


def build_model(cfg: TrainConfig, chat: ChatTokenizer, feature_dim: int):
    """From scratch (embedded) or a local Llama with LoRA (paper scale). Returns (model, is_peft)."""
    overrides = dict(num_m_tokens=cfg.num_m_tokens, memory_readout=cfg.memory_readout)
    if cfg.last_k_narration != -1:
        overrides["last_k_narration"] = cfg.last_k_narration
    for name in ("flash_clusters", "flash_detail_frames", "vision_window"):
        if getattr(cfg, name) != -1:
            overrides[name] = getattr(cfg, name)
    if not cfg.llm_path:
        torch.manual_seed(cfg.seed)
        config = config_for(cfg.system, chat, feature_dim, size=cfg.model_size, **overrides)
        return FlowNarForCausalLM(config), False
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig

    base = AutoConfig.from_pretrained(cfg.llm_path, local_files_only=True).to_dict()
    config = config_for(cfg.system, chat, feature_dim, llm=base, **overrides)
    config.base_model_path = str(Path(cfg.llm_path).resolve())
    torch.manual_seed(cfg.seed)
    dtype = torch.bfloat16 if cfg.bf16 else torch.float32
    model = FlowNarForCausalLM.from_pretrained(cfg.llm_path, config=config, local_files_only=True, dtype=dtype)
    kind = config.memory_kind
    memory = [kind.module_name] if kind is not None and kind.module_name else []
    saved = ["connector"] + memory + (["router"] if config.mod else [])
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=lora_target_modules(),
        modules_to_save=saved,
        bias="none",
    )
    return get_peft_model(model, lora), True


def parameter_counts(model) -> dict:
    """Total / trainable parameters and CLAM's and the connector's share."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    clam = sum(p.numel() for n, p in model.named_parameters() if ".clam." in f".{n}" or n.startswith("clam."))
    conn = sum(p.numel() for n, p in model.named_parameters() if "connector." in n)
    return {"total": total, "trainable": trainable, "clam": clam, "connector": conn}
