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


@pytest.mark.parametrize(
    "setting,named",
    [("SEED=abc", "'abc' is not a seed"), ("SEEDS=0 x", "'x' is not a seed"), ("PROFILE=big", "PROFILE='big'")],
)
def test_a_bad_seed_or_profile_is_named_before_anything_runs(tmp_path, setting, named):
    """issue 28: ``make reproduce-ek100 SEED=abc`` failed inside numpy, several minutes in, without naming SEED."""
    out = subprocess.run(
        ["make", "-s", "-n", "--no-print-directory", "-C", str(ROOT), "reproduce-ek100", setting],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode != 0 and named in out.stderr and not out.stdout.strip(), out.stderr
