"""The model family: every system is a :class:`FlowNarConfig` preset of :class:`FlowNarForCausalLM`.

Importing this package registers ``model_type="flownar"`` with ``AutoConfig`` and ``AutoModelForCausalLM``.
"""
from __future__ import annotations

from pathlib import Path

from transformers import AutoConfig, AutoModelForCausalLM

from ..errors import FlowNarError
from .config import FLOWNAR_FORMAT_VERSION, SYSTEM_NAMES, SYSTEMS, FlowNarConfig, tiny_llama_kwargs
from .modeling import FlowNarForCausalLM

AutoConfig.register("flownar", FlowNarConfig, exist_ok=True)
AutoModelForCausalLM.register(FlowNarConfig, FlowNarForCausalLM, exist_ok=True)


class CheckpointError(FlowNarError):
    """A checkpoint is missing, of another system, or of an unsupported format version."""


def config_for(system: str, chat, feature_dim: int, size: str = "tiny", **overrides) -> FlowNarConfig:
    """A from-scratch config (embedded default) for ``system`` with the ids of a :class:`ChatTokenizer`."""
    kwargs = tiny_llama_kwargs(len(chat.tok), size)
    kwargs.update(system=system, vision_hidden_size=feature_dim, frame_num_tokens=chat.frame_num_tokens,
                  num_m_tokens=chat.num_m_tokens, v_placeholder_id=chat.v_id, m_placeholder_id=chat.m_id,
                  silent_id=chat.silent_id, speak_id=chat.speak_id, eos_token_id=chat.eos_id,
                  bos_token_id=chat.tok.bos_token_id, pad_token_id=chat.tok.pad_token_id)
    kwargs.update(overrides)
    return FlowNarConfig(**kwargs)


def load_model(path: str | Path, expect_system: str | None = None, **kwargs) -> FlowNarForCausalLM:
    """Load a saved model; refuse one of another system or format version (with a message that says which)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: no config.json (not a saved flownar model)")
    try:
        cfg = AutoConfig.from_pretrained(path)
    except Exception as e:  # an unknown model_type, a broken JSON
        raise CheckpointError(f"{path}: cannot read config.json ({e})") from e
    if not isinstance(cfg, FlowNarConfig):
        raise CheckpointError(f"{path}: a {type(cfg).__name__} checkpoint, not a flownar model")
    if cfg.flownar_format_version != FLOWNAR_FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {cfg.flownar_format_version}, this package "
                              f"reads version {FLOWNAR_FORMAT_VERSION}")
    if expect_system is not None and cfg.system != expect_system:
        raise CheckpointError(f"{path}: a {cfg.system!r} checkpoint, but {expect_system!r} was asked for")
    return FlowNarForCausalLM.from_pretrained(path, **kwargs)


__all__ = ["FlowNarConfig", "FlowNarForCausalLM", "SYSTEMS", "SYSTEM_NAMES", "config_for", "load_model",
           "CheckpointError", "tiny_llama_kwargs"]
