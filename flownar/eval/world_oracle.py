"""The world oracle: a non-learned narrator that knows the embedded world, for a ceiling row.

It narrates a clip causally, frame by frame, through the same interface as :class:`flownar.stream.Narrator`
(``narrate(frames) -> [NarrationEvent]``, the first and the last frame forced, as the learned systems'), and is
scored by the same code. It knows the world's prototypes and how a frame is made (:mod:`flownar.data.synth`):

* **When: the cue as the world defines it.** The world renders its completion cue in the frame where a narration
  is due (``ceil(end * fps)`` of each segment, :func:`flownar.data.render.narration_frames`); the oracle reads that
  schedule from the card, as it reads the prototypes, and speaks in exactly those frames. A learned narrator must
  find the cue in noise (the one-frame timing probe, ROC AUC ~0.96, says how hard that is); the oracle's timing is
  the ceiling of that task, not a detector of it. (World v3's oracle detected the cue by comparing each frame with
  the previous one, which halved it after a narration one frame earlier; learned systems beat it on F1.)
* **What: only what the world allows.** The (verb, noun) pair of the world's affordances with the highest score,
  the verb read from its token (hands) and the object from its tokens (centre, right), averaged over the last
  frames of the segment (up to four, away from the blend with the next one). Where the centre shows a generic
  prototype ("held" / "grasp") instead of an object, the object comes from **perfect memory**: the data card's
  segment that ends nearest the narration (a learned narrator must have kept what it saw; when two carried items
  could be the one put down, even a perfect memory of the frames cannot tell, and the card can), and so does the
  container of a take.

It is therefore a ceiling by construction: perfect timing, the best reading of the frames a model of the world can
make, perfect memory. Only the embedded synthetic data has a card and
prototypes; on FlowNar-Data there is no oracle row.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from ..data.layouts import SYNTHETIC_CARD_FILE
from ..data.world import AFFORDANCES, CONTAINERS, NOUNS, VERBS, action_text, world_prototypes
from ..stream import NarrationEvent, StreamCounters

WORLD_ORACLE = "world-oracle"
#: part of the oracle's fingerprint: predictions of an earlier oracle are never reused for this one
ORACLE_VERSION = 2


def read_card(root) -> dict | None:
    """The synthetic data card of a dataset root, or None on real data."""
    path = Path(root) / SYNTHETIC_CARD_FILE
    return json.loads(path.read_text()) if path.is_file() else None


class WorldOracleNarrator:
    def __init__(self, card: dict):
        if int(card.get("version", 0)) < 4:
            raise ValueError(f"the world oracle reads world v4 and later; this card is version {card.get('version')}")
        self.fps = float(card["fps"])
        roles = card["token_roles"]
        self.noun_tokens = [roles["noun"], roles["noun_side"]]
        self.verb_token = roles["verb"]
        self.noun_centre = roles["noun"]
        protos = world_prototypes(int(card["seed"]), int(card["feature_dim"]))
        unit = lambda v: torch.from_numpy(v / np.linalg.norm(v))  # noqa: E731
        self.verbs = torch.stack([unit(protos["verbs"][v]) for v in VERBS])  # (V, D)
        self.nouns = torch.stack([unit(protos["nouns"][n]) for n in NOUNS])  # (N, D)
        self.generic = torch.stack([unit(protos["held"]), unit(protos["grasp"])])  # (2, D)
        self.pairs = [(VERBS.index(v), NOUNS.index(n)) for v, n in AFFORDANCES]
        self.videos = card["videos"]
        self.counters = StreamCounters()
        self._clip = None

    # ------------------------------------------------------------------ when
    def cue_frames(self, num_frames: int) -> set[int]:
        """The clip-relative frames where the world rendered its cue: the narration frames of the card's segments
        that end inside the clip."""
        if self._clip is None or self._clip.video_uid not in self.videos:
            return set()
        start = self._clip.start_frame
        ends = [s["end"] for s in self.videos[self._clip.video_uid]["segments"]]
        return {f - start for f in {math.ceil(e * self.fps - 1e-6) for e in ends} if 0 <= f - start < num_frames}

    # ------------------------------------------------------------------ what
    def _say(self, frames: torch.Tensor, f: int, since: int) -> str:
        lo, hi = max(since + 1, f - 4), f - 1  # the segment's last frames, before the blend with the next one
        if hi < lo:
            lo = hi = f
        x = frames[lo : hi + 1].float().mean(0)  # (10, D)
        verb_score = self.verbs @ x[self.verb_token]  # (V,)
        noun_score = self.nouns @ x[self.noun_tokens].sum(0)  # (N,)
        centre = x[self.noun_centre]
        generic = bool((self.generic @ centre).max() > (self.nouns @ centre).max())
        v, n = max(self.pairs, key=lambda p: float(verb_score[p[0]] + noun_score[p[1]]))
        verb, noun, container = VERBS[v], NOUNS[n], None
        seg = self._nearest_segment(f)
        if seg is not None:
            if generic:  # perfect memory: the object the frames do not show
                noun = seg["noun"]
            if verb == "take" and seg.get("container") in CONTAINERS and seg["noun"] == noun:
                container = seg["container"]
        return action_text(verb, noun, container)

    def _nearest_segment(self, f: int) -> dict | None:
        if self._clip is None or self._clip.video_uid not in self.videos:
            return None
        t = (self._clip.start_frame + f) / self.fps
        segs = self.videos[self._clip.video_uid]["segments"]
        return min(segs, key=lambda s: abs(s["end"] - t)) if segs else None

    # ------------------------------------------------------------------ the narrator interface
    def begin_clip(self, clip) -> None:
        """Perfect memory: the card's segments of the clip's video."""
        self._clip = clip
        self.counters = StreamCounters()

    def state_size(self) -> dict:
        return {"tokens": 0}

    def narrate(self, frames: torch.Tensor, progress: bool = False) -> list[NarrationEvent]:
        T = int(frames.shape[0])
        cues = self.cue_frames(T)
        events, last = [], -1
        for f in range(T):
            forced = f in (0, T - 1)
            if forced or f in cues:
                text = self._say(frames, f, last)
                events.append(NarrationEvent(f, text, [], forced=forced and f not in cues, raw_text=text))
                self.counters.narrations += 1
                last = f
            self.counters.frames += 1
        return events
