"""Rendering a simulated video into features ``(T, 10, D)``: span templates blended over the boundaries, the
scene, positions, the completion cue, noise, and the ViT-like mixing across a frame's tokens."""

from __future__ import annotations

import math

import numpy as np

from .kitchen import SynthVideo
from .world import A_POSITION, A_SCENE, CENTRAL_TOKENS, SCENE_DRIFT, SynthConfig, prototype, rng_for

# ----------------------------------------------------------------------------------------------------------------
# Features


def _ar1(rng: np.random.Generator, shape: tuple[int, ...], rho: float) -> np.ndarray:
    """Stationary AR(1) noise along axis 0 with unit variance, float32."""
    e = rng.standard_normal(shape, dtype=np.float32)
    out = np.empty_like(e)
    out[0] = e[0]
    c = np.float32(math.sqrt(1.0 - rho * rho))
    for i in range(1, shape[0]):
        out[i] = rho * out[i - 1] + c * e[i]
    return out


def render_features(video: SynthVideo, protos: dict, cfg: SynthConfig, seed: int) -> np.ndarray:
    """Features of one video, ``(T, 10, D)`` float32, frame ``j`` at time ``j / fps``.

    Each span (action or idle gap) has a constant content template ``(9, D)``; a frame's content is the blend of
    the templates with weights ``sigmoid((t - start) / blur) - sigmoid((t - end) / blur)`` (they sum to 1), so
    content changes smoothly over about +-1 s around every boundary and a very quick action is only partly seen.
    Apart from it: the scene (per-video vector + slow drift), position vectors, the completion cue and, in every
    token, AR(1) + white noise of std ``sqrt(D) / frame_snr`` (a unit prototype's projection has z = frame_snr in
    one frame). The CLS token is the grid mean of both parts (+ its own noise). Each part is then mixed across the
    frame's tokens (``content_mix`` for the content, ``mix_share`` for the rest; see SynthConfig), and everything
    is divided by the expected std so that each dimension has variance ~1.
    """
    rng = rng_for(seed, 1, video.index, 1)
    D, T = cfg.feature_dim, video.num_frames(cfg.fps)
    spans = video.spans
    templates = np.zeros((len(spans), 9, D), dtype=np.float32)  # (K, 9, D)
    for k, span in enumerate(spans):
        for tok, key, amp in span.components:
            templates[k, tok - 1] += amp * prototype(protos, key)
    t = (np.arange(T, dtype=np.float64) / cfg.fps)[:, None]  # (T, 1)
    starts = np.array([s.start for s in spans], dtype=np.float64)
    ends = np.array([s.end for s in spans], dtype=np.float64)
    starts[0], ends[-1] = -np.inf, np.inf  # the first and last spans extend to the video's edges
    sig = lambda z: 0.5 * (1.0 + np.tanh(0.5 * z))  # noqa: E731  (a sigmoid without overflow warnings)
    weights = (sig((t - starts) / cfg.blur_s) - sig((t - ends) / cfg.blur_s)).astype(np.float32)  # (T, K)
    content = np.empty((T, 10, D), dtype=np.float32)
    content[:, 1:] = np.einsum("tk,kgd->tgd", weights, templates)  # (T, 9, D)
    content[:, 0] = content[:, 1:].mean(axis=1)  # CLS: a global summary of the grid
    scene = A_SCENE * rng.standard_normal(D, dtype=np.float32) + SCENE_DRIFT * _ar1(rng, (T, D), 0.98)  # (T, D)
    rest = np.empty((T, 10, D), dtype=np.float32)
    rest[:, 1:] = scene[:, None, :] + A_POSITION * protos["positions"][None]
    rest[:, 0] = rest[:, 1:].mean(axis=1)
    if cfg.cue_amp:  # the completion cue: the action's effect becomes visible in its narration frame
        effect = cfg.cue_amp * protos["effect"]
        for f in narration_frames(video, cfg.fps, T):
            rest[f, CENTRAL_TOKENS] += effect
            if f + 1 < T:
                rest[f + 1, CENTRAL_TOKENS] += cfg.cue_linger * effect
    sigma = math.sqrt(D) / cfg.frame_snr
    rest += sigma * (
        math.sqrt(cfg.ar_share) * _ar1(rng, (T, 10, D), cfg.ar_rho)
        + math.sqrt(1.0 - cfg.ar_share) * rng.standard_normal((T, 10, D), dtype=np.float32)
    )
    x = _mix(content, cfg.content_mix) + _mix(rest, cfg.mix_share)  # ViT-like: tokens carry a share of the frame
    x /= feature_scale(cfg)
    return x


def _mix(x: np.ndarray, share: float) -> np.ndarray:
    """``(1 - share) * token + share * mean over the frame's tokens``, for ``(T, 10, D)``."""
    return (1.0 - share) * x + share * x.mean(axis=1, keepdims=True) if share else x


def narration_frames(video: SynthVideo, fps: float, num_frames: int) -> list[int]:
    """The frame each segment's narration is due in (``ceil(end * fps)``, as the readers place it)."""
    return sorted({min(max(math.ceil(s.end * fps - 1e-6), 0), num_frames - 1) for s in video.segments})


def feature_scale(cfg: SynthConfig) -> float:
    """The expected per-dimension std of a token before scaling, after the mixing: shared parts (scene) keep
    their variance, per-token independent parts (positions, noise, content) shrink by the mixing. The content's
    variance is taken as that of an average token (~0.1 of the sum of the action's squared amplitudes plus the
    rest of the state, ~0.5): an approximation, so the result is ~1, not exactly 1."""

    def keep(a: float) -> float:  # variance share of a per-token independent part after mixing at a
        return (1.0 - a) ** 2 + (2.0 * a * (1.0 - a) + a * a) / 10.0

    sigma2 = cfg.feature_dim / cfg.frame_snr**2
    content = 0.1 * (cfg.noun_amp**2 + cfg.noun_side_amp**2 + cfg.verb_amp**2) + 0.5
    return math.sqrt(
        A_SCENE**2 + SCENE_DRIFT**2 + keep(cfg.mix_share) * (A_POSITION**2 + sigma2) + keep(cfg.content_mix) * content
    )
