"""make gpu-check's script at toy size on the CPU: every part runs and writes its files under one --out; a failure in
one (size, mode, system) costs nothing else; the deadline stops it cleanly with a complete summary (the GPU run
itself needs a GPU machine)."""

import json
import os
import subprocess
import sys

import pytest

from flownar import gpu_check


def _summary(out):
    return json.loads((out / "gpu_check" / "summary.json").read_text())


def test_gpu_check_smoke_writes_every_part(tmp_path):
    assert gpu_check.main(["--smoke", "--out", str(tmp_path), "--budget-s", "600"]) == 0
    summary = _summary(tmp_path)
    parts = summary["parts"]
    assert summary["device"] in ("cpu", "cuda") and summary["versions"]["torch"] and summary["errors"] == []
    assert "tf32" in summary["versions"]
    assert parts["tests"]["result"].get("returncode") == 0, parts["tests"]  # skipped without a GPU, but collected
    check = parts["capture_check micro"]["result"]
    assert check["passed"] and check["same_tokens"] and check["argmax_agreement"] == 1.0
    assert json.loads((tmp_path / "gpu_check" / "capture_check.json").read_text())["micro"]["passed"]
    for mode in ("eager", "captured"):
        bench = json.loads((tmp_path / f"bench_gpu_micro_{mode}.json").read_text())
        assert bench["gpu_check"]["mode"] == mode and bench["errors"] == []
        assert {r["system"] for r in bench["runs"]} == {"videollm-online", "flownar-c"}
        assert all(r["frames"] > 0 and r["points"] and r["steady_frame_ms"] > 0 for r in bench["runs"])
    lora = json.loads((tmp_path / "gpu_check" / "lora_step.json").read_text())
    assert lora["frames"] > 10 and lora["step_s"] > 0 and lora["loss"] > 0
    log = (tmp_path / "gpu_check" / "console.log").read_text()
    assert "bench micro eager flownar-c" in log and "lora_step ..." in log


def test_one_failing_system_and_mode_costs_nothing_else(tmp_path, monkeypatch):
    """issue 29: one exception ended everything after it, and one failing system dropped the others' JSON."""
    from flownar.efficiency import bench

    real = bench.run_bench

    def flaky(systems, frames, **kw):
        if systems == ["flownar-c"] and kw.get("capture"):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real(systems, frames, **kw)

    monkeypatch.setattr(bench, "run_bench", flaky)
    assert gpu_check.main(["--smoke", "--out", str(tmp_path), "--budget-s", "600"]) == 0
    captured = json.loads((tmp_path / "bench_gpu_micro_captured.json").read_text())
    assert [r["system"] for r in captured["runs"]] == ["videollm-online"]
    assert captured["errors"][0]["system"] == "flownar-c" and "illegal memory" in captured["errors"][0]["failed"]
    eager = json.loads((tmp_path / "bench_gpu_micro_eager.json").read_text())
    assert {r["system"] for r in eager["runs"]} == {"videollm-online", "flownar-c"}
    summary = _summary(tmp_path)
    assert [e["where"] for e in summary["errors"]] == ["bench micro captured flownar-c"]
    assert "RuntimeError" in summary["errors"][0]["traceback"]
    assert summary["parts"]["lora_step"]["result"]["step_s"] > 0  # the part after the failure ran


def test_the_deadline_stops_cleanly_with_a_complete_summary(tmp_path, monkeypatch):
    """issue 29: only the streams were budgeted. Here the budget runs out during the eager benches: the captured
    streams and the LoRA step are skipped with the reason, and the summary says what ran."""
    from flownar.efficiency import bench

    real, clock = bench.run_bench, {"t": 0.0}

    def slow(systems, frames, **kw):  # each stream takes 'its share' of a small budget
        res = real(systems, frames, **kw)
        clock["t"] += 35.0
        return res

    monkeypatch.setattr(bench, "run_bench", slow)
    monkeypatch.setattr(gpu_check.Run, "left", lambda self: self.budget - clock["t"])
    assert gpu_check.main(["--smoke", "--out", str(tmp_path), "--budget-s", "70"]) == 0
    summary = _summary(tmp_path)
    eager = json.loads((tmp_path / "bench_gpu_micro_eager.json").read_text())
    captured = json.loads((tmp_path / "bench_gpu_micro_captured.json").read_text())
    assert len(eager["runs"]) == 2 and captured["runs"] == []
    assert all("deadline" in e["skipped"] for e in captured["errors"])
    assert "deadline" in summary["parts"]["lora_step"]["result"]["skipped"]
    assert summary["total_s"] >= 0 and summary["errors"] == []


def test_gpu_check_refuses_to_run_without_a_gpu_unless_smoke(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path)]) == 2


def test_out_defaults_to_the_device_folder(tmp_path, monkeypatch):
    """On a lent node only $OUT comes back: everything goes there when it is set."""
    monkeypatch.setenv("OUT", str(tmp_path / "device-out"))
    monkeypatch.setattr(gpu_check, "_parts", lambda run, device, smoke: run.log("nothing to do"))
    assert gpu_check.main(["--smoke"]) == 0
    assert "nothing to do" in (tmp_path / "device-out" / "gpu_check" / "console.log").read_text()


@pytest.mark.skipif(sys.platform != "linux", reason="sitecustomize blocking as on the nodes")
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
    env.pop("OUT", None)
    probe = subprocess.run([sys.executable, "-c", "import datasets"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "ModuleNotFoundError" in probe.stderr  # the block works
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "flownar.gpu_check", "--smoke", "--out", str(out), "--budget-s", "600"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = _summary(out)
    assert summary["parts"]["tests"]["result"].get("returncode") == 0, summary["parts"]["tests"]
    assert summary["versions"]["deepspeed"].startswith("unavailable") and summary["errors"] == []
