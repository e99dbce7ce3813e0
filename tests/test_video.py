"""Video files: decoding at 2 fps, SigLIP encoding to 1+3x3 tokens, extract-features, live narration, bad input."""

import json
import re

import numpy as np
import pytest
import torch

from flownar.errors import FlowNarError
from flownar.video import FrameEncoder, VideoError, extract_features, read_frames, square_pad

HIDDEN = 16


def write_video(path, seconds=5.0, rate=10, w=64, h=48):
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=rate)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(int(seconds * rate)):
            img = np.full((h, w, 3), (i * 7) % 255, np.uint8)
            img[:, : w // 2, 0] = 200
            for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return path


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    from flownar.checkpoint import save_trained
    from flownar.data.chat import ChatTokenizer
    from flownar.data.samples import DEFAULT_SYSTEM_PROMPT, NARRATION_INSTRUCTIONS
    from flownar.data.tokenizer import train_word_tokenizer
    from flownar.models import FlowNarForCausalLM, config_for

    d = tmp_path_factory.mktemp("video")
    torch.manual_seed(0)
    tower = SiglipVisionModel(
        SiglipVisionConfig(
            hidden_size=HIDDEN,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        )
    )
    tower.save_pretrained(d / "siglip")
    tok = train_word_tokenizer(
        ["You open the fridge.", "You take the jar.", DEFAULT_SYSTEM_PROMPT, *NARRATION_INSTRUCTIONS]
    )
    chat = ChatTokenizer(tok, frame_num_tokens=10, num_m_tokens=4)
    for system, dim in (("flownar", HIDDEN), ("videollm-online", HIDDEN + 1)):
        model = FlowNarForCausalLM(config_for(system, chat, dim, size="micro", clam_dropout=0.0))
        save_trained(model, d / f"ckpt-{system}-{dim}", chat, is_peft=False)
    return {
        "dir": d,
        "video": write_video(d / "clip.mp4"),
        "tower": d / "siglip",
        "ckpt": d / f"ckpt-flownar-{HIDDEN}",
        "ckpt_bad": d / f"ckpt-videollm-online-{HIDDEN + 1}",
    }


def test_read_frames_at_2fps_square_padded(assets):
    frames = list(read_frames(assets["video"], fps=2.0, size=32))
    assert [t for t, _ in frames] == [i / 2 for i in range(10)]  # 5 s at 2 fps, from t = 0
    img = frames[0][1]
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    # 64x48 -> 32x24, centred: 4 black rows above and below
    assert img[:4].max() == 0 and img[-4:].max() == 0 and img[4:28].max() > 0


def test_square_pad_portrait():
    from PIL import Image

    img = square_pad(Image.new("RGB", (20, 40), (255, 255, 255)), 40)
    assert img.shape == (40, 40, 3) and img[:, :10].max() == 0 and img[:, 10:30].min() == 255


def test_encoder_gives_pooled_cls_and_3x3_grid(assets):
    enc = FrameEncoder(assets["tower"])
    x = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    f = enc.encode(x)
    assert f.shape == (2, 10, HIDDEN)
    with torch.no_grad():
        px = ((torch.as_tensor(x).permute(0, 3, 1, 2).float() / 255) - 0.5) / 0.5
        out = enc.model(pixel_values=px)
    torch.testing.assert_close(f[:, 0], out.pooler_output)
    grid = out.last_hidden_state.view(2, 4, 4, HIDDEN)  # 32 / 8 = 4x4 patches, row-major
    torch.testing.assert_close(f[:, 1], grid[:, :2, :2].mean(dim=(1, 2)))  # top-left of 3x3 over a 4x4 grid
    with pytest.raises(ValueError, match="expected"):
        enc.encode(x[:, :16])


def test_extract_features_writes_the_flownar_layout(assets, tmp_path):
    from flownar.data.features import read_feature_tensor

    r = extract_features(assets["video"], assets["tower"], tmp_path, progress=False)
    assert r["encoded"] == ["clip"]
    meta = json.loads((tmp_path / "features_metadata.json").read_text())
    assert meta == {"clip": {"duration": 4.5, "path": "clip.pt"}}
    f = tmp_path / "features" / "videos_2fps_max384_1+3x3_google--siglip-large-patch16-384" / "clip.pt"
    feats = read_feature_tensor(f)
    assert feats.shape == (10, 10, HIDDEN) and feats.dtype == torch.bfloat16
    again = extract_features(assets["dir"], assets["tower"], tmp_path, progress=False)  # a folder; clip is done
    assert again["skipped"] == ["clip"] and again["encoded"] == []


def test_narrate_writes_json_srt_vtt(assets, tmp_path):
    from flownar.narrate import narrate_video

    seen = []
    res, files = narrate_video(
        assets["video"],
        assets["ckpt"],
        assets["tower"],
        tmp_path,
        progress=False,
        on_event=seen.append,
        max_new_tokens=4,
    )
    assert res.frames == 10 and res.system == "flownar"
    assert seen and seen[0]["time"] == 0.0 and seen[-1]["time"] == 4.5  # forced first and last
    assert [n["time"] for n in res.narrations] == sorted({n["time"] for n in res.narrations})
    js = json.loads(files["json"].read_text())
    assert js["frames"] == 10 and len(js["narrations"]) == len(seen)
    srt = files["srt"].read_text().strip().split("\n\n")
    stamps = []
    for i, block in enumerate(srt, 1):
        lines = block.split("\n")
        assert lines[0] == str(i)
        m = re.fullmatch(r"(\d\d):(\d\d):(\d\d),(\d{3}) --> (\d\d):(\d\d):(\d\d),(\d{3})", lines[1])
        assert m, lines[1]
        a = int(m[1]) * 3600 + int(m[2]) * 60 + int(m[3]) + int(m[4]) / 1000
        b = int(m[5]) * 3600 + int(m[6]) * 60 + int(m[7]) + int(m[8]) / 1000
        assert b > a
        stamps.append(a)
    assert stamps == sorted(stamps) and len(stamps) == len(set(stamps))
    vtt = files["vtt"].read_text()
    assert vtt.startswith("WEBVTT\n\n")
    assert re.findall(r"^(\d\d:\d\d:\d\d\.\d{3}) --> \d\d:\d\d:\d\d\.\d{3}$", vtt, re.M)[0] == "00:00:00.000"


def test_narrate_realtime_reports_lag(assets, tmp_path):
    from flownar.narrate import narrate_video

    video = write_video(tmp_path / "short.mp4", seconds=1.5)
    res, _ = narrate_video(
        video, assets["ckpt"], assets["tower"], None, realtime=True, progress=False, max_new_tokens=2
    )
    assert res.realtime and res.frames == 3 and res.wall_s >= 1.0  # paced: frame at 1.0 s read after 1.0 s
    assert res.max_lag_s >= res.final_lag_s >= 0  # processed after its video time, never before


def test_bad_inputs_give_clear_errors(assets, tmp_path, capsys):
    from flownar.cli import main
    from flownar.narrate import narrate_video

    with pytest.raises(VideoError, match="no such video file"):
        list(read_frames(tmp_path / "missing.mp4"))
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    with pytest.raises(VideoError, match="notes.mp4"):
        list(read_frames(text))
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(assets["video"].read_bytes()[:600])  # truncated: header without the frames
    with pytest.raises(VideoError, match="broken.mp4"):
        list(read_frames(broken))
    with pytest.raises(FlowNarError, match=r"takes frames of \(10, 17\).*gives \(10, 16\)"):
        narrate_video(assets["video"], assets["ckpt_bad"], assets["tower"], None, progress=False)
    with pytest.raises(FlowNarError, match="no config.json"):
        FrameEncoder(tmp_path)
    assert (
        main(["narrate", str(text), "--checkpoint", str(assets["ckpt"]), "--vision", str(assets["tower"]), "--quiet"])
        == 2
    )
    assert "notes.mp4" in capsys.readouterr().err
    assert (
        main(
            [
                "extract-features",
                str(tmp_path / "nope"),
                "--vision",
                str(assets["tower"]),
                "--out",
                str(tmp_path / "root"),
                "--quiet",
            ]
        )
        == 2
    )
    assert "no such video file or folder" in capsys.readouterr().err


def test_narrate_answers_questions_asked_during_the_video(assets, tmp_path, capsys):
    """``flownar narrate --ask``: each question is answered after the first frame at or after its time; answers are
    in the JSON and the subtitles; bad questions are refused before anything is loaded."""
    from flownar.cli import main

    base = ["narrate", str(assets["video"]), "--checkpoint", str(assets["ckpt"]), "--vision", str(assets["tower"])]
    args = [*base, "--out", str(tmp_path), "--quiet", "--max-new-tokens", "3"]
    assert main([*args, "--ask", "1.2:What is held now?", "--ask", "0:What did I just do?"]) == 0
    printed = capsys.readouterr().out
    js = json.loads((tmp_path / f"{assets['video'].stem}.json").read_text())
    assert [(a["frame"], a["question"]) for a in js["answers"]] == [
        (0, "What did I just do?"),
        (3, "What is held now?"),
    ]
    assert "Q: What is held now? A:" in printed
    assert "Q: What did I just do? A:" in (tmp_path / f"{assets['video'].stem}.srt").read_text()
    for bad, why in (
        ("1.0:  ", "an empty question"),
        ("99:What?", "outside the video"),
        ("soon:What?", "SECONDS:QUESTION"),
    ):
        assert main([*args, "--ask", bad]) == 2
        assert why in capsys.readouterr().err


def test_narrate_checks_out_first_and_keeps_the_work_of_a_late_failure(assets, tmp_path, monkeypatch, capsys):
    """issue 28: --out that is a file fails before streaming, in one line naming it; a failure late in the video
    (here the narrator breaks at the 7th frame; a full disk at the end alike) leaves the JSON of what was said."""
    from flownar.cli import main
    from flownar.narrate import narrate_video
    from flownar.stream import Narrator

    a_file = tmp_path / "out.txt"
    a_file.write_text("not a folder")
    argv = ["narrate", str(assets["video"]), "--checkpoint", str(assets["ckpt"]), "--vision", str(assets["tower"])]
    assert main([*argv, "--out", str(a_file), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(a_file) in err[0] and "Traceback" not in err[0], err

    push, seen = Narrator.push, []

    def breaks_late(self, feats):
        if len(seen) == 6:
            raise OSError(28, "No space left on device", "/somewhere/full")
        seen.append(1)
        return push(self, feats)

    monkeypatch.setattr(Narrator, "push", breaks_late)
    out = tmp_path / "late"
    with pytest.raises(OSError):
        narrate_video(assets["video"], assets["ckpt"], assets["tower"], out, progress=False, max_new_tokens=4)
    kept = json.loads((out / (assets["video"].stem + ".json")).read_text())
    assert kept["complete"] is False and kept["narrations"] and kept["narrations"][0]["time"] == 0.0
    seen.clear()
    assert main([*argv, "--out", str(tmp_path / "late2"), "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == "flownar: error: /somewhere/full: No space left on device"
