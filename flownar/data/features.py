"""Per-video feature tensors: loading (``.pt`` with ``weights_only=True`` or ``.safetensors``) and validation.

A feature file holds one tensor of shape ``(T, tokens_per_frame, feature_dim)``; FlowNar-Data stores bf16
``torch.save`` files of shape ``(T, 10, 1024)`` (1 SigLIP CLS + 3x3 pooled patch tokens per frame, 2 fps).
Every failure names the file and says what is wrong; nothing is unpickled beyond plain tensors.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from ..errors import FeatureFileError

FEATURE_SUFFIXES = (".pt", ".pth", ".safetensors")


def _pick_tensor(obj, path: Path) -> torch.Tensor:
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, dict):
        if "features" in obj and isinstance(obj["features"], torch.Tensor):
            return obj["features"]
        tensors = [v for v in obj.values() if isinstance(v, torch.Tensor)]
        if len(tensors) == 1:
            return tensors[0]
        raise FeatureFileError(
            f"{path}: holds a dict with keys {sorted(obj)[:8]}; expected one tensor (or a 'features' entry)"
        )
    raise FeatureFileError(f"{path}: holds a {type(obj).__name__}, expected a tensor of shape (T, tokens, dim)")


def read_feature_tensor(path: str | Path) -> torch.Tensor:
    """Read the raw tensor of one feature file (no shape checks). Raises FeatureFileError."""
    path = Path(path)
    if not path.is_file():
        raise FeatureFileError(f"{path}: feature file is missing")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path))
        elif suffix in (".pt", ".pth"):
            obj = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise FeatureFileError(
                f"{path}: unsupported feature file type {suffix!r}; expected one of {FEATURE_SUFFIXES}"
            )
    except FeatureFileError:
        raise
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile, Exception) as e:
        raise FeatureFileError(
            f"{path}: cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); "
            "the file is truncated, corrupt or not a tensor file"
        ) from e
    return _pick_tensor(obj, path)


def validate_features(
    x: torch.Tensor,
    path: str | Path,
    *,
    tokens_per_frame: int | None = None,
    feature_dim: int | None = None,
    min_frames: int | None = None,
) -> torch.Tensor:
    """Check shape ``(T, tokens, dim)``, T >= max(1, min_frames), and that every value is finite."""
    if x.ndim != 3:
        raise FeatureFileError(
            f"{path}: features have shape {tuple(x.shape)}; expected 3 dims (T, tokens_per_frame, dim)"
        )
    T, n, d = x.shape
    if T == 0:
        raise FeatureFileError(f"{path}: features hold no frames (shape {tuple(x.shape)})")
    if tokens_per_frame is not None and n != tokens_per_frame:
        raise FeatureFileError(
            f"{path}: {n} tokens per frame (shape {tuple(x.shape)}); this dataset has {tokens_per_frame}"
        )
    if feature_dim is not None and d != feature_dim:
        raise FeatureFileError(f"{path}: feature dim {d} (shape {tuple(x.shape)}); this dataset has {feature_dim}")
    if min_frames is not None and T < min_frames:
        raise FeatureFileError(f"{path}: holds {T} frames but the annotations/metadata need at least {min_frames}")
    if not x.is_floating_point():
        raise FeatureFileError(f"{path}: features have dtype {x.dtype}; expected a floating-point tensor")
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = (~finite).reshape(T, -1).any(dim=1).nonzero().flatten()
        raise FeatureFileError(
            f"{path}: {int((~finite).sum())} non-finite values (NaN/inf) in {bad.numel()} frames, "
            f"first at frame {int(bad[0])}"
        )
    return x


def load_features(path: str | Path, **checks) -> torch.Tensor:
    """Read and validate one feature file; see :func:`validate_features` for the checks."""
    return validate_features(read_feature_tensor(path), path, **checks)
