"""Flash Memory (Flash-VStream-Qwen, ICCV 2025) as a narration memory: a non-parametric, fixed-size read-out of every
frame seen so far, in place of CLAM's learned recurrent state.

What it keeps (per stream):

* a **feature bank** of every frame: its low-resolution feature (one vector: the frame's first token, the CLS of
  FlowNar-Data's CLS + 3x3 layout, or the mean of its tokens) and its high-resolution tokens (all of them). The bank
  grows with the stream and lives on the host, as in the original's realtime build;
* the **Context Synopsis Memory** (CSM): ``clusters`` centroids of the low-resolution features of every frame so
  far, each with its weight (how many frames it stands for) and its members' mean time. Streaming update, as the
  original: the old centroids, weighted by their sizes, are re-clustered together with the new frame (weight 1) by
  weighted k-means (random initial rows from a generator seeded by the frame count, at most ``iters`` iterations,
  tolerance ``tol``, Euclidean distance, an empty cluster refilled with a random row); the centroids are kept
  sorted by mean time.

What it reads out (:meth:`FlashMemory.read`, ``tokens`` vectors, always the same number):

* the **Detail Augmentation Memory** (DAM): for each of the ``detail_frames`` heaviest clusters, the real frame
  whose low-resolution feature is nearest the centroid (L2), and that frame's high-resolution tokens from the bank,
  in time order;
* then the CSM centroids, in time order.

Before ``clusters`` frames have been seen the read-out is padded with zero vectors (at the end of each part) so
that its size never changes (ours: the original's memory has no fixed size at the start).

Positions: the original gives each memory entry the temporal M-RoPE index of its cluster's mean time or its frame
(AM-RoPE). This package's LLM has a 1-D RoPE whose positions are token indices of one stream, so the read-out is
fed as a contiguous block, like CLAM's; only its order (DAM, then CSM, each by time) carries time. This is a
deviation: what AM-RoPE's positions add is not reproduced.

Other deviations from the original (Flash-VStream-Qwen, ``models/compress_functions.py`` and
``models/vstream_qwen2vl_realtime.py``), all deliberate:

* DAM frames are in time order; the original lays them out heaviest cluster first, and their AM-RoPE positions
  carry the time. With a contiguous block the order is what carries time here.
* A cluster's time is the weighted mean of its members' frame times. The original computes that, then replaces it
  by the plain mean of its members' row indices among [old centroids; new unit] before sorting; we keep the former.
* The low-resolution feature is one token of the frame's own encoding (FlowNar-Data stores 10 tokens per frame);
  the original encodes a 2x2-pooled copy of the frames with a second vision pass and clusters that whole map.
  A unit is one frame here, two in the original (Qwen2-VL's temporal patch).
* Training uses the same streaming update as inference (narration is streaming throughout); the original's
  training and offline evaluation cluster each clip once (weights 1), its realtime build streams as here.
* k-means details: the original draws its initial centroids among distinct rows with the unseeded global
  generator, stops when the *sum* of the centroid shifts is below ``tol`` (here the largest), does not re-assign
  after the last update, and with fewer distinct rows than clusters returns those rows with weights reset to 1
  (here coinciding rows simply share a cluster).

The read-out sizes are settings: :data:`EQUAL_TO_CLAM` (10 centroids + 1 retrieved frame of 10 tokens = CLAM's 20
tokens) for the narration system ``flash-vstream``, and :data:`NATIVE_LIKE` (60 centroids + 30 retrieved frames: the
original's default counts of units, 60 + 300 tokens with our 1-token low and 10-token high resolution).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class FlashMemoryConfig:
    clusters: int = 10  # CSM centroids (one low-resolution token each)
    detail_frames: int = 1  # DAM frames (their high-resolution tokens)
    low: str = "cls"  # low-resolution feature of a frame: "cls" (its first token) or "mean" (of its tokens)
    iters: int = 10  # weighted k-means iterations at most (the original's 10)
    tol: float = 1e-4  # stop when no centroid moves more than this (L2)
    seed: int = 0

    def __post_init__(self):
        if self.low not in ("cls", "mean"):
            raise ValueError(f"FlashMemoryConfig.low must be 'cls' or 'mean', got {self.low!r}")
        if self.clusters < 1 or self.detail_frames < 0 or self.detail_frames > self.clusters:
            raise ValueError(f"need clusters >= 1 and 0 <= detail_frames <= clusters, got {self}")

    def tokens(self, frame_tokens: int) -> int:
        """Vectors in one read-out: ``detail_frames`` x ``frame_tokens`` (DAM) + ``clusters`` (CSM)."""
        return self.detail_frames * frame_tokens + self.clusters


EQUAL_TO_CLAM = FlashMemoryConfig(clusters=10, detail_frames=1)
NATIVE_LIKE = FlashMemoryConfig(clusters=60, detail_frames=30)


def weighted_kmeans(
    rows: torch.Tensor, weights: torch.Tensor, k: int, generator: torch.Generator, iters: int = 10, tol: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted k-means of ``rows`` (R, D) with ``weights`` (R,), R > k. Returns (labels (R,), centroids (k, D)):
    each centroid the weighted mean of its rows, the labels those of the last assignment."""
    R = rows.shape[0]
    centroids = rows[torch.randperm(R, generator=generator)[:k]].clone()  # (k, D)
    for _ in range(iters):
        labels = torch.cdist(rows, centroids).argmin(dim=1)  # (R,)
        member = F.one_hot(labels, k).to(rows.dtype) * weights[:, None]  # (R, k)
        mass = member.sum(dim=0)  # (k,)
        new = (member.T @ rows) / mass.clamp_min(1e-12)[:, None]  # (k, D)
        empty = mass == 0
        if empty.any():  # refill an empty cluster with a random row
            new[empty] = rows[torch.randint(R, (int(empty.sum()),), generator=generator)]
        moved = (new - centroids).norm(dim=1).max()
        centroids = new
        if moved <= tol:
            break
    labels = torch.cdist(rows, centroids).argmin(dim=1)
    return labels, centroids


class FlashMemory:
    """One stream's Flash Memory: :meth:`write` a frame ``(N, D)``, :meth:`read` the fixed-size read-out."""

    def __init__(self, config: FlashMemoryConfig, frame_tokens: int, dim: int, device=None):
        self.config, self.frame_tokens, self.dim = config, frame_tokens, dim
        self.device = torch.device(device or "cpu")
        self.centroids = torch.zeros(0, dim, device=self.device)  # (k, D), sorted by mean time
        self.weights = torch.zeros(0, device=self.device)  # (k,) frames each centroid stands for
        self.times = torch.zeros(0, device=self.device)  # (k,) its members' mean frame index
        self._low = torch.zeros(64, dim)  # the bank, on the host: low resolution (T, D) ...
        self._high = torch.zeros(64, frame_tokens, dim)  # ... and high resolution (T, N, D)
        self.frames = 0

    @property
    def bank_bytes(self) -> int:
        """Host bytes of the bank's filled part (grows with the stream)."""
        return self.frames * (1 + self.frame_tokens) * self.dim * 4

    @property
    def state_bytes(self) -> int:
        """Bytes of the CSM (centroids, weights, times): bounded."""
        return (self.centroids.numel() + self.weights.numel() + self.times.numel()) * 4

    def low_res(self, frame: torch.Tensor) -> torch.Tensor:
        return frame[0] if self.config.low == "cls" else frame.mean(dim=0)

    def write(self, frame: torch.Tensor) -> None:
        """Take in one frame's tokens ``(N, D)``: bank it, then re-cluster the CSM with it."""
        frame = frame.detach().float()
        low = self.low_res(frame)
        t = self.frames
        if t == self._low.shape[0]:  # the bank doubles when full (amortised O(1) per frame)
            self._low = torch.cat([self._low, torch.zeros_like(self._low)])
            self._high = torch.cat([self._high, torch.zeros_like(self._high)])
        self._low[t] = low.cpu()
        self._high[t] = frame.cpu()
        self.frames = t + 1
        rows = torch.cat([self.centroids, low.to(self.device)[None]])  # (k + 1, D)
        weights = torch.cat([self.weights, torch.ones(1, device=self.device)])
        times = torch.cat([self.times, torch.full((1,), float(t), device=self.device)])
        k = self.config.clusters
        if rows.shape[0] > k:
            g = torch.Generator().manual_seed(self.config.seed * 1_000_003 + t)
            labels, _ = weighted_kmeans(rows.cpu(), weights.cpu(), k, g, self.config.iters, self.config.tol)
            member = F.one_hot(labels.to(self.device), k).to(rows.dtype) * weights[:, None]  # (R, k)
            mass = member.sum(dim=0)
            keep = mass > 0  # k-means refills empty clusters, so all are kept unless rows coincide
            rows = ((member.T @ rows) / mass.clamp_min(1e-12)[:, None])[keep]
            times = ((member.T @ times) / mass.clamp_min(1e-12))[keep]
            weights = mass[keep]
        order = torch.argsort(times, stable=True)  # CSM in time order
        self.centroids, self.weights, self.times = rows[order], weights[order], times[order]

    def detail_indices(self) -> torch.Tensor:
        """DAM: the bank index of the frame nearest each of the ``detail_frames`` heaviest centroids, in time
        order."""
        n = min(self.config.detail_frames, self.centroids.shape[0])
        if n == 0:
            return torch.zeros(0, dtype=torch.long)
        heaviest = torch.argsort(self.weights, descending=True, stable=True)[:n]
        bank = self._low[: self.frames]  # (T, D)
        idx = torch.cdist(self.centroids[heaviest].cpu(), bank).argmin(dim=1)  # (n,)
        return idx.sort().values

    def read(self) -> torch.Tensor:
        """The read-out ``(tokens, D)``: DAM (``detail_frames`` x N high-resolution tokens), then the CSM
        (``clusters`` centroids), each in time order and zero-padded at its end while fewer exist."""
        c, N = self.config, self.frame_tokens
        out = torch.zeros(c.tokens(N), self.dim, device=self.device)
        idx = self.detail_indices()
        if idx.numel():
            out[: idx.numel() * N] = self._high[idx].reshape(-1, self.dim).to(self.device)
        k = self.centroids.shape[0]
        a = c.detail_frames * N
        out[a : a + k] = self.centroids
        return out


def flash_readouts(config: FlashMemoryConfig, frames: torch.Tensor, read_after: torch.Tensor) -> torch.Tensor:
    """The read-outs a stream would see: ``frames`` (F, N, D) written in order, read after frame ``read_after[b]``
    for each b (B,). Returns (B, tokens, D) (the teacher-forced form of :class:`FlashMemory`)."""
    F_, N, D = frames.shape
    want = {int(i) for i in read_after}
    if any(i < 0 or i >= F_ for i in want):
        raise ValueError(f"read_after {sorted(want)} outside the clip's {F_} frames")
    mem = FlashMemory(config, N, D, device=frames.device)
    got = {}
    for t in range(max(want) + 1 if want else 0):
        mem.write(frames[t])
        if t in want:
            got[t] = mem.read()
    if not want:
        return torch.zeros(0, config.tokens(N), D, device=frames.device)
    return torch.stack([got[int(i)] for i in read_after])
