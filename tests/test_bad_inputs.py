"""Every bad input gets an error (or a counted warning where skipping is right) naming the file and the problem."""

import json

import pytest
import torch
from conftest import nar, write_dataset

from flownar.data.layouts import METADATA_FILE, get_layout
from flownar.data.readers import DataWarning, FlowNarData
from flownar.errors import AnnotationError, DataRootError, FeatureFileError


def test_missing_root(tmp_path):
    with pytest.raises(DataRootError, match="does not exist"):
        FlowNarData(tmp_path / "nope", "ek100")


def test_partial_root_names_what_is_missing(ek100_root):
    (ek100_root / METADATA_FILE).unlink()
    with pytest.raises(DataRootError, match="incomplete.*features_metadata.json"):
        FlowNarData(ek100_root, "ek100")


def test_wrong_layout_names_feature_folder(ek100_root):
    with pytest.raises(DataRootError, match="full_scale_2fps"):
        FlowNarData(ek100_root, "ego4d")


def test_missing_annotation_split(ek100_root):
    (ek100_root / "annotations" / "refined_val_narrations.json").unlink()
    data = FlowNarData(ek100_root, "ek100")
    assert data.available_splits() == ["train"]
    with pytest.raises(DataRootError, match="refined_val_narrations.json.*missing"):
        data.streams("val")


def test_invalid_json(ek100_root):
    p = ek100_root / "annotations" / "refined_train_narrations.json"
    p.write_text('{"P01_01": [')
    with pytest.raises(AnnotationError, match="refined_train_narrations.json: not valid JSON"):
        FlowNarData(ek100_root, "ek100").streams("train")


def test_bad_schema(ek100_root):
    p = ek100_root / "annotations" / "refined_train_narrations.json"
    p.write_text(json.dumps({"P01_01": [{"time": "soon", "text": "x"}]}))
    with pytest.raises(AnnotationError, match=r"refined_train_narrations.json: P01_01\[0\]: 'time' must be a finite"):
        FlowNarData(ek100_root, "ek100").streams("train")


def test_bad_metadata_entry(ek100_root):
    (ek100_root / METADATA_FILE).write_text(json.dumps({"P01_01": {"duration": -1, "path": "P01_01.pt"}}))
    with pytest.raises(AnnotationError, match="features_metadata.json: entry 'P01_01'"):
        FlowNarData(ek100_root, "ek100")


def _feature(root, uid):
    return get_layout("ek100").feature_dir(root) / f"{uid}.pt"


def test_missing_feature_file(ek100_root):
    _feature(ek100_root, "P01_02").unlink()
    data = FlowNarData(ek100_root, "ek100")
    with pytest.raises(FeatureFileError, match="P01_02.pt: feature file is missing"):
        data.load_features("P01_02")


def test_truncated_feature_file(ek100_root):
    p = _feature(ek100_root, "P01_02")
    p.write_bytes(p.read_bytes()[:200])
    data = FlowNarData(ek100_root, "ek100")
    with pytest.raises(FeatureFileError, match="P01_02.pt: cannot be read.*truncated"):
        data.load_features("P01_02")


def test_wrong_shape(ek100_root):
    torch.save(torch.randn(9, 10, 16).to(torch.bfloat16), _feature(ek100_root, "P01_02"))
    data = FlowNarData(ek100_root, "ek100")
    with pytest.raises(FeatureFileError, match=r"P01_02.pt: feature dim 16 .*this dataset has 8"):
        data.load_features("P01_02")
    torch.save(torch.randn(9, 80), _feature(ek100_root, "P01_02"))
    with pytest.raises(FeatureFileError, match="expected 3 dims"):
        data.load_features("P01_02")


def test_too_few_frames(ek100_root):
    torch.save(torch.randn(3, 10, 8), _feature(ek100_root, "P01_01"))
    data = FlowNarData(ek100_root, "ek100")
    with pytest.raises(FeatureFileError, match="P01_01.pt: holds 3 frames.*at least 12"):
        data.check_features(["P01_01"])


def test_nan_features(ek100_root):
    x = torch.randn(9, 10, 8)
    x[4, 2, 1] = float("nan")
    x[6, 0, 0] = float("inf")
    torch.save(x, _feature(ek100_root, "P01_02"))
    with pytest.raises(FeatureFileError, match="P01_02.pt: 2 non-finite values .* in 2 frames, first at frame 4"):
        FlowNarData(ek100_root, "ek100").load_features("P01_02")


def test_pickled_object_is_refused(ek100_root):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("should not run",))

    _feature(ek100_root, "P01_02").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(FeatureFileError, match="cannot be read"):
        FlowNarData(ek100_root, "ek100").load_features("P01_02")


def test_unknown_video_is_a_counted_warning(tmp_path):
    ann = {"train": {"v": nar((0.0, "a."), (1.0, "b.")), "ghost1": nar((0.0, "a.")), "ghost2": nar((0.0, "a."))}}
    root = write_dataset(tmp_path, "ek100", {"v": 5}, ann)
    data = FlowNarData(root, "ek100")
    with pytest.warns(DataWarning, match=r"refined_train_narrations.json: skipped 2 annotated videos .*ghost1, ghost2"):
        streams = data.streams("train")
    assert [s.video_uid for s in streams] == ["v"]
    with pytest.raises(AnnotationError, match="skipped 2 annotated videos"):
        FlowNarData(root, "ek100", strict=True).streams("train")


def test_video_without_narrations_is_a_counted_warning(tmp_path):
    root = write_dataset(tmp_path, "ek100", {"v": 5, "w": 5}, {"train": {"v": nar((0.0, "a.")), "w": []}})
    with pytest.warns(DataWarning, match="skipped 1 streams with no narrations: w"):
        assert len(FlowNarData(root, "ek100").streams("train")) == 1


def test_cli_reports_errors(tmp_path, capsys):
    from flownar.cli import main

    assert main(["data", "check", str(tmp_path / "missing"), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err
