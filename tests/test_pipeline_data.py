"""The synthetic world through the real readers, the CLI, prepare_dataset and the report helpers."""

import pytest

from flownar.cli import main
from flownar.data.chat import ChatTokenizer
from flownar.data.prepare import prepare_dataset
from flownar.data.readers import FlowNarData
from flownar.data.samples import build_stream_samples
from flownar.data.stats import comparison_table, statistics_table, synthetic_world_summary
from flownar.data.tokenizer import build_tokenizer
from flownar.errors import DataRootError
from flownar.report import data_banner, read_table_csv, save_table


@pytest.mark.parametrize("layout", ["ek100", "ego4d", "egoexo4d"])
def test_cli_synth_then_reader(tmp_path, layout, capsys):
    root = tmp_path / layout
    assert main(["data", "synth", "--layout", layout, "--profile", "smoke", "--out", str(root), "--quiet"]) == 0
    data = FlowNarData(root, layout)
    assert data.is_synthetic and data.fps == 2.0
    n, d = data.feature_spec()
    assert n == 10 and d == data.synthetic_card["feature_dim"]
    for split in ("train", "val"):
        assert data.streams(split), f"{layout}/{split}: no streams"
    clips = data.eval_clips("val")
    assert clips and all(0 <= c.start_frame < c.stop_frame for c in clips)
    # samples build for every stream, with and without memory, and encode with a tokenizer trained on the data
    chat = ChatTokenizer(build_tokenizer(data), frame_num_tokens=n, num_m_tokens=4)
    for use_memory in (False, True):
        samples = build_stream_samples(data, "train", use_memory=use_memory)
        enc = chat.encode(samples[0])
        assert enc.frame_positions.shape == (samples[0].num_frames, n)
        x = data.load_features(samples[0].video_uid, samples[0].frames)
        assert x.shape[0] == samples[0].num_frames
    assert main(["data", "check", str(root), "--dataset", layout, "--quiet"]) == 0
    assert "features OK" in capsys.readouterr().out


def test_cli_refuses_to_overwrite(tmp_path, capsys):
    root = tmp_path / "d"
    root.mkdir()
    (root / "keep.txt").write_text("x")
    assert main(["data", "synth", "--out", str(root), "--quiet"]) == 2
    assert "keep.txt" in str(list(root.iterdir())) and str(root) in capsys.readouterr().err


def test_prepare_dataset_writes_once_and_reuses(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWNAR_DATA_DIR", str(tmp_path))
    data = prepare_dataset("ek100", None, "smoke", seed=3, progress=False)
    assert data.root == tmp_path / "ek100" / "smoke"
    stamp = (data.root / "features_metadata.json").stat().st_mtime_ns
    again = prepare_dataset("ek100", "", "smoke", seed=3, progress=False)
    assert (again.root / "features_metadata.json").stat().st_mtime_ns == stamp  # reused, not rewritten
    other = prepare_dataset("ek100", None, "smoke", seed=4, progress=False)  # another seed: rewritten
    assert other.synthetic_card["seed"] == 4
    with pytest.raises(DataRootError, match="paper profile runs on FlowNar-Data"):
        prepare_dataset("ek100", None, "paper")


def test_statistics_and_banners(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWNAR_DATA_DIR", str(tmp_path))
    data = prepare_dataset("ek100", None, "smoke", progress=False)
    stats = statistics_table(data)
    assert list(stats.index) == ["train", "val"]
    assert stats.loc["train", "videos"] == len(data.synthetic_card["splits"]["train"])
    assert 1.0 < stats.loc["train", "segment duration mean (s)"] < 15.0
    vs = comparison_table(data)
    assert vs.loc["segment duration mean (s)", "EK100 published"] == pytest.approx(3.83)
    banner = data_banner(data)
    assert "SYNTHETIC" in banner and "not the paper's data" in banner
    paths = save_table(vs, tmp_path / "out" / "t", banner)
    assert all(p.read_text().count("not the paper's data") == 1 for p in paths)
    back = read_table_csv(tmp_path / "out" / "t.csv")
    assert list(back.columns) == list(vs.columns)
    summary = synthetic_world_summary(data.synthetic_card)
    assert {"held_item", "hidden_item", "local"} <= set(summary.index)
    assert summary.loc["hidden_item", "mean gap (segments)"] >= 1
    assert summary["segments (train)"].sum() + summary["segments (val)"].sum() == sum(
        len(v["segments"]) for v in data.synthetic_card["videos"].values()
    )
