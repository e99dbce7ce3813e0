"""make gpu-check's script at toy size on the CPU: every part runs and writes its files (the GPU run itself needs a
GPU machine)."""

import json

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
