"""``provenance.json``: what produced a set of results (code, data, settings, software, hardware).

Written by ``make reproduce-*`` beside the tables (``flownar provenance``); everything in it is cheap to compute,
so it is rewritten on every run. The data fingerprint hashes the metadata and annotation files and the names and
sizes of the feature files (hashing every feature tensor of FlowNar-Data would take minutes); for the embedded
data the synthetic card (generator version, profile, seed) is included as well.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from . import paths
from .report import display_path

PACKAGES = (
    "flownar",
    "torch",
    "transformers",
    "tokenizers",
    "peft",
    "accelerate",
    "deepspeed",
    "datasets",
    "safetensors",
    "numpy",
    "pandas",
    "pycocoevalcap",
    "papermill",
    "nbval",
    "av",
    "matplotlib",
    "seaborn",
)


def git_state(root: Path | None = None) -> dict:
    root = Path(root or paths.project_root())

    def run(*args):
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = run("rev-parse", "HEAD")
    # regenerated outputs under paper_figures/ do not make the code dirty
    dirty = bool(run("status", "--porcelain", "--untracked-files=no", "--", ".", ":!paper_figures")) if commit else None
    return {"commit": commit or None, "dirty": dirty}


def data_fingerprint(root: str | Path) -> dict:
    """sha256 over the metadata/annotation file contents and the feature files' relative paths and sizes."""
    root = Path(root)
    h = hashlib.sha256()
    n_feat, feat_bytes = 0, 0
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(root).as_posix()
        if rel.startswith("features/"):
            size = p.stat().st_size
            h.update(f"{rel}:{size}\n".encode())
            n_feat += 1
            feat_bytes += size
        elif p.suffix == ".json":
            h.update(f"{rel}\n".encode())
            h.update(p.read_bytes())
    return {"sha256": h.hexdigest(), "feature_files": n_feat, "feature_bytes": feat_bytes}


def device_info() -> dict:
    import torch

    info = {
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def package_versions() -> dict:
    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    try:
        out["java"] = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=20).stderr.split(
            "\n"
        )[0]
    except (OSError, subprocess.SubprocessError):
        out["java"] = None
    return out


LOCK_FILE = "requirements.lock"
LOCK_STAMP = ".flownar-lock"  # written into the environment by `make setup`: the sha256 of the lock it installed


def _normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def lock_state(root: Path | None = None, prefix: str | None = None) -> dict:
    """Whether this environment was installed from the project's lock file.

    ``sha256``: of ``requirements.lock`` now; ``installed_from``: the sha256 that ``make setup`` recorded in the
    environment (None if it was not set up by ``make setup``); ``mismatches``: every locked package whose
    installed version differs (torch compared without its local build tag; on a GPU machine torch is PyPI's CUDA
    build by design); ``used``: the environment was installed from this lock and nothing differs."""
    lock = Path(root or paths.project_root()) / LOCK_FILE
    if not lock.is_file():
        return {"file": LOCK_FILE, "missing": True, "used": False}
    text = lock.read_text()
    stamp = Path(prefix or sys.prefix) / LOCK_STAMP
    installed_from = stamp.read_text().strip() if stamp.is_file() else None
    mismatches = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" not in line:
            continue
        name, version = (x.strip() for x in line.split("==", 1))
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            have = None
        if have is None or have.split("+")[0] != version.split("+")[0]:
            mismatches[_normalise(name)] = {"locked": version, "installed": have}
    sha = hashlib.sha256(lock.read_bytes()).hexdigest()
    return {
        "file": LOCK_FILE,
        "sha256": sha,
        "installed_from": installed_from,
        "mismatches": mismatches,
        "used": installed_from == sha and not mismatches,
    }


def _card_summary(card: Path) -> dict:
    """The synthetic card without its per-video ground truth (that stays in the data root)."""
    c = json.loads(card.read_text())
    videos = c.pop("videos", {})
    return {**c, "videos": len(videos)}


def _command(argv: list[str]) -> str:
    """The command line, with the program by its name and paths inside the project relative to it."""
    words = [Path(argv[0]).name] if argv else []
    for a in argv[1:]:
        words.append(display_path(a) if a.startswith("/") and Path(a).is_relative_to(paths.project_root()) else a)
    return " ".join(words)


def provenance(dataset: str, profile: str, seed: int, data_root: str | Path | None = None) -> dict:
    """The provenance record of a pipeline run (the data root defaults to the embedded one of the profile)."""
    from .data.layouts import SYNTHETIC_CARD_FILE, get_layout

    layout = get_layout(dataset).name
    root = Path(data_root) if data_root else paths.embedded_data_root(layout, profile)
    card = root / SYNTHETIC_CARD_FILE
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset": layout,
        "profile": profile,
        "seed": seed,
        "data": {
            "root": display_path(root),  # relative to the project when inside it: no machine path
            "embedded_synthetic": card.is_file(),
            "synthetic_card": _card_summary(card) if card.is_file() else None,
            **(data_fingerprint(root) if root.is_dir() else {"missing": True}),
        },
        "git": git_state(),
        "packages": package_versions(),
        "lock": lock_state(),
        "device": device_info(),
        "command": _command(sys.argv),
    }


def write_provenance(
    out_dir: str | Path, dataset: str, profile: str, seed: int, data_root: str | Path | None = None
) -> Path:
    out = Path(out_dir) / "provenance.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(provenance(dataset, profile, seed, data_root), indent=2, default=str))
    return out
