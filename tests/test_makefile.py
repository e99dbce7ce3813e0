"""The Makefile's interactive target, checked by a dry run (``make -n``): nothing is installed or started."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def dry_run(target: str, tmp_path: Path, *args: str) -> list[str]:
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".flownar-installed").touch()  # a stamp newer than the lock: the environment counts as installed
    out = subprocess.run(
        ["make", "-n", "-C", str(ROOT), target, f"VENV={venv}", *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.splitlines()


def test_make_lab_passes_lab_args_and_allow_root_only_as_root(tmp_path):
    lines = dry_run("lab", tmp_path, "LAB_ARGS=--no-browser --port 8890")
    (cmd,) = [line for line in lines if line.startswith("cd ") and "jupyter lab" in line]
    assert cmd.startswith(f"cd {ROOT}/notebooks && {tmp_path}/venv/bin/jupyter lab")
    assert cmd.endswith("--no-browser --port 8890")
    # Jupyter refuses to run as root without --allow-root (containers); elsewhere the flag must not be added
    assert ("--allow-root" in cmd.split()) == (os.getuid() == 0)
