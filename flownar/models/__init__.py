"""The model family: every system is a :class:`FlowNarConfig` preset of :class:`FlowNarForCausalLM`.

Importing this package registers ``model_type="flownar"`` with ``AutoConfig`` and ``AutoModelForCausalLM``.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModelForCausalLM

from .. import systems
from ..errors import CheckpointError
from .config import (
    FLOWNAR_FORMAT_VERSION,
    REAL_LLMS,
    TINY_SIZES,
    FlowNarConfig,
    tiny_llama_kwargs,
)
from .modeling import FlowNarForCausalLM

AutoConfig.register("flownar", FlowNarConfig, exist_ok=True)
AutoModelForCausalLM.register(FlowNarConfig, FlowNarForCausalLM, exist_ok=True)


def config_for(
    system: str, chat, feature_dim: int, size: str = "tiny", *, llm: dict | None = None, **overrides
) -> FlowNarConfig:
    """The config of ``system`` with the ids of a :class:`~flownar.data.chat.ChatTokenizer`: the one place every
    model config is built (training, benchmarks, tests).

    LLM shape: ``llm``, the config dict of a local Llama (paper scale: its own special-token ids are kept), or
    ``size``: a from-scratch tiny Llama (``micro``, ``mini``, ``tiny``, ``small``; the vocabulary is the
    tokenizer's) or a real model's shape with random weights (``llama-3.2-1b``, ``llama-3.1-8b``; benchmarks).
    ``overrides``: any other config field."""
    systems.get(system)  # a clear error for an unknown key
    if llm is not None:
        shape = {
            k: v for k, v in llm.items() if k not in ("model_type", "architectures", "transformers_version", "auto_map")
        }
    elif size in REAL_LLMS:
        shape = dict(REAL_LLMS[size])
    elif size in TINY_SIZES:
        shape = tiny_llama_kwargs(len(chat.tok), size)
    else:
        raise ValueError(f"unknown LLM size {size!r}; expected one of {TINY_SIZES + tuple(REAL_LLMS)}")
    special = dict(eos_token_id=chat.eos_id, bos_token_id=chat.tok.bos_token_id, pad_token_id=chat.tok.pad_token_id)
    ids = dict(
        system=system,
        vision_hidden_size=feature_dim,
        frame_num_tokens=chat.frame_num_tokens,
        num_m_tokens=chat.num_m_tokens,
        v_placeholder_id=chat.v_id,
        m_placeholder_id=chat.m_id,
        silent_id=chat.silent_id,
        speak_id=chat.speak_id,
    )
    return FlowNarConfig(**{**special, **shape, **ids, **overrides})


__all__ = [
    "FLOWNAR_FORMAT_VERSION",
    "FlowNarConfig",
    "FlowNarForCausalLM",
    "REAL_LLMS",
    "TINY_SIZES",
    "config_for",
    "CheckpointError",
    "tiny_llama_kwargs",
]
