"""``flownar convert-checkpoint``: a checkpoint written by the original FlowNar code (a PEFT LoRA adapter folder:
LoRA on every projection and ``lm_head``, the connector and CLAM saved in full) -> one of this package's runs, which
every command then loads (``flownar eval``, ``flownar narrate``, ``flownar bench``...).

What the original folder holds, and the name of each tensor on both sides, is written down in
``flownar/resources/original_checkpoint_layout.md``. The original saves no config with the streaming fields (PEFT
does not save the base config): they are options here (system, frame tokens; the vision width and the memory
size are read off the tensors). Its CLAM read-out is at the narration frame's CLS token, so converted runs use
``memory_readout="frame_cls"``. The base LLM is a local folder (``--llm``), as in training.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import torch

from .checkpoint import CheckpointError, save_trained

PREFIX = "base_model.model."

CONNECTOR = {"connector.0.weight": "connector.fc1.weight", "connector.0.bias": "connector.fc1.bias"}
CONNECTOR |= {"connector.2.weight": "connector.fc2.weight", "connector.2.bias": "connector.fc2.bias"}

_ATTN = "clustering.layers.0.multihead_attn."
CLAM = {
    "clustering.query_embed.weight": "clam.query_embed.weight",
    **{f"clustering.layers.0.self_attn.{n}": f"clam.self_attn.{n}" for n in ("in_proj_weight", "in_proj_bias")},
    **{f"clustering.layers.0.self_attn.out_proj.{n}": f"clam.self_attn.out_proj.{n}" for n in ("weight", "bias")},
    "clustering.layers.0.norm1.weight": "clam.norm1.weight",
    "clustering.layers.0.norm1.bias": "clam.norm1.bias",
    _ATTN + "q.weight": "clam.q_proj.weight",
    _ATTN + "k.weight": "clam.k_proj.weight",
    _ATTN + "v.weight": "clam.v_proj.weight",
    _ATTN + "g_proj.weight": "clam.g_proj.weight",
    _ATTN + "gk_proj.0.weight": "clam.gk_proj.0.weight",
    _ATTN + "gk_proj.1.weight": "clam.gk_proj.1.weight",
    _ATTN + "gk_proj.1.bias": "clam.gk_proj.1.bias",
    _ATTN + "o_proj.weight": "clam.o_proj.weight",
    _ATTN + "g_norm.weight": "clam.g_norm.weight",
    "clustering.layers.0.norm2.weight": "clam.norm2.weight",
    "clustering.layers.0.mlp_norm.weight": "clam.mlp_norm.weight",
    "clustering.layers.0.mlp.gate_proj.weight": "clam.mlp.gate_proj.weight",
    "clustering.layers.0.mlp.down_proj.weight": "clam.mlp.down_proj.weight",
}
# LoRA factors keep their names (peft writes them the same way then and now)
LORA = re.compile(
    r"(model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)|lm_head)\.lora_(A|B)\.weight"
)
SYSTEMS = ("videollm-online", "flownar", "flownar-c")


def load_adapter(src: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The adapter's tensors and its ``adapter_config.json``; a file that cannot be read is named with the cause."""
    cfg_file = src / "adapter_config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{src}: no adapter_config.json (the original code saves a PEFT LoRA adapter folder)")
    try:
        adapter_cfg = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_file}: not valid JSON ({e})") from None
    if not isinstance(adapter_cfg, dict):
        raise CheckpointError(
            f"{cfg_file}: expected a JSON object (PEFT's LoRA settings), got {type(adapter_cfg).__name__}"
        )
    if (src / "adapter_model.safetensors").is_file():
        from safetensors.torch import load_file

        path = src / "adapter_model.safetensors"
        try:
            state = load_file(path)
        except Exception as e:  # safetensors raises its own error type for a truncated or empty file
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    elif (src / "adapter_model.bin").is_file():
        path = src / "adapter_model.bin"
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # weights_only refuses pickled objects; a truncated file fails in the unpickler
            raise CheckpointError(
                f"{path}: not a tensor-only PyTorch file (loaded with weights_only=True; a pickled object is "
                f"refused, never executed): {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            ) from None
    else:
        raise CheckpointError(f"{src}: neither adapter_model.safetensors nor adapter_model.bin")
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path}: holds no tensors")
    return state, adapter_cfg


def map_keys(state: dict[str, torch.Tensor], src: Path) -> dict[str, torch.Tensor]:
    """The original's tensors under this package's PEFT names; refuses keys it does not know, naming them."""
    out, unknown = {}, []
    for key, t in state.items():
        name = key[len(PREFIX) :] if key.startswith(PREFIX) else key
        ours = CONNECTOR.get(name) or CLAM.get(name) or (name if LORA.fullmatch(name) else None)
        if ours is None:
            unknown.append(key)
        else:
            out[PREFIX + ours] = t
    if unknown:
        raise CheckpointError(
            f"{src}: {len(unknown)} tensors this converter does not know (not LoRA of a Llama projection / "
            f"lm_head, the connector or CLAM ('clustering')): {sorted(unknown)[:10]}"
        )
    return out


def convert_checkpoint(
    src: str | Path,
    system: str,
    out: str | Path,
    llm: str | Path,
    *,
    frame_num_tokens: int = 10,
    last_k_narration: int | None = None,
) -> Path:
    """Convert the original's adapter folder ``src`` of ``system`` into a run at ``out`` on the base LLM ``llm``.
    Checks that every tensor of the run is provided (the base LLM's own weights aside) and that no tensor is left
    over; the shapes must match the base LLM and the inferred sizes."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    from .data.chat import ChatTokenizer
    from .data.tokenizer import build_tokenizer
    from .train.config import TrainConfig
    from .train.model import build_model

    src, out = Path(src), Path(out)
    if system not in SYSTEMS:
        raise ValueError(f"convert-checkpoint: system must be one of {SYSTEMS}, got {system!r}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(
            f"{out}: {'not a folder' if not out.is_dir() else 'not empty'}: convert-checkpoint writes a new run and "
            "never into an existing one (its weights, log and summary would be mixed with the converted model's)"
        )
    state, adapter_cfg = load_adapter(src)
    mapped = map_keys(state, src)
    fc1 = mapped.get(PREFIX + "connector.fc1.weight")
    if fc1 is None:
        raise CheckpointError(f"{src}: no connector.0.weight (the connector is saved in full by the original)")
    vision_dim = fc1.shape[1]
    queries = mapped.get(PREFIX + "clam.query_embed.weight")
    has_memory = queries is not None
    if has_memory != (system != "videollm-online"):
        raise CheckpointError(
            f"{src}: {'has' if has_memory else 'has no'} CLAM ('clustering') tensors, so it is not a {system!r} "
            "checkpoint"
        )
    num_m_tokens = queries.shape[0] if has_memory else 20
    if system == "flownar-c" and last_k_narration is None:
        last_k_narration = 10  # the original's _c scripts
    cfg = TrainConfig(
        system=system,
        profile="paper",
        llm_path=str(llm),
        lora_r=int(adapter_cfg.get("r", 128)),
        lora_alpha=int(adapter_cfg.get("lora_alpha", 256)),
        num_m_tokens=num_m_tokens,
        memory_readout="frame_cls",
        last_k_narration=-1 if last_k_narration is None else last_k_narration,
    )
    chat = ChatTokenizer(build_tokenizer(None, llm), frame_num_tokens, num_m_tokens)
    model, _ = build_model(cfg, chat, vision_dim)
    wanted = {k: v.shape for k, v in get_peft_model_state_dict(model).items() if ".base_layer." not in k}
    missing = sorted(set(wanted) - set(mapped))
    if missing:
        raise CheckpointError(f"{src}: missing tensors for a {system!r} run: {missing[:10]}")
    wrong = [f"{k}: {tuple(mapped[k].shape)} vs {tuple(s)}" for k, s in wanted.items() if mapped[k].shape != s]
    if wrong:
        raise CheckpointError(f"{src}: tensors of another shape than the base LLM / sizes imply: {wrong[:10]}")
    result = set_peft_model_state_dict(model, mapped)
    if result.unexpected_keys:
        raise CheckpointError(f"{src}: tensors the run has no place for: {sorted(result.unexpected_keys)[:10]}")
    save_trained(model, out, chat, is_peft=True)
    (out / "train_config.json").write_text(json.dumps({**asdict(cfg), "converted_from": str(src)}, indent=1))
    return out
