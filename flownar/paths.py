"""Every path the package uses comes from here; nothing depends on the current directory.

The project root is the folder that holds the `flownar` package (an editable install), overridable with
``FLOWNAR_ROOT``. Generated data, runs and figures can each be redirected with an environment variable, which the
test suite uses to keep a clean checkout clean.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
RESOURCES_DIR = PACKAGE_DIR / "resources"


def writable_dir(path: str | Path) -> Path:
    """``path`` as a folder that can be written into, made if missing; otherwise the OSError that names it (a file
    in the way, a read-only place). Writers call it before their work starts, so that nothing computed is lost
    to a folder that cannot take it."""
    import errno

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)  # FileExistsError (a file there) / PermissionError name the path
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, "cannot write into this folder", str(path))
    return path


def project_root() -> Path:
    env = os.environ.get("FLOWNAR_ROOT")
    return Path(env).resolve() if env else PACKAGE_DIR.parent


def data_dir() -> Path:
    """Where generated (embedded) datasets live: ``<root>/data`` unless ``FLOWNAR_DATA_DIR`` is set."""
    env = os.environ.get("FLOWNAR_DATA_DIR")
    return Path(env).resolve() if env else project_root() / "data"


def embedded_data_root(dataset: str, profile: str) -> Path:
    """The embedded synthetic dataset for (dataset, profile), e.g. ``data/ek100/default``."""
    return data_dir() / dataset / profile


def runs_dir() -> Path:
    """Checkpoints, predictions and logs: ``<root>/runs`` unless ``FLOWNAR_RUNS_DIR`` is set."""
    env = os.environ.get("FLOWNAR_RUNS_DIR")
    return Path(env).resolve() if env else project_root() / "runs"


def run_dir(dataset: str, profile: str, system: str) -> Path:
    """One trained system: ``runs/<dataset>/<profile>/<system>``."""
    return runs_dir() / dataset / profile / system


def bench_dir(dataset: str = "ek100") -> Path:
    """The committed benchmark runs (``make bench-cpu`` / ``make bench-gpu``): ``paper_figures/<dataset>/bench``."""
    return project_root() / "paper_figures" / dataset / "bench"


def figures_dir(dataset: str, profile: str) -> Path:
    """Tables and figures: ``paper_figures/<dataset>/<profile>`` unless ``FLOWNAR_FIGURES_DIR`` is set
    (then ``$FLOWNAR_FIGURES_DIR/<dataset>/<profile>``)."""
    env = os.environ.get("FLOWNAR_FIGURES_DIR")
    base = Path(env).resolve() if env else project_root() / "paper_figures"
    return base / dataset / profile
