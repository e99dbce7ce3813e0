"""Training: the CLI, resumable checkpoints, the LoRA path on a tiny random Llama, DeepSpeed ZeRO-2 on 2 CPU ranks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import write_tiny_llama
from transformers import LlamaForCausalLM

from flownar.batches import StreamDataset, model_inputs
from flownar.checkpoint import load_trained
from flownar.cli import main
from flownar.data.prepare import prepare_dataset
from flownar.data.tokenizer import build_tokenizer
from flownar.models import CheckpointError
from flownar.train.config import train_config
from flownar.train.loop import train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("train")
    old = {k: os.environ.get(k) for k in ("FLOWNAR_DATA_DIR", "FLOWNAR_RUNS_DIR")}
    os.environ["FLOWNAR_DATA_DIR"] = str(base / "data")
    os.environ["FLOWNAR_RUNS_DIR"] = str(base / "runs")
    prepare_dataset("ek100", None, "smoke", 0, progress=False)
    yield base
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_cli_train_writes_model_log_and_figure(env):
    out = env / "cli_run"
    assert (
        main(
            [
                "train",
                "--system",
                "flownar-c",
                "--profile",
                "smoke",
                "--out",
                str(out),
                "--quiet",
                "--set",
                "max_steps=3",
                "--set",
                "model_size=micro",
            ]
        )
        == 0
    )
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "train_log.csv",
        "fig_loss.png",
        "train_summary.json",
        "train_config.json",
    ):
        assert (out / name).is_file(), name
    log = pd.read_csv(out / "train_log.csv")
    assert log["step"].tolist() == [1, 2, 3] and log["loss"].notna().all()
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["parameters"]["clam"] > 0 and summary["parameters"]["trainable"] == summary["parameters"]["total"]
    model, chat = load_trained(out, expect_system="flownar-c")
    assert model.config.last_k_narration == 10
    with pytest.raises(CheckpointError, match="'flownar-c' checkpoint, but 'flownar' was asked for"):
        load_trained(out, expect_system="flownar")


def test_unknown_override_is_an_error(env, capsys):
    assert main(["train", "--system", "flownar", "--set", "learning_rate=1"]) == 2
    assert "unknown setting 'learning_rate'" in capsys.readouterr().err


def test_resume_continues_where_it_stopped(env):
    kw = dict(model_size="micro", max_steps=4, save_every=2, progress=False)
    full = train(train_config("dcm-only", "smoke", out=str(env / "full"), **kw), resume=False)
    # an interrupted run: stops after step 2 (the checkpoint), then resumes to 4
    part = train_config("dcm-only", "smoke", out=str(env / "part"), **{**kw, "max_steps": 2, "save_every": 0})
    train(part, resume=False)
    # emulate the checkpoint an interrupted 4-step run would have left at step 2
    import shutil

    shutil.rmtree(env / "part")
    shutil.copytree(full / "checkpoint-2", env / "part" / "checkpoint-2")
    resumed = train(train_config("dcm-only", "smoke", out=str(env / "part"), **kw), resume=True)
    a = pd.read_csv(full / "train_log.csv").set_index("step")
    b = pd.read_csv(resumed / "train_log.csv").set_index("step")
    assert list(b.index) == [3, 4]
    assert b.loc[4, "loss"] == pytest.approx(a.loc[4, "loss"], rel=1e-4)
    from safetensors.torch import load_file

    wa, wb = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def test_resume_refuses_another_system(env):
    kw = dict(model_size="micro", max_steps=2, save_every=1, progress=False)
    run = train(train_config("flownar", "smoke", out=str(env / "sys"), **kw), resume=False)
    assert (run / "checkpoint-1").is_dir()
    with pytest.raises(CheckpointError, match="a 'flownar' run, but 'videollm-online'"):
        train(train_config("videollm-online", "smoke", out=str(env / "sys"), **kw), resume=True)


def test_lora_on_a_tiny_random_llama(env):
    """Paper-scale path: a local Llama directory (random weights) + its tokenizer, LoRA, connector/CLAM in full."""
    data = prepare_dataset("ek100", None, "smoke", 0, progress=False)
    tok = build_tokenizer(data)
    llm = write_tiny_llama(env / "tiny-llama", tok)
    out = env / "lora_run"
    tcfg = train_config(
        "flownar", "smoke", out=str(out), llm_path=str(llm), max_steps=2, progress=False, lora_r=8, lora_alpha=16
    )
    train(tcfg, resume=False)
    assert (out / "adapter_config.json").is_file() and (out / "config.json").is_file()
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["r"] == 8 and set(adapter["modules_to_save"]) >= {"connector", "clam"}
    model, chat = load_trained(out, expect_system="flownar")
    assert model.config.vocab_size == len(tok) - 2 and model.config.v_placeholder_id >= model.config.vocab_size
    ds = StreamDataset(data, "val", chat, model.config, 240)
    loss = model.eval()(**model_inputs(ds[0], "cpu")).loss
    assert torch.isfinite(loss)
    # the trained adapter is loaded (lora_B starts at zero, so non-zero means trained) and the base is frozen Llama
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(float(p.abs().sum()) > 0 for p in lora_b)
    base = LlamaForCausalLM.from_pretrained(llm)
    q = "model.layers.0.self_attn.q_proj"
    assert torch.equal(model.get_submodule(q).base_layer.weight, base.get_submodule(q).weight)


def test_deepspeed_zero2_two_cpu_ranks(env):
    """`torchrun --nproc_per_node 2 -m flownar.train --deepspeed flownar/configs/zero2.json` on gloo."""
    out = env / "ds_run"
    envs = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        TORCH_EXTENSIONS_DIR=os.environ.get("TORCH_EXTENSIONS_DIR", str(ROOT / ".venv" / "torch_extensions")),
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29561",
        "-m",
        "flownar.train",
        "--system",
        "videollm-online",
        "--profile",
        "smoke",
        "--deepspeed",
        str(ROOT / "flownar" / "configs" / "zero2.json"),
        "--out",
        str(out),
        "--no-resume",
        "--quiet",
        "--set",
        "max_steps=2",
        "--set",
        "model_size=micro",
    ]
    r = subprocess.run(cmd, env=envs, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    log = pd.read_csv(out / "train_log.csv")
    assert log["step"].tolist() == [1, 2] and log["loss"].notna().all()
    assert (out / "model.safetensors").is_file()


def test_same_seed_same_weights(env):
    """Two runs with the same seed give bit-identical weights and logs (what makes reproduce-* tables repeatable)."""
    from safetensors.torch import load_file

    kw = dict(model_size="micro", max_steps=3, progress=False)
    a = train(train_config("flownar", "smoke", out=str(env / "det_a"), **kw), resume=False)
    b = train(train_config("flownar", "smoke", out=str(env / "det_b"), **kw), resume=False)
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    la, lb = (pd.read_csv(r / "train_log.csv").drop(columns="seconds") for r in (a, b))
    pd.testing.assert_frame_equal(la, lb)
    c = train(train_config("flownar", "smoke", out=str(env / "det_c"), seed=1, **kw), resume=False)
    wc = load_file(c / "model.safetensors")
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_parallel_training_equals_training_in_this_process(env):
    """ensure_trained_all trains single-threaded runs two at a time in spawned processes: the weights are the same
    bits as a run trained here with the same settings (a result does not depend on which process trains it)."""
    from safetensors.torch import load_file

    from flownar.train.launch import ensure_trained_all

    kw = dict(model_size="micro", max_steps=2, progress=False, threads=1)
    cfgs = [train_config(s, "smoke", out=str(env / f"par_{s}"), **kw) for s in ("flownar-c", "videollm-online")]
    out = ensure_trained_all(cfgs, workers=2)
    assert list(out) == ["flownar-c", "videollm-online"]
    here = train(train_config("flownar-c", "smoke", out=str(env / "par_here"), **kw), resume=False)
    wa, wb = load_file(out["flownar-c"][0] / "model.safetensors"), load_file(here / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert ensure_trained_all(cfgs, workers=2)["videollm-online"][1] < 30  # already trained: not again


def test_paper_profile_needs_a_local_llama_and_real_data(env, tmp_path):
    from flownar.errors import FlowNarError
    from flownar.train.config import check_paper_setup

    with pytest.raises(FlowNarError, match="LLM_PATH"):
        check_paper_setup(train_config("flownar", "paper", data_root="/data/ek100"))
    with pytest.raises(FlowNarError, match=f"{tmp_path}: not a Hugging Face model folder"):
        check_paper_setup(train_config("flownar", "paper", data_root="/data/ek100", llm_path=str(tmp_path)))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FlowNarError, match="DATA_ROOT"):
        check_paper_setup(train_config("flownar", "paper", llm_path=str(tmp_path)))
    check_paper_setup(train_config("flownar", "paper", data_root="/data/ek100", llm_path=str(tmp_path)))
    check_paper_setup(train_config("flownar", "default"))  # the embedded profiles need neither


def test_deepspeed_launch_command_round_trips_the_config(env):
    """The launcher command, parsed by the training CLI the launched ranks run, gives back the same settings."""
    import argparse
    from dataclasses import asdict

    from flownar.train.config import parse_overrides
    from flownar.train.launch import add_train_arguments, deepspeed_command

    cfg = train_config(
        "flownar-c",
        "paper",
        "ego4d",
        data_root="/data/ego4d",
        llm_path="/models/llama",
        seed=3,
        lr=1e-4,
        grad_accum=8,
        save_every=50,
    )
    cmd = deepspeed_command(cfg, 4)
    assert cmd[:6] == [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "4", "--module"]
    assert cmd[6] == "flownar.train"
    p = argparse.ArgumentParser()
    add_train_arguments(p)
    args = p.parse_args(cmd[7:])
    assert args.deepspeed.endswith("flownar/configs/zero2.json") and Path(args.deepspeed).is_file()
    back = train_config(
        args.system,
        args.profile,
        args.dataset,
        data_root=args.data,
        out=args.out,
        seed=args.seed,
        llm_path=args.llm,
        **parse_overrides(args.set),
    )
    mine, theirs = asdict(cfg), asdict(back)
    mine["out"] = str(cfg.run_dir())
    assert {k: v for k, v in theirs.items() if k != "progress"} == {k: v for k, v in mine.items() if k != "progress"}
    assert sorted(args.set) == ["grad_accum=8", "lr=0.0001", "save_every=50"]


def test_ensure_trained_reuses_a_run_launched_with_deepspeed(env):
    """A finished run is reused when only launch settings differ (e.g. it was trained under the deepspeed launcher)."""
    from dataclasses import asdict

    from flownar.train.launch import ensure_trained

    # out left empty, as notebook 01 does: the run folder comes from FLOWNAR_RUNS_DIR (nothing else trains there)
    cfg = train_config("videollm-online", "smoke", "egoexo4d", model_size="micro", progress=False)
    run = cfg.run_dir()
    run.mkdir(parents=True)
    launched = {
        **asdict(cfg),
        "deepspeed": "flownar/configs/zero2.json",
        "out": str(run),
    }  # as deepspeed_command saves it
    (run / "train_config.json").write_text(json.dumps(launched))
    (run / "train_summary.json").write_text("{}")
    assert ensure_trained(cfg, num_gpus=0) == run
    assert not (run / "train_log.csv").exists()  # not retrained


def test_a_run_saved_before_a_field_existed_still_matches_its_settings():
    """A train_config.json without a field added to TrainConfig since (at its default) describes the same run, so
    finished runs are reused after an upgrade; a field it records with another value still differs."""
    from dataclasses import asdict

    from flownar.train.config import TrainConfig, settings_diff

    cfg = TrainConfig(system="flownar")
    old = asdict(cfg)
    del old["flash_clusters"], old["flash_detail_frames"]
    assert settings_diff(old, cfg) == {}
    assert settings_diff(old, TrainConfig(system="flownar", flash_clusters=4)) == {"flash_clusters": (-1, 4)}
    assert settings_diff({**old, "lr": 1.0}, cfg) == {"lr": (1.0, cfg.lr)}
