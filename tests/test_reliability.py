"""No silent wrong result: predictions, runs and checkpoints that can never be mixed up (docs/development.md,
"Reliability")."""

import json
import os
import re
import shutil
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import nar, write_dataset

from flownar.cli import main
from flownar.data.chat import ChatTokenizer
from flownar.data.prepare import prepare_dataset
from flownar.data.readers import FlowNarData
from flownar.data.tokenizer import build_tokenizer
from flownar.errors import CheckpointError, FeatureFileError, FlowNarError
from flownar.eval.predictions import _atomic_write_json, clip_file, load_predictions, read_prediction
from flownar.eval.runner import run_self_conditioned
from flownar.models import FlowNarForCausalLM, config_for
from flownar.train.config import train_config
from flownar.train.loop import train


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("reliability")
    old = {k: os.environ.get(k) for k in ("FLOWNAR_DATA_DIR", "FLOWNAR_RUNS_DIR")}
    os.environ["FLOWNAR_DATA_DIR"] = str(base / "data")
    os.environ["FLOWNAR_RUNS_DIR"] = str(base / "runs")
    data = prepare_dataset("ek100", None, "smoke", 0, progress=False)
    chat = ChatTokenizer(build_tokenizer(data), data.tokens_per_frame, 4)
    ckpts = {}
    for name, seed in (("a", 0), ("b", 1)):
        torch.manual_seed(seed)
        model = FlowNarForCausalLM(config_for("videollm-online", chat, data.feature_dim, size="micro"))
        model.save_pretrained(base / name)
        chat.tok.save_pretrained(base / name)
        ckpts[name] = base / name
    yield base, data, ckpts
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


# ---------------------------------------------------------------------------------------------------- predictions
def test_predictions_of_another_model_are_redone_and_a_mixed_folder_is_refused(env):
    base, data, ckpts = env
    out = base / "preds_ab"
    kw = dict(limit=2, progress=False, with_captions=False, max_new_tokens=2)
    a = run_self_conditioned(ckpts["a"], data, out, **kw)
    assert (a["run"]["done"], a["run"]["reused"]) == (2, 0)
    again = run_self_conditioned(ckpts["a"], data, out, **kw)
    assert (again["run"]["done"], again["run"]["reused"]) == (0, 2)  # same model: reused
    b = run_self_conditioned(ckpts["b"], data, out, **kw)
    assert (b["run"]["done"], b["run"]["redone"], b["run"]["reused"]) == (2, 2, 0)  # another model: redone
    for cid in b["run"]["clips"]:
        assert json.loads(clip_file(out, cid).read_text())["model_fingerprint"] == b["model_fingerprint"]
    assert a["model_fingerprint"] != b["model_fingerprint"]
    # a folder holding files of two models (e.g. two concurrent runs) is refused, naming the files
    run_self_conditioned(ckpts["a"], data, out, **{**kw, "limit": 1})  # clip 0 back to model a, clip 1 still b
    with pytest.raises(FlowNarError, match="prediction files of 2 different models"):
        load_predictions(out, b["run"]["clips"])


def test_clip_ids_that_sanitise_alike_get_their_own_files(tmp_path):
    a, b = clip_file(tmp_path, "P03/01"), clip_file(tmp_path, "P03_01")
    assert a != b and a.name.startswith("P03_01-") and b.name.startswith("P03_01-")
    rec = {"version": 2, "clip_id": "P03/01", "model_fingerprint": "x", "narrations": {}}
    _atomic_write_json(a, rec)
    assert read_prediction(a, "x", "P03/01") is not None
    assert read_prediction(a, "x", "P03_01") is None  # a record of another clip is never used for this one


def test_writers_use_their_own_temporary_files(tmp_path, monkeypatch):
    seen = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (seen.append(Path(src).name), real(src, dst)))
    for _ in range(2):
        _atomic_write_json(tmp_path / "c.json", {"version": 2})
    assert len(set(seen)) == 2 and all(str(os.getpid()) in n for n in seen)
    assert not list(tmp_path.glob(".*.tmp"))


def test_unreadable_prediction_files_are_counted_aloud(env):
    base, data, ckpts = env
    out = base / "preds_bad"
    r = run_self_conditioned(ckpts["a"], data, out, limit=2, progress=False, with_captions=False, max_new_tokens=2)
    clip_file(out, r["run"]["clips"][1]).write_text("{not json")
    with pytest.warns(RuntimeWarning, match=r"1 prediction file\(s\) cannot be used"):
        preds = load_predictions(out, r["run"]["clips"])
    assert len(preds) == 1


def test_limit_scores_exactly_the_clips_it_narrated(env, capsys):
    base, data, ckpts = env
    out = base / "cli_limit"
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no "clips without predictions" scored as F1 = 0
        assert (
            main(
                [
                    "eval",
                    "stream",
                    "--checkpoint",
                    str(ckpts["a"]),
                    "--data",
                    str(data.root),
                    "--out",
                    str(out),
                    "--limit",
                    "2",
                    "--no-captions",
                    "--quiet",
                ]
            )
            == 0
        )
    res = json.loads((out / "metrics.json").read_text())
    assert res["scored_clips"] == 2 and res["scores"]["paper"]["n_clips"] == 2
    assert "scored 2 clips (the 2 of --limit 2)" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- training
def test_training_never_damages_a_finished_run(env):
    base, data, _ = env
    kw = dict(model_size="micro", max_steps=2, progress=False)
    run = train(train_config("videollm-online", "smoke", out=str(base / "finished"), **kw), resume=False)
    before = {n: (run / n).read_bytes() for n in ("train_log.csv", "train_config.json", "model.safetensors")}
    other = base / "other_data"
    shutil.copytree(data.root, other)
    with pytest.raises(CheckpointError, match=r"other settings \(data_root: '' -> "):
        train(train_config("videollm-online", "smoke", out=str(run), data_root=str(other), **kw), resume=True)
    with pytest.raises(CheckpointError, match="finished"):
        train(train_config("videollm-online", "smoke", out=str(run), **kw), resume=False)
    assert train(train_config("videollm-online", "smoke", out=str(run), **kw), resume=True) == run  # nothing to do
    assert {n: (run / n).read_bytes() for n in before} == before


def test_a_data_path_written_another_way_is_the_same_run(env, monkeypatch):
    """issue 28: --data d, ./d/ and the absolute path name one folder: nothing to do, not "other settings"."""
    base, data, _ = env
    kw = dict(model_size="micro", max_steps=1, progress=False)
    other = base / "data_copy"
    shutil.copytree(data.root, other)
    run = train(train_config("videollm-online", "smoke", out=str(base / "pathrun"), data_root=str(other), **kw))
    before = (run / "model.safetensors").read_bytes()
    monkeypatch.chdir(base)
    for written in ("data_copy", "./data_copy/", "../" + base.name + "/data_copy"):
        assert train(train_config("videollm-online", "smoke", out=str(run), data_root=written, **kw)) == run
    assert (run / "model.safetensors").read_bytes() == before


def test_a_second_training_into_a_busy_folder_is_refused_and_a_stale_lock_taken_over(env, capsys):
    """issue 28: two trainings into one --out interleaved their logs; the second is refused while the first runs
    (the lock is a flock: another open file description conflicts, in this process as in another one)."""
    from flownar.train.resume import LOCK, run_lock

    base, _, _ = env
    kw = dict(model_size="micro", max_steps=2, progress=False)
    run = base / "busy"
    with run_lock(run):
        with pytest.raises(CheckpointError, match="another flownar train is writing into this folder"):
            train(train_config("videollm-online", "smoke", out=str(run), **kw))
        assert (
            main(
                [
                    "train",
                    "--system",
                    "videollm-online",
                    "--profile",
                    "smoke",
                    "--out",
                    str(run),
                    "--quiet",
                    "--set",
                    "model_size=micro",
                    "--set",
                    "max_steps=2",
                ]
            )
            == 2
        )
        assert not (run / "train_log.csv").exists()
    (run / LOCK).write_text("pid 999999 on a-killed-host since 2026-12-01 00:00:00")  # left by a killed run
    capsys.readouterr()
    assert train(train_config("videollm-online", "smoke", out=str(run), **kw)) == run
    assert "taking it over" in capsys.readouterr().out
    assert pd.read_csv(run / "train_log.csv")["step"].tolist() == [1, 2]
    assert (run / LOCK).read_text() == ""  # released


def test_resume_is_bit_identical_with_dropout_and_drops_later_log_rows(env):
    """FlowNar's CLAM uses dropout: without the random-number state a resumed run ends elsewhere."""
    from safetensors.torch import load_file

    base, _, _ = env
    kw = dict(model_size="micro", max_steps=4, save_every=2, progress=False)
    full = train(train_config("flownar", "smoke", out=str(base / "rfull"), **kw), resume=False)
    part = base / "rpart"
    shutil.copytree(full / "checkpoint-2", part / "checkpoint-2")
    shutil.copy(full / "train_log.csv", part / "train_log.csv")  # a kill after step 4 was logged, before the end
    # a checkpoint cut short while saving (no trainer state): skipped with a warning
    (part / "checkpoint-3").mkdir()
    shutil.copy(full / "checkpoint-2" / "trainable.safetensors", part / "checkpoint-3")
    with pytest.warns(RuntimeWarning, match="checkpoint-3: incomplete checkpoint"):
        train(train_config("flownar", "smoke", out=str(part), **kw), resume=True)
    wa, wb = load_file(full / "model.safetensors"), load_file(part / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    log = pd.read_csv(part / "train_log.csv")
    assert log["step"].tolist() == [1, 2, 3, 4]


# ---------------------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_errors_name_the_file(env, tmp_path):
    from flownar.checkpoint import load_model, load_trained

    _, _, ckpts = env
    run = tmp_path / "run"
    shutil.copytree(ckpts["a"], run)
    weights = run / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"{weights}: truncated"):
        load_trained(run)
    weights.write_bytes(b"")
    with pytest.raises(CheckpointError, match=f"{weights}: empty file"):
        load_model(run)
    weights.unlink()
    with pytest.raises(CheckpointError, match=f"{weights}: missing"):
        load_model(run)
    torch.save({"x": torch.zeros(1)}, run / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin: a pickle checkpoint, refused on purpose"):
        load_model(run)


# ---------------------------------------------------------------------------------------------------- features
def test_feature_shape_from_the_majority_names_the_bad_file(tmp_path):
    root = write_dataset(tmp_path, "ek100", {"v0": 6, "v1": 6, "v2": 6}, {"val": {"v1": nar((0.0, "a."))}})
    bad = root / "features" / next(p.name for p in (root / "features").iterdir()) / "v0.pt"
    torch.save(torch.randn(6, 10, 5), bad)  # listed first, wrong dim
    data = FlowNarData(root, "ek100")
    assert data.feature_spec() == (10, 8)
    assert data.load_features("v1").shape == (6, 10, 8)
    with pytest.raises(FeatureFileError, match=re.escape(f"{bad}: feature dim 5")):
        data.load_features("v0")


def test_extract_features_refuses_another_feature_size_and_a_corrupt_metadata(tmp_path):
    from test_video import write_video
    from transformers import SiglipVisionConfig, SiglipVisionModel

    from flownar.video import extract_features

    towers = {}
    for hidden in (16, 24):
        torch.manual_seed(0)
        cfg = SiglipVisionConfig(
            hidden_size=hidden,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        )
        SiglipVisionModel(cfg).save_pretrained(tmp_path / f"t{hidden}")
        towers[hidden] = tmp_path / f"t{hidden}"
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "a.mp4", seconds=1.0)
    root = tmp_path / "root"
    extract_features(videos, towers[16], root, progress=False)
    write_video(videos / "b.mp4", seconds=1.0)
    with pytest.raises(FlowNarError, match=r"holds features of dim 16 .*a\.pt.* gives dim 24"):
        extract_features(videos, towers[24], root, progress=False)
    meta = root / "features_metadata.json"
    meta.write_text("{broken")
    with pytest.raises(FlowNarError, match=f"{meta}: not valid JSON"):
        extract_features(videos, towers[16], root, progress=False)


def test_two_processes_preparing_the_embedded_data_at_once(tmp_path, monkeypatch):
    """Parallel trainings that find the embedded dataset missing at the same moment: one writes it while the other
    waits (before, both cleared and wrote the same folder, and one crashed on a file the other had removed). Here
    the test holds the writers' lock: a process asked to prepare the data must wait for it, then find it written."""
    import multiprocessing as mp
    import time

    from filelock import FileLock

    from flownar import paths

    monkeypatch.setenv("FLOWNAR_DATA_DIR", str(tmp_path / "data"))
    root = paths.embedded_data_root("ek100", "smoke")
    root.parent.mkdir(parents=True)
    lock = FileLock(str(root.parent / f".{root.name}.lock"))
    ctx = mp.get_context("spawn")
    with lock, ctx.Pool(1) as pool:
        pending = pool.apply_async(_prepare_smoke, ("ek100",))
        time.sleep(8)  # long enough for the child to start and reach the lock
        assert not pending.ready()  # it waits while another writer holds the lock
        assert not (root / "flownar_synthetic.json").exists()
        lock.release()
        assert pending.get(timeout=120) == str(root)
    assert (root / "flownar_synthetic.json").is_file()


def _prepare_smoke(dataset: str) -> str:
    from flownar.data.prepare import prepare_dataset

    return str(prepare_dataset(dataset, None, "smoke", 0, progress=False).root)


def test_predictions_made_from_other_inputs_are_redone(env, tmp_path):
    """The same model on another world with the same clip ids, or with other narration settings, narrates again
    instead of scoring the old predictions against the new references."""
    from flownar.data.synth import write_synthetic_dataset

    base, data, ckpts = env
    out = base / "preds_inputs"
    kw = dict(limit=2, progress=False, with_captions=False, max_new_tokens=2)
    first = run_self_conditioned(ckpts["a"], data, out, **kw)
    assert (first["run"]["done"], first["run"]["reused"]) == (2, 0)
    assert run_self_conditioned(ckpts["a"], data, out, **kw)["run"]["reused"] == 2
    other = FlowNarData(write_synthetic_dataset(tmp_path / "seed1", "ek100", "smoke", 1, progress=False), "ek100")
    assert [c.clip_id for c in other.eval_clips("val")[:2]] == first["run"]["clips"]  # the same clip ids
    again = run_self_conditioned(ckpts["a"], other, out, **kw)
    assert (again["run"]["done"], again["run"]["reused"]) == (2, 0)  # other features: narrated again
    stricter = run_self_conditioned(ckpts["a"], other, out, **kw, threshold_high=0.9)
    assert (stricter["run"]["done"], stricter["run"]["reused"]) == (2, 0)  # other settings: narrated again


# ---------------------------------------------------------------------------------------------------- writers
def test_an_out_that_cannot_be_written_ends_in_one_line_before_any_work(env, tmp_path, capsys, monkeypatch):
    """issue 28: a file given as --out, or a disk that fills up, gave raw OSError tracebacks (train, eval); now one
    line naming the path and the cause, and --out is checked before the work starts."""
    import errno

    import flownar.eval.runner as runner

    base, data, ckpts = env
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    calls = []
    monkeypatch.setattr(runner, "narrate_clips", lambda *a, **k: calls.append(1))
    cases = [
        ["eval", "stream", "--checkpoint", str(ckpts["a"]), "--data", str(data.root), "--out", str(a_file)],
        ["eval", "oracle", "--checkpoint", str(ckpts["a"]), "--data", str(data.root), "--out", str(a_file / "x")],
        ["claims", "--dirs", str(tmp_path), "--out", str(a_file)],
    ]
    for argv in cases:
        assert main([*argv, "--quiet"] if argv[0] == "eval" else argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(a_file) in err[0] and "Traceback" not in err[0], (argv, err)
    assert not calls  # refused before narrating anything

    def full_disk(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "train_log.csv"))

    import flownar.train.loop as loop

    monkeypatch.setattr(loop, "_setup", full_disk)
    argv = ["train", "--system", "videollm-online", "--profile", "smoke", "--out", str(tmp_path / "run"), "--quiet"]
    assert main(argv) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"flownar: error: {tmp_path / 'run' / 'train_log.csv'}: No space left on device"
    )
    from flownar.train.resume import run_lock

    with run_lock(tmp_path / "run"):  # released on the way out (its text stays: a training that did not finish)
        pass
