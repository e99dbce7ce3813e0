import json

import pytest
import torch
from conftest import nar, write_dataset
from safetensors.torch import save_file

from flownar.data.layouts import METADATA_FILE, fps_from_folder, get_layout
from flownar.data.readers import FlowNarData


def test_ek100_streams_and_features(ek100_root):
    data = FlowNarData(ek100_root, "ek100")
    assert data.fps == 2.0
    assert data.feature_spec() == (10, 8)  # from the tensors, not constants
    assert not data.is_synthetic
    train = data.streams("train")
    assert [s.video_uid for s in train] == ["P01_01", "P01_02"]
    assert [n.text for n in train[0].narrations][0] == "You open the fridge."
    x = data.load_features("P01_01", range(2, 5))
    assert x.shape == (3, 10, 8) and x.dtype == torch.bfloat16
    full = data.load_features("P01_01")
    assert torch.equal(full[2:5], x)


def test_ek100_eval_clips(ek100_root):
    clips = FlowNarData(ek100_root, "ek100").eval_clips("val")
    assert len(clips) == 1
    c = clips[0]
    # frames [int(first*2), int(last*2)+1) clamped to the video (14 frames: max index 13)
    assert (c.start_frame, c.stop_frame, c.start_time) == (4, 12, 2.0)
    assert [n.text for n in c.references[0]] == ["You cut the onion.", "You put down the knife."]


def test_narrations_are_sorted(tmp_path):
    ann = {"train": {"v": nar((3.0, "b"), (1.0, "a"), (3.0, "c"))}}
    data = FlowNarData(write_dataset(tmp_path, "ek100", {"v": 10}, ann), "ek100")
    assert [n.text for n in data.streams("train")[0].narrations] == ["a", "b", "c"]  # stable for ties


def test_ego4d_streams_and_summary_clips(tmp_path):
    ann = {
        "train": {"u1": {"a1": nar((1.0, "You take the cup.")), "a2": nar((1.5, "You pick up the cup."))}},
        "val": {"u2": {"a3": nar((1.0, "x one."), (7.0, "x two.")), "a4": nar((2.0, "y one."))}},
    }
    summaries = {
        "u2": {
            "0.0, 5.0": {"a3": {"narration": nar((1.0, "x one."))}, "a4": {"narration": nar((2.0, "y one."))}},
            "5.0, 9.0": {"a3": {"narration": nar((7.0, "x two."))}},
        },
        "u1": {"0.0, 2.0": {"a1": {"narration": nar((1.0, "You take the cup."))}}},  # a train video: not in val
    }
    root = write_dataset(tmp_path, "ego4d", {"u1": 6, "u2": 20}, ann, summaries=summaries)
    data = FlowNarData(root, "ego4d")
    assert {s.stream_id for s in data.streams("train")} == {"a1", "a2"}
    clips = data.eval_clips("val")
    assert [c.clip_id for c in clips] == ["u2@0-5", "u2@5-9"]
    assert (clips[0].start_frame, clips[0].stop_frame, clips[0].start_time) == (0, 11, 0.0)
    assert (clips[1].start_frame, clips[1].stop_frame) == (10, 19)
    assert len(clips[0].references) == 2


def test_ego4d_summary_without_nested_narrations(tmp_path):
    ann = {"val": {"u": {"a": nar((1.0, "one."), (6.0, "two."))}}}
    root = write_dataset(tmp_path, "ego4d", {"u": 20}, ann, summaries={"u": {"0.0, 5.0": "a summary text"}})
    clips = FlowNarData(root, "ego4d").eval_clips("val")
    assert [[n.text for n in r] for r in clips[0].references] == [["one."]]


def test_egoexo4d_invisible_descriptions(tmp_path):
    """Training streams drop them; the self-conditioned clip and its GT keep them, as the original's builder and
    evaluator (the corrected scoring drops them: Narration.visible)."""

    def desc(t, text, vis=True):
        return {"timestamp": t, "text": text, "ego_visible": vis}

    ann = {
        "val": {
            "take1": [
                {"descriptions": [desc(0.5, "hidden.", False), desc(2.0, "You stir.")]},
                {"descriptions": [desc(3.0, "You pour.")]},
                {"descriptions": []},
            ]
        }
    }
    data = FlowNarData(write_dataset(tmp_path, "egoexo4d", {"take1": 12}, ann), "egoexo4d")
    streams = data.streams("val")
    assert [[n.text for n in s.narrations] for s in streams] == [["You stir."], ["You pour."]]
    assert data.skipped["streams with no narrations"] == ["take1#2"]
    clip = data.eval_clips("val")[0]
    # the window starts at the first description, visible or not, as the original's segment-summary builder
    assert (clip.start_frame, clip.start_time, clip.stop_frame) == (1, 0.5, 7)
    assert [[(n.text, n.visible) for n in r] for r in clip.references] == [
        [("hidden.", False), ("You stir.", True)],
        [("You pour.", True)],
    ]


def test_safetensors_features(tmp_path):
    root = write_dataset(tmp_path, "ek100", {"v": 5}, {"train": {"v": nar((0.0, "a."), (1.0, "b."))}})
    lay = get_layout("ek100")
    x = torch.randn(5, 10, 8)
    save_file({"features": x}, str(lay.feature_dir(root) / "v.safetensors"))
    meta = json.loads((root / METADATA_FILE).read_text())
    meta["v"]["path"] = "v.safetensors"
    (root / METADATA_FILE).write_text(json.dumps(meta))
    assert torch.equal(FlowNarData(root, "ek100").load_features("v"), x)


def test_fps_from_folder():
    assert fps_from_folder("videos_2fps_max384_1+3x3_google--siglip-large-patch16-384") == 2.0
    assert fps_from_folder("x_5fps_y") == 5.0
    with pytest.raises(ValueError, match="frame rate"):
        fps_from_folder("videos_max384")


def test_layout_aliases():
    assert get_layout("EgoExo").name == "egoexo4d"
    with pytest.raises(ValueError, match="unknown dataset layout"):
        get_layout("kinetics")
