"""Opening and writing a run: the one place that loads a saved model.

A run directory (``runs/<dataset>/<profile>/<system>/`` by default) holds the model (``save_pretrained``: full
weights, or a LoRA adapter plus the fully trained modules at paper scale), its ``config.json`` (which records the
system, so a run cannot be evaluated as another system), the tokenizer, and the training records
(``train_config.json``, ``train_log.csv``, ``train_summary.json``; see :mod:`flownar.train`).

* :func:`load_model` / :func:`load_trained`: open a model / a run (model + chat tokenizer), refusing another
  system's checkpoint or an unsupported format version with :class:`CheckpointError`;
* :func:`save_trained`: write a run's model and tokenizer;
* :func:`check_compatible`: does a model take the frames a dataset (or a vision tower) gives?
* :func:`run_fingerprint`: identifies a trained model (prediction files record it, so a rerun never reuses
  another model's predictions).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from .errors import CheckpointError
from .models import FLOWNAR_FORMAT_VERSION, FlowNarConfig, FlowNarForCausalLM

__all__ = ["CheckpointError", "load_model", "load_trained", "save_trained", "check_compatible", "run_fingerprint"]


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")
PICKLE_FILES = ("pytorch_model.bin", "adapter_model.bin", "model.bin")


def _check_weights(path: Path, names=("model.safetensors", "model.safetensors.index.json")) -> None:
    """A readable safetensors weights file is there; otherwise an error that names the file and what is wrong."""
    from safetensors import safe_open

    found = [path / n for n in names if (path / n).is_file()]
    if not found:
        pickles = [path / n for n in PICKLE_FILES if (path / n).is_file()]
        if pickles:
            raise CheckpointError(
                f"{pickles[0]}: a pickle checkpoint, refused on purpose (loading a pickle can run "
                "arbitrary code); save the model as safetensors (save_pretrained does by default)"
            )
        raise CheckpointError(
            f"{path / names[0]}: missing (the run folder holds no weights; was training interrupted before the end?)"
        )
    f = found[0]
    if f.suffix == ".json":
        return  # sharded: transformers checks the shards it lists
    if f.stat().st_size == 0:
        raise CheckpointError(f"{f}: empty file (0 bytes)")
    try:
        with safe_open(str(f), framework="pt"):
            pass  # the header is checked against the file's length: a cut-off file fails here
    except Exception as e:  # safetensors raises its own SafetensorError
        raise CheckpointError(
            f"{f}: truncated or not a safetensors file ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:160] if str(e) else ''})"
        ) from e


def load_model(path: str | Path, expect_system: str | None = None, **kwargs) -> FlowNarForCausalLM:
    """Load a saved model; refuse one of another system or format version, or with missing, empty, truncated or
    pickled weights (with a message that names the file and says which)."""
    from transformers import AutoConfig

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
        raise CheckpointError(
            f"{path}: checkpoint format version {cfg.flownar_format_version}, this package "
            f"reads version {FLOWNAR_FORMAT_VERSION}"
        )
    if expect_system is not None and cfg.system != expect_system:
        raise CheckpointError(f"{path}: a {cfg.system!r} checkpoint, but {expect_system!r} was asked for")
    _check_weights(path)
    try:
        return FlowNarForCausalLM.from_pretrained(path, use_safetensors=True, **kwargs)
    except (OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(
            f"{path}: cannot load the weights ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})"
        ) from e


def load_trained(path: str | Path, expect_system: str | None = None, dtype=None):
    """Load a run's model (full or LoRA) and its ChatTokenizer. Refuses another system's checkpoint."""
    from .data.chat import ChatTokenizer
    from .data.tokenizer import load_tokenizer

    path = Path(path)
    if (path / "adapter_config.json").is_file():
        from peft import PeftModel
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(path)
        if expect_system is not None and getattr(cfg, "system", None) != expect_system:
            raise CheckpointError(
                f"{path}: a {getattr(cfg, 'system', '?')!r} checkpoint, but {expect_system!r} was asked for"
            )
        _check_weights(path, ("adapter_model.safetensors",))
        base = FlowNarForCausalLM.from_pretrained(cfg.base_model_path, config=cfg, local_files_only=True, dtype=dtype)
        # not merged: with tied embeddings (Llama-3.2-1B) merging lm_head's LoRA would also change the input
        # embeddings; the returned model runs the LoRA layers in place
        model = PeftModel.from_pretrained(base, path).get_base_model()
    else:
        model = load_model(path, expect_system=expect_system, dtype=dtype)
    tok = load_tokenizer(path)
    chat = ChatTokenizer(tok, model.config.frame_num_tokens, model.config.num_m_tokens)
    return model, chat


def save_trained(model, out: Path, chat, is_peft: bool) -> None:
    """Model (or LoRA adapter + fully trained modules) and tokenizer; config.json always records the system."""
    from transformers.utils import logging as hf_logging

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    hf_logging.disable_progress_bar()
    model.save_pretrained(out)
    if is_peft:
        model.get_base_model().config.save_pretrained(out)
    chat.tok.save_pretrained(out)


def check_compatible(model, tokens_per_frame: int, feature_dim: int, checkpoint, source, hint: str = "") -> None:
    """Refuse frames of another shape than the model was trained on; the message names both sides."""
    cfg = model.config
    if (tokens_per_frame, feature_dim) != (cfg.frame_num_tokens, cfg.vision_hidden_size):
        raise CheckpointError(
            f"{checkpoint} takes frames of ({cfg.frame_num_tokens}, {cfg.vision_hidden_size}) "
            f"features but {source} gives ({tokens_per_frame}, {feature_dim})" + (f": {hint}" if hint else "")
        )


#: config.json entries that say which tools wrote a run, not which model it is
TOOL_KEYS = ("transformers_version",)


def canonical_config(path: str | Path) -> bytes:
    """A run's ``config.json`` in canonical form: the config as this code reads it (a field the file lacks takes
    its default), keeping only the entries that differ from the system's defaults, without tool versions,
    sorted. So a field added later at its default, a reordering or a new ``transformers`` leaves it unchanged;
    a changed value changes it."""
    import json

    path = Path(path)
    try:
        raw = json.loads(path.read_text())
        loaded = FlowNarConfig.from_dict(raw).to_dict()
        defaults = FlowNarConfig(system=raw["system"]).to_dict()
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: not a readable flownar config ({type(e).__name__}: {e})") from e
    missing = object()
    kept = {k: v for k, v in loaded.items() if k not in TOOL_KEYS and defaults.get(k, missing) != v}
    return json.dumps(kept, sort_keys=True).encode()


def run_fingerprint(run_dir: str | Path) -> str:
    """Identifies a trained model: sha256 of its config (:func:`canonical_config`) and weights (the safetensors
    weights, the LoRA adapter and its config), first 16 hex digits. Retraining changes it; copying or moving a
    run does not, nor does anything about how it was trained (logs, wall times), nor a config field added at
    its default after the run was made."""
    run_dir = Path(run_dir)
    h = hashlib.sha256()
    if (run_dir / "config.json").is_file():
        h.update(b"config.json")
        h.update(canonical_config(run_dir / "config.json"))
    for name in ("adapter_config.json", *WEIGHT_FILES):
        p = run_dir / name
        if p.is_file():
            h.update(name.encode())
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    h.update(block)
    for shard in sorted(run_dir.glob("model-*-of-*.safetensors")):
        h.update(shard.name.encode())
        h.update(shard.read_bytes())
    return h.hexdigest()[:16]
