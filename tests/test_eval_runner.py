"""Self-conditioned runs: per-clip files written atomically, resume, scoring; the eval CLI."""

import json
import os

import pytest
import torch

from flownar.cli import main
from flownar.data.chat import ChatTokenizer
from flownar.data.prepare import prepare_dataset
from flownar.data.tokenizer import build_tokenizer
from flownar.eval.predictions import clip_file, read_prediction
from flownar.eval.runner import narrate_clips, oracle_split, score_clips, stream_timing
from flownar.models import FlowNarForCausalLM, config_for


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("evalrun")
    old = os.environ.get("FLOWNAR_DATA_DIR")
    os.environ["FLOWNAR_DATA_DIR"] = str(base / "data")
    data = prepare_dataset("ek100", None, "smoke", 0, progress=False)
    chat = ChatTokenizer(build_tokenizer(data), data.tokens_per_frame, 4)
    torch.manual_seed(0)
    model = FlowNarForCausalLM(config_for("flownar-c", chat, data.feature_dim, size="micro")).eval()
    yield base, data, chat, model
    if old is None:
        os.environ.pop("FLOWNAR_DATA_DIR", None)
    else:
        os.environ["FLOWNAR_DATA_DIR"] = old


def test_narrate_resume_and_score(setup):
    base, data, chat, model = setup
    out = base / "preds"
    r = narrate_clips(model, chat, data, out, system="flownar-c", progress=False, limit=3, max_new_tokens=2)
    assert r["done"] == 3 and r["skipped"] == 0
    clips = data.eval_clips("val")[:3]
    rec = read_prediction(clip_file(out, clips[0].clip_id))
    assert rec["clip_id"] == clips[0].clip_id and "0" in rec["narrations"]  # the forced first narration
    assert rec["timing"]["frames"] == clips[0].num_frames
    last = str(clips[0].num_frames - 1)
    assert last in rec["narrations"]  # forced at the last frame
    # beside each narration, the text as the original decodes it (special tokens kept; EOS unless capped)
    assert rec["narrations_raw"].keys() == rec["narrations"].keys()
    from flownar.eval.predictions import load_predictions

    pred = load_predictions(out, [clips[0].clip_id])[0]
    assert pred.raw_predictions == {int(k): v for k, v in rec["narrations_raw"].items()}
    # interrupted run: one file lost, one truncated mid-write -> only those two are redone
    clip_file(out, clips[1].clip_id).unlink()
    clip_file(out, clips[2].clip_id).write_text('{"version": 1, "narr')
    stamp = clip_file(out, clips[0].clip_id).stat().st_mtime_ns
    r2 = narrate_clips(model, chat, data, out, system="flownar-c", progress=False, limit=3, max_new_tokens=2)
    assert (r2["done"], r2["skipped"]) == (2, 1)
    assert clip_file(out, clips[0].clip_id).stat().st_mtime_ns == stamp
    assert not list(out.glob(".*.tmp"))  # no temporary files left behind
    with pytest.warns(RuntimeWarning):  # the clips without predictions are scored as empty, with a warning
        scores = score_clips(data, out, with_captions=False)
    for scoring in ("paper", "corrected"):
        assert set(scores[scoring]) >= {"t_precision", "t_recall", "t_f1", "CIDEr", "METEOR", "ROUGE_L"}
        assert 0.0 <= scores[scoring]["t_f1"] <= 1.0
    timing = stream_timing(out)
    assert timing["frames"] == sum(c.num_frames for c in clips) and timing["fps"] > 0
    # a stale record in the folder (another dataset's clip, another model) is not counted for these clips
    import json

    stale = json.loads(clip_file(out, clips[0].clip_id).read_text())
    stale.update(clip_id="OLD_01", model_fingerprint="another-model")
    clip_file(out, "OLD_01").write_text(json.dumps(stale))
    ids = [c.clip_id for c in clips]
    fp = read_prediction(clip_file(out, clips[0].clip_id))["model_fingerprint"]  # None: written without one
    assert stream_timing(out, ids, fp)["frames"] == timing["frames"]
    assert stream_timing(out)["frames"] == timing["frames"] + clips[0].num_frames  # the whole folder: counted
    assert stream_timing(out, ids, "another-model")["frames"] == 0


def test_oracle_split_runs(setup):
    _, data, chat, model = setup
    agg, rows = oracle_split(model, chat, data, progress=False, limit=2, max_num_frames=120)
    assert agg["samples"] == 2 and len(rows) == 2
    assert agg["lm_ppl"] > 1.0 and 0.0 <= agg["fluency"] <= 1.0 and agg["time_diff"] >= 0.0


def test_eval_cli(setup, tmp_path, capsys):
    base, data, chat, model = setup
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)
    chat.tok.save_pretrained(ckpt)
    out = tmp_path / "run"
    assert (
        main(
            [
                "eval",
                "stream",
                "--checkpoint",
                str(ckpt),
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
    assert res["system"] == "flownar-c" and set(res["scores"]) == {"paper", "corrected"}
    assert (
        main(
            [
                "eval",
                "oracle",
                "--checkpoint",
                str(ckpt),
                "--data",
                str(data.root),
                "--out",
                str(out),
                "--limit",
                "1",
                "--quiet",
            ]
        )
        == 0
    )
    assert json.loads((out / "oracle.json").read_text())["metrics"]["samples"] == 1
    assert (
        main(
            [
                "eval",
                "stream",
                "--checkpoint",
                str(tmp_path / "nothing"),
                "--data",
                str(data.root),
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 2
    )
    assert "no config.json" in capsys.readouterr().err


def test_roc_auc_hand_cases():
    import numpy as np

    from flownar.data.probes import roc_auc

    y = np.array([0, 0, 1, 1], dtype=bool)
    assert roc_auc([0.1, 0.2, 0.3, 0.4], y) == 1.0
    assert roc_auc([0.4, 0.3, 0.2, 0.1], y) == 0.0
    assert roc_auc([0.5, 0.5, 0.5, 0.5], y) == 0.5  # ties count half
    assert roc_auc([0.1, 0.3, 0.2, 0.4], y) == 0.75  # 3 of the 4 (pos, neg) pairs ordered right
    assert np.isnan(roc_auc([0.1, 0.2], np.array([1, 1], dtype=bool)))


def test_decision_probe_reads_the_decisions_the_trigger_sees(setup):
    """The probe's P(speak) at each learned decision equals 1 - P(stay silent) of the streaming engine there."""
    from flownar.batches import StreamDataset
    from flownar.eval.oracle import decision_probe

    base, data, chat, model = setup
    r = decision_probe(model, chat, data, "val", limit=2, threshold=0.8)
    ds = StreamDataset(data, "val", chat, model.config, 1200)
    n = sum(
        int(((ds[i]["labels"][0] == chat.silent_id) | (ds[i]["labels"][0] == chat.speak_id)).sum()) for i in range(2)
    )
    n_speak = sum(int((ds[i]["labels"][0] == chat.speak_id).sum()) for i in range(2))
    assert r["streams"] == 2 and r["decisions"] == n and r["base rate"] == pytest.approx(n_speak / n)
    assert 0.0 <= r["AUC"] <= 1.0 and 0.0 <= r["trigger fires (%)"] <= 100.0
    assert r["max P(speak)"] >= max(r["P(speak) at narration frames"], r["P(speak) elsewhere"])
    # a model whose output ignores its input (final norm zeroed: uniform logits) cannot rank: AUC 0.5, all ties
    blind = FlowNarForCausalLM(model.config).eval()
    with torch.no_grad():
        blind.model.norm.weight.zero_()
    r0 = decision_probe(blind, chat, data, "val", limit=2)
    assert r0["AUC"] == 0.5
    assert (
        r0["P(speak) at narration frames"]
        == pytest.approx(r0["P(speak) elsewhere"])
        == pytest.approx(r0["max P(speak)"])
    )


def _eval_args(protocol, ckpt, data, out, limit, shard=None):
    args = ["eval", protocol, "--checkpoint", str(ckpt), "--data", str(data.root), "--out", str(out)]
    args += ["--limit", str(limit), "--quiet"] + (["--no-captions"] if protocol == "stream" else [])
    return args + (["--shard", shard] if shard else [])


def _results(out):
    stream = json.loads((out / "metrics.json").read_text())
    oracle = json.loads((out / "oracle.json").read_text())
    return stream["scores"], stream["scored_clips"], oracle["metrics"], oracle["samples"]


def test_sharded_evaluation_equals_one_process(setup, tmp_path):
    """Both protocols split over two processes (torchrun, CPU, gloo) and over two --shard commands give the
    single-process metrics; each shard narrates only its clips."""
    import subprocess
    import sys

    base, data, chat, model = setup
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)
    chat.tok.save_pretrained(ckpt)
    one = tmp_path / "one"
    for protocol, limit in (("stream", 4), ("oracle", 3)):
        assert main(_eval_args(protocol, ckpt, data, one, limit)) == 0
    want = _results(one)
    assert want[1] == 4 and want[2]["samples"] == 3

    # --shard: part 1 first (it cannot merge: part 0 is missing), then part 0, which finds both and merges
    manual = tmp_path / "manual"
    for protocol, limit in (("stream", 4), ("oracle", 3)):
        assert main(_eval_args(protocol, ckpt, data, manual, limit, "1/2")) == 0
        assert not (manual / ("metrics.json" if protocol == "stream" else "oracle.json")).exists()
        assert main(_eval_args(protocol, ckpt, data, manual, limit, "0/2")) == 0
    assert len(list((manual / "predictions").glob("*.json"))) == 4
    assert _results(manual) == want

    # torchrun: two ranks, rank 0 merges after a barrier
    ranks = tmp_path / "torchrun"
    env = {**os.environ, "FLOWNAR_DATA_DIR": os.environ["FLOWNAR_DATA_DIR"], "OMP_NUM_THREADS": "1"}
    for protocol, limit in (("stream", 4), ("oracle", 3)):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        cmd += ["-m", "flownar.cli"] + _eval_args(protocol, ckpt, data, ranks, limit)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert _results(ranks) == want
    parts = sorted(p.name for p in ranks.glob("oracle.shard*.json"))
    assert parts == ["oracle.shard0of2.json", "oracle.shard1of2.json"]
    assert len(json.loads((ranks / "oracle.shard1of2.json").read_text())["samples"]) == 1  # samples 1 of 0, 1, 2


def test_shard_parts_of_other_inputs_are_not_merged(setup, tmp_path, capsys):
    """Teacher-forced --shard parts made with another --seed (or data, or --limit) are refused by name at the merge,
    not merged into one oracle.json."""
    base, data, chat, model = setup
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)
    chat.tok.save_pretrained(ckpt)
    out = tmp_path / "mixed"
    assert main(_eval_args("oracle", ckpt, data, out, 3, "1/2") + ["--seed", "7"]) == 0
    assert main(_eval_args("oracle", ckpt, data, out, 3, "0/2")) == 2
    assert "oracle.shard1of2.json: made from other inputs" in capsys.readouterr().err
    assert not (out / "oracle.json").exists()


def test_shards_say_why_they_do_not_merge(setup, tmp_path, capsys):
    """issue 28: shard parts of two models waited forever ("1 clips of other shards pending"); parts made with
    another N never merged without a word; a corrupt part was taken for a missing one."""
    base, data, chat, model = setup
    ckpts = {}
    for name, seed in (("a", 0), ("b", 1)):
        torch.manual_seed(seed)
        other = type(model)(model.config)
        ckpts[name] = tmp_path / name
        other.save_pretrained(ckpts[name])
        chat.tok.save_pretrained(ckpts[name])
    out = tmp_path / "two-models"
    assert main(_eval_args("stream", ckpts["a"], data, out, 4, "1/2")) == 0
    capsys.readouterr()
    assert main(_eval_args("stream", ckpts["b"], data, out, 4, "0/2")) == 0
    err = capsys.readouterr().err
    assert "2 another model's" in err and "give every shard the same --checkpoint" in err, err
    assert not (out / "metrics.json").exists()

    tf = tmp_path / "teacher-forced"
    assert main(_eval_args("oracle", ckpts["a"], data, tf, 3, "1/3")) == 0
    capsys.readouterr()
    assert main(_eval_args("oracle", ckpts["a"], data, tf, 3, "0/2")) == 0
    err = capsys.readouterr().err
    assert "oracle.shard1of2.json" in err and "oracle.shard1of3.json" in err and "the same N" in err, err
    assert main(_eval_args("oracle", ckpts["b"], data, tf, 3, "1/2")) == 2
    assert "oracle.shard0of2.json: written by another model" in capsys.readouterr().err
    (tf / "oracle.shard1of2.json").write_text('{"samples": [1, 2')  # cut short
    assert main(_eval_args("oracle", ckpts["a"], data, tf, 3, "0/2")) == 2
    assert "oracle.shard1of2.json: not a readable shard part" in capsys.readouterr().err
    assert not (tf / "oracle.json").exists()


def test_notebook_multi_gpu_narration_fills_the_files_the_runner_reuses(setup, tmp_path, monkeypatch):
    """Notebook 03 at the paper profile: one torchrun rank per GPU narrates into the notebook's prediction folder
    (two CPU ranks stand in for two GPUs here), then run_self_conditioned reuses every file."""
    from flownar.eval.runner import run_self_conditioned
    from flownar.eval.shards import narrate_on_gpus

    base, data, chat, model = setup
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)
    chat.tok.save_pretrained(ckpt)
    preds = tmp_path / "predictions" / "flownar-c"
    assert not narrate_on_gpus(ckpt, data, preds, system="flownar-c", gpus=1)  # one GPU: nothing to split
    assert narrate_on_gpus(ckpt, data, preds, system="flownar-c", gpus=2, threshold_high=0.8)
    n_clips = len(data.eval_clips("val"))
    assert len(list(preds.glob("*.json"))) == n_clips
    rec = run_self_conditioned(ckpt, data, preds, system="flownar-c", progress=False, with_captions=False)
    assert rec["run"]["done"] == 0 and rec["run"]["reused"] == n_clips


def test_cpu_systems_narrate_at_once_into_the_files_the_runner_reuses(setup, tmp_path):
    """Notebook 03 on the CPU: narrate_systems narrates several systems in parallel processes (one thread each);
    run_self_conditioned then reuses every file, and the narrations are those of a one-thread run in this process."""
    from flownar.eval.predictions import load_predictions
    from flownar.eval.runner import narrate_systems, run_self_conditioned

    base, data, chat, model = setup
    runs = {}
    for name, seed in (("flownar-c", 0), ("dcm-only", 1)):
        torch.manual_seed(seed)
        m = FlowNarForCausalLM(config_for(name, chat, data.feature_dim, size="micro")).eval()
        runs[name] = tmp_path / name
        m.save_pretrained(runs[name])
        chat.tok.save_pretrained(runs[name])
    r = narrate_systems(runs, data, tmp_path / "predictions", workers=2, max_new_tokens=2)
    n_clips = len(data.eval_clips("val"))
    assert list(r) == list(runs) and all(x["done"] == n_clips for x in r.values())
    rec = run_self_conditioned(
        runs["flownar-c"],
        data,
        tmp_path / "predictions" / "flownar-c",
        progress=False,
        with_captions=False,
        max_new_tokens=2,
    )
    assert rec["run"]["done"] == 0 and rec["run"]["reused"] == n_clips
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        here = tmp_path / "here"
        narrate_clips(model, chat, data, here, system="flownar-c", progress=False, max_new_tokens=2)
    finally:
        torch.set_num_threads(threads)
    ids = [c.clip_id for c in data.eval_clips("val")]
    a = {p.clip_id: p.predictions for p in load_predictions(tmp_path / "predictions" / "flownar-c", ids)}
    b = {p.clip_id: p.predictions for p in load_predictions(here, ids)}
    assert a == b


def test_teacher_forced_record_reused_only_for_the_same_model_and_inputs(setup, tmp_path, monkeypatch):
    """A teacher-forced record is reused when the same model evaluated the same inputs (its metrics recomputed
    from its rows); another model, another seed or limit, or an older record without inputs is evaluated again."""
    import flownar.eval.runner as runner

    _, data, chat, model = setup
    ckpts = {}
    for name, seed in (("a", 0), ("b", 1)):
        torch.manual_seed(seed)
        m = FlowNarForCausalLM(config_for("flownar-c", chat, data.feature_dim, size="micro")).eval()
        m.save_pretrained(tmp_path / name)
        chat.tok.save_pretrained(tmp_path / name)
        ckpts[name] = tmp_path / name
    calls = []
    real = runner.oracle_split
    monkeypatch.setattr(runner, "oracle_split", lambda *a, **k: calls.append(k) or real(*a, **k))
    out = tmp_path / "tf" / "flownar-c.json"

    def run(ckpt, **kw):
        kw = {"limit": 2, "max_num_frames": 120} | kw
        return runner.run_teacher_forced(ckpt, data, out, system="flownar-c", progress=False, **kw)

    first = run(ckpts["a"])
    assert len(calls) == 1 and not first.get("reused") and first["inputs"]["limit"] == 2
    again = run(ckpts["a"])
    assert len(calls) == 1 and again["reused"] and again["metrics"] == first["metrics"]
    # the metrics are recomputed from the rows: a record whose metrics were edited is corrected, not trusted
    rec = json.loads(out.read_text())
    rec["metrics"]["lm_ppl"] = 123.0
    out.write_text(json.dumps(rec))
    assert run(ckpts["a"])["metrics"] == first["metrics"] and len(calls) == 1
    for other in ({"seed": 7}, {"limit": 1}, {"max_num_frames": 60}):
        run(ckpts["a"], **other)
    assert len(calls) == 4
    run(ckpts["b"])  # another model over the same file
    assert len(calls) == 5 and json.loads(out.read_text())["model_fingerprint"] != first["model_fingerprint"]
    rec = json.loads(out.read_text())
    del rec["inputs"]  # written before records kept their inputs
    out.write_text(json.dumps(rec))
    run(ckpts["b"])
    assert len(calls) == 6
