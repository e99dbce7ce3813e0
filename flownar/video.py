"""Video files to FlowNar features: decode at 2 fps, pad to a square, encode with a SigLIP vision tower.

The recipe of FlowNar-Data (VideoLLM-online's preprocessing, reference section 1.3):

* frames sampled at 2 fps from t = 0 (frame j <-> j / 2 s): for each sample time the first decoded frame at or
  after it (a video slower than 2 fps repeats frames, as ``ffmpeg -r 2`` does);
* bicubic resize of the long side to the tower's image size (384 for ``google/siglip-large-patch16-384``), centred
  on a black square;
* pixels / 255, normalised with mean 0.5 and std 0.5;
* 10 tokens per frame: SigLIP's attention-pooled ``pooler_output`` (token 0), then the patch grid of
  ``last_hidden_state`` average-pooled to 3 x 3 and flattened row-major (tokens 1-9).

Decoding uses PyAV (FFmpeg); the tower is loaded through transformers from a local path (no hub access).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import FlowNarError

VIDEO_SUFFIXES = {".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".mpg", ".mpeg"}


class VideoError(FlowNarError):
    """A video file is missing, unreadable, or has no video stream."""


def _open(path: Path):
    import av

    path = Path(path)
    if not path.is_file():
        raise VideoError(f"{path}: no such video file")
    try:
        container = av.open(str(path))
    except (av.error.InvalidDataError, av.error.FFmpegError, UnicodeDecodeError) as e:
        raise VideoError(f"{path}: not a readable video file ({e})") from e
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: the file has no video stream")
    return container


def video_duration(path: str | Path) -> float:
    """Duration in seconds from the container (0.0 when it does not say)."""
    with _open(Path(path)) as c:
        s = c.streams.video[0]
        if s.duration is not None and s.time_base is not None:
            return float(s.duration * s.time_base)
        return float(c.duration / 1_000_000) if c.duration else 0.0


def square_pad(img, size: int) -> np.ndarray:
    """PIL image -> (size, size, 3) uint8: long side resized to ``size`` (bicubic), centred on black."""
    from PIL import Image

    w, h = img.size
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    img = img.convert("RGB").resize((nw, nh), Image.BICUBIC)
    canvas = Image.new("RGB", (size, size))
    canvas.paste(img, ((size - nw) // 2, (size - nh) // 2))
    return np.array(canvas)  # writable, so torch can take it without a copy warning


def read_frames(path: str | Path, fps: float = 2.0, size: int = 384) -> Iterator[tuple[float, np.ndarray]]:
    """Yield ``(time_s, frame)`` at ``fps`` from t = 0; ``frame`` is (size, size, 3) uint8 RGB."""
    import av

    path = Path(path)
    container = _open(path)
    step = 1.0 / fps
    next_t, j = 0.0, 0
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            t = frame.time if frame.time is not None else 0.0
            if t + 1e-6 < next_t:
                continue
            img = None
            while next_t <= t + 1e-6:  # this frame stands for every sample time it has reached
                img = img if img is not None else square_pad(frame.to_image(), size)
                yield j * step, img
                j += 1
                next_t = j * step
    except av.error.FFmpegError as e:
        raise VideoError(f"{path}: decoding failed after {j} frames ({e})") from e
    finally:
        container.close()
    if j == 0:
        raise VideoError(f"{path}: no frame could be decoded")


class FrameEncoder:
    """A SigLIP vision tower turning frames into (tokens_per_frame = 10, hidden) features: the pooled token, then
    the patch grid average-pooled to 3 x 3.

    Args:
        vision_path: a local folder with a ``SiglipVisionModel`` (or full ``SiglipModel``) checkpoint.
    """

    def __init__(self, vision_path: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32):
        from transformers import SiglipVisionModel

        path = Path(vision_path)
        if not (path / "config.json").is_file():
            raise FlowNarError(f"{path}: no config.json (expected a local SigLIP vision tower checkpoint)")
        try:
            self.model = SiglipVisionModel.from_pretrained(path, local_files_only=True, dtype=dtype).to(device).eval()
        except (OSError, ValueError, KeyError) as e:
            raise FlowNarError(f"{path}: cannot load a SigLIP vision tower ({e})") from e
        cfg = self.model.config
        if not getattr(cfg, "vision_use_head", True):
            raise FlowNarError(
                f"{path}: the tower has no attention-pooling head (vision_use_head=False); "
                "token 0 of FlowNar's features is its pooler_output"
            )
        self.image_size, self.hidden_size = cfg.image_size, cfg.hidden_size
        self.grid = cfg.image_size // cfg.patch_size
        self.pooled_grid = 3  # FlowNar-Data's recipe: 1 pooled token + 3 x 3 grid tokens
        self.device, self.dtype = torch.device(device), dtype
        self.name = path.name

    @property
    def tokens_per_frame(self) -> int:
        return 1 + self.pooled_grid**2

    @torch.inference_mode()
    def encode(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(B, S, S, 3) uint8 RGB at the tower's image size -> (B, 10, hidden) float32."""
        x = torch.as_tensor(frames)
        if x.ndim != 4 or x.shape[-1] != 3 or x.shape[1] != self.image_size or x.shape[2] != self.image_size:
            raise ValueError(f"frames of shape {tuple(x.shape)}; expected (B, {self.image_size}, {self.image_size}, 3)")
        x = x.to(self.device).permute(0, 3, 1, 2).float() / 255.0
        x = ((x - 0.5) / 0.5).to(self.dtype)
        out = self.model(pixel_values=x)
        B, P, D = out.last_hidden_state.shape  # P = grid * grid patches
        grid = out.last_hidden_state.transpose(1, 2).reshape(B, D, self.grid, self.grid)  # (B, D, g, g)
        pooled = (
            F.adaptive_avg_pool2d(grid.float(), self.pooled_grid).flatten(2).transpose(1, 2)
        )  # (B, 9, D), row-major
        return torch.cat([out.pooler_output.float()[:, None], pooled], dim=1)  # (B, 10, D)


def encode_video(
    path: str | Path, encoder: FrameEncoder, fps: float = 2.0, batch_size: int = 16, progress: bool = False
) -> torch.Tensor:
    """All frames of a video -> (T, 10, hidden) float32."""
    from tqdm.auto import tqdm

    feats, batch = [], []
    for _, img in tqdm(
        read_frames(path, fps, encoder.image_size),
        disable=not progress,
        desc=Path(path).name,
        unit="frame",
        leave=False,
    ):
        batch.append(img)
        if len(batch) == batch_size:
            feats.append(encoder.encode(np.stack(batch)))
            batch = []
    if batch:
        feats.append(encoder.encode(np.stack(batch)))
    return torch.cat(feats)


def list_videos(path: str | Path) -> list[Path]:
    """A video file, or the video files (by suffix) in a folder, sorted."""
    path = Path(path)
    if path.is_dir():
        vids = sorted(p for p in path.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
        if not vids:
            raise VideoError(f"{path}: no video files ({', '.join(sorted(VIDEO_SUFFIXES))}) in this folder")
        return vids
    if not path.exists():
        raise VideoError(f"{path}: no such video file or folder")
    return [path]


def _existing_feature_dim(folder: Path, meta: dict) -> tuple[int, Path] | None:
    """The feature dim of a root that already holds features (from one of its files), or None."""
    from .data.features import read_feature_tensor

    for entry in meta.values():
        path = folder / str(entry.get("path", "")) if isinstance(entry, dict) else None
        if path is not None and path.is_file():
            x = read_feature_tensor(path)
            return int(x.shape[-1]), path
    return None


def extract_features(
    videos: str | Path,
    vision_path: str | Path,
    out_root: str | Path,
    layout: str = "ek100",
    fps: float = 2.0,
    batch_size: int = 16,
    device: str = "cpu",
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Encode a video (or every video of a folder) into a FlowNar-Data root: ``features/<folder>/<uid>.pt``
    (bf16, (T, 10, hidden), as released) and ``features_metadata.json`` (merged with an existing one; videos
    already there are skipped unless ``overwrite``). Annotations are the user's to add under ``annotations/``."""
    import json

    from .data.layouts import METADATA_FILE, get_layout

    lay = get_layout(layout)
    out_root = Path(out_root)
    folder = lay.feature_dir(out_root)
    if fps != 2.0:  # the folder name carries the frame rate the readers use
        folder = folder.with_name(folder.name.replace("_2fps_", f"_{fps:g}fps_"))
    folder.mkdir(parents=True, exist_ok=True)
    meta_path = out_root / METADATA_FILE
    meta = {}
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise FlowNarError(f"{meta_path}: not valid JSON ({e}); repair or remove it before adding videos") from e
        if not isinstance(meta, dict):
            raise FlowNarError(f"{meta_path}: expected an object keyed by video id, found {type(meta).__name__}")
    vids = list_videos(videos)
    encoder = FrameEncoder(vision_path, device=device)
    existing = _existing_feature_dim(folder, meta)
    if existing is not None and existing[0] != encoder.hidden_size:
        raise FlowNarError(
            f"{out_root}: holds features of dim {existing[0]} ({existing[1]}) but the tower "
            f"{vision_path} gives dim {encoder.hidden_size}; a root holds one feature size: "
            "use another --out"
        )
    done, skipped = [], []
    for v in vids:
        uid = v.stem
        target = folder / f"{uid}.pt"
        if uid in meta and target.is_file() and not overwrite:
            skipped.append(uid)
            continue
        feats = encode_video(v, encoder, fps, batch_size, progress)  # (T, 10, D)
        tmp = target.with_suffix(".pt.tmp")
        torch.save(feats.to(torch.bfloat16).contiguous(), tmp)
        tmp.replace(target)
        meta[uid] = {"duration": (feats.shape[0] - 1) / fps, "path": target.name}
        meta_path.write_text(json.dumps(meta, indent=1))  # after every video: an interrupted run keeps its work
        done.append(uid)
    return {
        "root": str(out_root),
        "feature_dir": str(folder),
        "encoded": done,
        "skipped": skipped,
        "tower": encoder.name,
        "hidden_size": encoder.hidden_size,
    }
