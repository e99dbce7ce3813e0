"""The world oracle: a non-learned narrator that knows the embedded world's prototypes, for a ceiling row.

It narrates a clip causally, frame by frame, through the same interface as :class:`flownar.stream.Narrator`
(``narrate(frames) -> [NarrationEvent]``, the first and the last frame forced, as the learned systems'), and is
scored by the same code. What it knows and does:

* **When** (nearest prototype): the completion cue is the world's ``effect`` prototype appearing in the central
  tokens of a frame. The detector scores frame ``f`` by the projection of ``mean(central tokens of f) - mean(central
  tokens of f-1)`` on that prototype (the difference removes the scene; the cue's lingering half on ``f+1`` gives a
  negative score there, so it does not fire twice) and speaks when the score passes a threshold fitted on the
  training split (the threshold that maximises frame-level F1 against the card's narration frames).
* **What**: the verb and the noun nearest (dot product) to the mean centre token of the frames since the previous
  narration (at most 8). Where the centre shows a generic prototype ("held" / "grasp") instead of a noun, the
  name comes from **perfect memory**: the data card's segment that ends nearest the narration; the container of
  a take, too.

Only the embedded synthetic data has a card and prototypes; on FlowNar-Data there is no oracle row.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from ..data.layouts import SYNTHETIC_CARD_FILE
from ..data.synth import CENTER, CENTRAL_TOKENS, CONTAINERS, NOUNS, VERBS, SynthConfig, _text, world_prototypes
from ..stream import NarrationEvent, StreamCounters

WORLD_ORACLE = "world-oracle"


def read_card(root) -> dict | None:
    """The synthetic data card of a dataset root, or None on real data."""
    path = Path(root) / SYNTHETIC_CARD_FILE
    return json.loads(path.read_text()) if path.is_file() else None


class WorldOracleNarrator:
    def __init__(self, card: dict, threshold: float | None = None, window: int = 8):
        cfg = card["config"]
        self.fps = float(card["fps"])
        protos = world_prototypes(int(card["seed"]), int(card["feature_dim"]))
        self.effect = torch.from_numpy(protos["effect"])
        self.verbs = torch.from_numpy(np.stack([protos["verbs"][v] for v in VERBS]))  # (V, D)
        nouns = [protos["nouns"][n] for n in NOUNS] + [protos["held"], protos["grasp"]]
        self.nouns = torch.from_numpy(np.stack(nouns))  # (N + 2, D): the last two are the generic prototypes
        self.videos = card["videos"]
        self.window = window
        self.threshold = threshold
        self.config = SynthConfig(**{k: v for k, v in cfg.items() if k in SynthConfig.__dataclass_fields__})
        self.counters = StreamCounters()
        self._clip = None

    # ------------------------------------------------------------------ the detector
    def cue_scores(self, frames: torch.Tensor) -> torch.Tensor:
        """(T,) causal completion-cue score per frame (frame 0 scores 0)."""
        c = frames.float()[:, CENTRAL_TOKENS].mean(1)  # (T, D)
        d = torch.zeros_like(c)
        d[1:] = c[1:] - c[:-1]
        return d @ self.effect / self.effect.norm()

    def fit(self, data, split: str = "train", max_videos: int = 60) -> float:
        """Fit the threshold on ``split``: the score cut that maximises frame-level F1 against the narration
        frames of the card. Returns it."""
        scores, labels = [], []
        for s in data.streams(split)[:max_videos]:
            x = data.load_features(s.video_uid)
            y = np.zeros(len(x), bool)
            for n in s.narrations:
                y[min(max(math.ceil(n.time * self.fps - 1e-6), 0), len(x) - 1)] = True
            scores.append(self.cue_scores(x).numpy())
            labels.append(y)
        s, y = np.concatenate(scores), np.concatenate(labels)
        order = np.argsort(-s)
        tp = np.cumsum(y[order])
        f1 = 2 * tp / (np.arange(1, len(s) + 1) + y.sum())
        self.threshold = float(s[order[int(np.argmax(f1))]])
        return self.threshold

    # ------------------------------------------------------------------ the narrator interface
    def begin_clip(self, clip) -> None:
        """Perfect memory: the card's segments of the clip's video."""
        self._clip = clip
        self.counters = StreamCounters()

    def state_size(self) -> dict:
        return {"tokens": 0}

    def _say(self, frames: torch.Tensor, f: int, since: int) -> str:
        lo = max(since + 1, f - self.window)
        centre = frames[lo : f + 1, CENTER].float().mean(0)  # (D,)
        verb = VERBS[int(torch.argmax(self.verbs @ centre))]
        k = int(torch.argmax(self.nouns @ centre))
        noun, container = (NOUNS[k] if k < len(NOUNS) else None), None
        seg = self._nearest_segment(f)
        if seg is not None:
            if noun is None:  # a generic prototype: the name from perfect memory
                noun = seg["noun"]
            if verb == "take" and seg.get("container") in CONTAINERS and seg["noun"] == noun:
                container = seg["container"]
        return _text(verb, noun or "item", container)

    def _nearest_segment(self, f: int) -> dict | None:
        if self._clip is None or self._clip.video_uid not in self.videos:
            return None
        t = (self._clip.start_frame + f) / self.fps
        segs = self.videos[self._clip.video_uid]["segments"]
        return min(segs, key=lambda s: abs(s["end"] - t)) if segs else None

    def narrate(self, frames: torch.Tensor, progress: bool = False) -> list[NarrationEvent]:
        if self.threshold is None:
            raise RuntimeError("WorldOracleNarrator: call fit(data) first (or pass a threshold)")
        T = int(frames.shape[0])
        score = self.cue_scores(frames)
        events, last = [], -1
        for f in range(T):
            forced = f in (0, T - 1)
            if forced or float(score[f]) >= self.threshold:
                text = self._say(frames, f, last)
                events.append(NarrationEvent(f, text, [], forced=forced, raw_text=text))
                self.counters.narrations += 1
                last = f
            self.counters.frames += 1
        return events
