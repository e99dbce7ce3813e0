"""make gpu-check's script at toy size on the CPU: every part runs and writes its files (the GPU run itself needs a
GPU machine)."""

import json
import os
import subprocess
import sys

from flownar import gpu_check


def test_gpu_check_smoke_writes_every_part(tmp_path):
    assert gpu_check.main(["--smoke", "--out", str(tmp_path), "--budget-s", "12"]) == 0
    summary = json.loads((tmp_path / "gpu_check" / "summary.json").read_text())
    assert summary["device"] in ("cpu", "cuda") and summary["versions"]["torch"]
    assert summary["tests"].get("returncode") == 0, summary["tests"]  # skipped without a GPU, but collected
    for mode in ("eager", "captured"):
        bench = json.loads((tmp_path / f"bench_gpu_micro_{mode}.json").read_text())
        assert bench["capture"] == (mode == "captured") and {r["system"] for r in bench["runs"]} == {
            "videollm-online",
            "flownar-c",
        }
        assert all(r["frames"] > 0 and r["points"] for r in bench["runs"])
    lora = json.loads((tmp_path / "gpu_check" / "lora_step.json").read_text())
    assert lora["frames"] > 10 and lora["step_s"] > 0 and lora["loss"] > 0


def test_gpu_check_refuses_to_run_without_a_gpu_unless_smoke(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path)]) == 2


def test_gpu_check_runs_without_the_packages_a_gpu_node_lacks(tmp_path):
    """A lent GPU node has its own PyTorch and transformers but none of datasets, pycocoevalcap, papermill, PyAV,
    DeepSpeed, flash-attn or the notebook stack (and no network to fetch them): the script and the GPU tests it runs
    must not import them. A sitecustomize on PYTHONPATH makes each of them fail to import, in the pytest
    subprocess too."""
    blocked = ["datasets", "pycocoevalcap", "papermill", "ipykernel", "ipywidgets", "av", "nbval", "jupyterlab"]
    blocked += ["deepspeed", "flash_attn"]
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(f"import sys\nfor m in {blocked!r}:\n    sys.modules[m] = None\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(gpu_check.ROOT)]), "TQDM_DISABLE": "1"}
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # nbval is a pytest plugin here; a node without it has none
    probe = subprocess.run([sys.executable, "-c", "import datasets"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "ModuleNotFoundError" in probe.stderr  # the block works
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "flownar.gpu_check", "--smoke", "--out", str(out), "--budget-s", "12"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "gpu_check" / "summary.json").read_text())
    assert summary["tests"].get("returncode") == 0, summary["tests"]
    assert summary["versions"]["deepspeed"].startswith("unavailable")
