"""provenance.json: commit, data fingerprint, versions, device."""

import json

from flownar.cli import main
from flownar.data.synth import write_synthetic_dataset
from flownar.provenance import data_fingerprint


def test_provenance_records_data_and_software(tmp_path):
    root = write_synthetic_dataset(tmp_path / "d", layout="ek100", profile="smoke", seed=0, progress=False)
    assert (
        main(
            [
                "provenance",
                "--dataset",
                "ek100",
                "--profile",
                "smoke",
                "--data",
                str(root),
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    p = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert p["dataset"] == "ek100" and p["profile"] == "smoke" and p["seed"] == 0
    assert p["data"]["embedded_synthetic"] and p["data"]["synthetic_card"]["seed"] == 0
    assert p["data"]["feature_files"] > 0 and len(p["data"]["sha256"]) == 64
    assert p["packages"]["torch"] and p["packages"]["flownar"] and "cpu_count" in p["device"]
    assert "commit" in p["git"]


def test_fingerprint_changes_with_annotations_only_when_they_change(tmp_path):
    root = write_synthetic_dataset(tmp_path / "d", layout="ego4d", profile="smoke", seed=1, progress=False)
    a = data_fingerprint(root)
    assert data_fingerprint(root) == a  # deterministic
    ann = next((root / "annotations").glob("*.json"))
    ann.write_text(ann.read_text().replace("You", "you", 1))
    assert data_fingerprint(root)["sha256"] != a["sha256"]


def test_lock_state(tmp_path, monkeypatch):
    """provenance.json says whether the environment was installed from the lock (make setup's stamp) and lists
    every locked package whose installed version differs."""
    import hashlib
    from importlib import metadata

    from flownar.provenance import LOCK_STAMP, lock_state

    root, prefix = tmp_path / "repo", tmp_path / "env"
    root.mkdir()
    prefix.mkdir()
    assert lock_state(root, str(prefix)) == {"file": "requirements.lock", "missing": True, "used": False}
    np_version = metadata.version("numpy")
    lock = root / "requirements.lock"
    lock.write_text(f"# comment\nnumpy=={np_version}\n    # via flownar\n")
    s = lock_state(root, str(prefix))
    assert s["sha256"] == hashlib.sha256(lock.read_bytes()).hexdigest() and s["mismatches"] == {}
    assert s["installed_from"] is None and not s["used"]  # not installed by make setup
    (prefix / LOCK_STAMP).write_text(s["sha256"] + "\n")
    assert lock_state(root, str(prefix))["used"]
    lock.write_text(f"numpy=={np_version}\nno-such-package-xyz==1.0\n")
    s = lock_state(root, str(prefix))
    assert not s["used"] and s["mismatches"] == {"no-such-package-xyz": {"locked": "1.0", "installed": None}}


def test_no_path_of_the_making_machine_inside_the_project(tmp_path, monkeypatch):
    """Paths inside the project root are written relative to it (the data root, the command line), so committed
    provenance names no machine's folder; paths outside it (a user's FlowNar-Data) stay as given."""
    from flownar.provenance import _command, provenance

    monkeypatch.setenv("FLOWNAR_ROOT", str(tmp_path))
    root = write_synthetic_dataset(tmp_path / "data" / "ek100" / "smoke", "ek100", "smoke", 0, progress=False)
    p = provenance("ek100", "smoke", 0, root)
    assert p["data"]["root"] == "data/ek100/smoke"
    cmd = _command(
        [str(tmp_path / ".venv" / "bin" / "flownar"), "provenance", "--out", str(tmp_path / "figs"), "/elsewhere"]
    )
    assert cmd == "flownar provenance --out figs /elsewhere" and str(tmp_path) not in json.dumps(p["data"])


def test_relativize_paths_and_no_machine_path_in_committed_outputs(tmp_path):
    """Committed outputs name paths inside the project relative to it (make reproduce-* relativizes each executed
    notebook; records use display_path): no path of the machine that made them."""
    import re
    import subprocess
    from pathlib import Path

    from flownar.report import relativize_paths

    nb = tmp_path / "x.ipynb"
    nb.write_text('{"input_path": "/somewhere/proj/notebooks/01.ipynb", "cwd": "/somewhere/proj", "o": "ok"}')
    assert relativize_paths(nb, "/somewhere/proj") == 2
    assert nb.read_text() == '{"input_path": "notebooks/01.ipynb", "cwd": ".", "o": "ok"}'
    root = Path(__file__).resolve().parents[1]
    files = subprocess.run(["git", "ls-files", "paper_figures"], cwd=root, capture_output=True, text=True).stdout
    machine = re.compile(r"(?<![\w.])/(?:work|tmp|home|root|Users|mnt|check)/[\w.-]+")
    leaks = []
    for f in files.split():
        if f.endswith((".json", ".ipynb", ".md", ".csv", ".tex")):
            hit = machine.search((root / f).read_text(encoding="utf-8", errors="replace"))
            if hit:
                leaks.append(f"{f}: {hit.group(0)}")
    assert not leaks, leaks[:10]
