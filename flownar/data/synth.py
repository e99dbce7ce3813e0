"""The embedded synthetic dataset: a procedural kitchen written in the exact FlowNar-Data file layout.

FlowNar-Data cannot be downloaded here, so ``write_synthetic_dataset`` writes a dataset root that the same readers
load as the real one (``features_metadata.json``, ``features/<folder>/<uid>.pt``, ``annotations/...``), plus a card
(``flownar_synthetic.json``) holding the generator settings and the ground truth of every video.

The world, briefly (each choice exists to make streaming narration non-trivial in a controlled way):

* A video is a sequence of actions ``(verb, noun)`` in a kitchen with a small state: three containers (fridge,
  drawer, cupboard; open/closed, a queue of items whose front item is visible while open), a counter with four
  visible slots (the peripheral tokens) and off-view clutter, two hands, and switches (tap, hob, kettle).
  Actions come from short scripts (wash at the tap, cut with a knife, cook at the hob, fetch from a container,
  carry an item, ...) so sequences are plausible.
* Durations are EK100-like: shifted lognormal per verb (mean ~4 s, long right tail, at most 40 s), ~3% very quick
  actions (< 0.5 s) so two narrations sometimes share a 0.5-s grid time. A narration is said at the END of its
  action. Videos start with a lead-in and have idle gaps between scripts.
* Long-range dependencies that only memory resolves (about 25-30% of actions take part):
  ``held_item``: "You take the X." shows X; while carried, X is only a generic "held" prototype; the later "You put
  down the X." shows the verb and that generic prototype, never X.
  ``hidden_item``: "You open the cupboard." shows the front item X inside, unnamed; the cupboard is closed and other
  actions happen; later "You take the X from the cupboard." shows the take verb, the cupboard and a generic
  "grasp" prototype, not X. The card's ``depends_on`` is the last earlier segment whose frames show X.
* Features: per frame 10 tokens (0 = CLS, 1..9 = 3x3 grid, row-major). Fixed random prototypes (from the seed)
  for verbs, nouns, "held", "grasp", grid positions; a per-video scene vector with slow drift. The acted-on verb
  and noun sit in the central tokens, counter items in the corners (distractors, mostly never acted on), an open
  container's front item in the top-centre token. Segment contents are blended across boundaries with a sigmoid
  ramp (timing is fuzzy) and every token gets AR(1) plus white noise so that one frame is ambiguous and a few
  frames identify the action. Generated in float32, stored bf16, per-dimension variance ~1.

World v3 (``SYNTH_VERSION`` 3) adds what the first versions lacked for learning *when* to speak:

* **A causal completion cue.** In the frame where an action's narration is due (its end, on the frame grid) the
  action's effect becomes visible: the ``effect`` prototype in the central tokens (``cue_amp``; ``cue_linger`` of
  it remains on the next frame). It is the same for every kind of segment, so *when* does not depend on *how far
  back* the needed memory lies. Its size is set so that a linear probe on one frame is good but not certain
  (``flownar.data.probes.completion_probe``: AUC ~0.97 on the default profile).
* **ViT-like token mixing.** Every token becomes ``(1 - mix_share) * itself + mix_share * the frame's token
  mean``, so what a frame shows is partly in every token (the decision is read at the last one) while local
  detail still matters (a corner object reaches another token at a tenth of its share).
* **Frame-grid clock.** Actions start and end on frames, so a narration's time is its frame's (the scoring
  measures timing, not the grid's rounding); the very quick actions last one frame.
* **The paper's length regime.** Lengths are drawn in units of a training cap ``cap_s`` (the original trains on
  the first ``max_num_frames`` = 10 minutes of each video and narrates whole validation videos): lognormal, mean
  near the cap and a long tail to ~5x; the validation lengths are the distribution's quantiles, so every seed has
  streams beyond 2x the cap. Training cuts at the cap (``flownar.profiles.Profile.training_cap``).
* Every ground-truth segment carries its memory gap (``gap_segments``, ``gap_s``) in the card.

Everything random comes from ``numpy.random.default_rng(SeedSequence(seed, spawn_key=...))``: prototypes from the
seed alone, video ``i``'s world, features and annotation noise from (seed, i), so the world of video ``i`` is the
same in every layout and the same (seed, profile, layout) gives byte-identical files.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import NormalDist

import numpy as np
import torch

from .layouts import METADATA_FILE, SYNTHETIC_CARD_FILE, get_layout

SYNTH_VERSION = 4  # bump when the generated data changes (prepare.py rewrites embedded data on a mismatch)


# ----------------------------------------------------------------------------------------------------------------
# Profiles


@dataclass(frozen=True)
class SynthConfig:
    n_train: int
    n_val: int
    cap_s: float  # the training cap (the original's max_num_frames: its first 10 minutes), scaled to this world
    feature_dim: int
    fps: float = 2.0
    tokens_per_frame: int = 10  # 1 CLS + 3x3 grid (the layout's "1+3x3"); nothing else is supported
    # video lengths in units of the cap: length_min + lognormal(log(length_median), length_sigma), at most
    # length_max; validation lengths are the distribution's quantiles (i + 0.5) / n_val, shuffled, so every draw
    # has the same spread and its long tail (EK100: a mean near the 10-minute cap, a tail to several times it)
    length_min: float = 0.3
    length_median: float = 0.5  # of the lognormal part
    length_sigma: float = 1.1
    length_max: float = 6.0
    # action durations: 0.8 s + verb_factor * lognormal(mu, sigma), at most max_action_s; some very quick ones
    action_mu: float = 1.0
    action_sigma: float = 1.1
    max_action_s: float = 40.0
    quick_rate: float = 0.03
    idle_rate: float = 0.3  # chance of an idle gap between two scripts
    # features: SNR of a unit-amplitude prototype in one token of one frame (projection z-score)
    frame_snr: float = 2.5
    ar_share: float = 0.1  # share of the noise variance that is AR(1) (temporally correlated; v3: 0.35)
    ar_rho: float = 0.85
    blur_s: float = 0.3  # sigmoid scale (s) of the boundary ramp; the blend spans about +-1 s
    # what the action shows (amplitudes in prototype units; world v4: the object owns the centre token, the verb
    # the hands token, so neither hides the other)
    noun_amp: float = 2.0  # the acted-on object (or the generic "held" / "grasp") in the centre token
    noun_side_amp: float = 1.0  # the object again in the right token
    verb_amp: float = 1.5  # the verb in the hands token
    counter_amp: float = 0.3  # counter items in the corner tokens (distractors; v3: 0.6)
    # the completion cue: in the frame where an action's narration is due, its effect becomes visible (the
    # amplitude added to each central token, in prototype units; cue_linger of it remains on the next frame)
    cue_amp: float = 0.6
    cue_linger: float = 0.5  # the share of the cue still visible in the next frame
    # ViT-like mixing: every token becomes (1 - mix) * itself + mix * the frame's token mean. The cue, the scene and
    # the noise are mixed at mix_share: the completion cue is a global event, readable at a frame's last token
    # where the decision is read (world v3: 0.7 for everything; a full-context model then had to route the cue
    # from the central tokens within the frame, and often did not learn to). What the action shows (its object,
    # verb, the container, counter items) is mixed at content_mix, so local detail stays mostly where it is
    mix_share: float = 0.9
    content_mix: float = 0.3
    # memory gaps, in segments, drawn log-uniformly in [lo, hi]: how long a taken item is carried before it is put
    # down (carry, fetch), and how long after a container showed an item the item is taken out of it (reveal)
    carry_gap: tuple[int, int] = (2, 40)
    fetch_gap: tuple[int, int] = (2, 20)
    retrieve_gap: tuple[int, int] = (2, 60)
    retrieved_gap: tuple[int, int] = (1, 8)  # a retrieved item is put down after this many segments
    # annotation noise of the second pass / annotator (Ego4D, EgoExo4D)
    jitter_s: float = 0.5
    drop_rate: float = 0.05
    paraphrase_rate: float = 0.15
    invisible_rate: float = 0.10  # EgoExo4D: extra descriptions with ego_visible = False
    summary_share: float = 0.5  # Ego4D segment summaries tile each val video with windows of this many caps

    def __post_init__(self):
        if self.tokens_per_frame != 10:
            raise ValueError(f"tokens_per_frame must be 10 (1 CLS + 3x3 grid), got {self.tokens_per_frame}")
        if not (0 < self.length_min < self.length_max):
            raise ValueError(f"need 0 < length_min <= length_max, got {self.length_min}, {self.length_max}")
        if self.cap_s * self.length_min < 10.0:
            raise ValueError(
                f"the shortest video (cap_s * length_min = {self.cap_s * self.length_min:g} s) must be >= 10 s"
            )
        for name in ("mix_share", "content_mix"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("carry_gap", "fetch_gap", "retrieve_gap", "retrieved_gap"):
            lo, hi = getattr(self, name)
            if not 1 <= lo <= hi:
                raise ValueError(f"{name} must be (lo, hi) with 1 <= lo <= hi, got {getattr(self, name)}")

    @property
    def n_videos(self) -> int:
        return self.n_train + self.n_val

    @property
    def cap_frames(self) -> int:
        """The training cap in frames (``max_num_frames`` of the profile's training)."""
        return int(round(self.cap_s * self.fps))

    @property
    def summary_window_s(self) -> float:
        return self.summary_share * self.cap_s


SYNTH_PROFILES: dict[str, SynthConfig] = {
    # seconds to write; for tests and smoke runs
    "smoke": SynthConfig(
        n_train=8,
        n_val=4,
        cap_s=40.0,
        feature_dim=32,
        length_min=0.5,
        length_median=0.7,
        length_sigma=0.4,
        length_max=2.5,
    ),
    # the embedded default used for CPU training
    "default": SynthConfig(n_train=160, n_val=96, cap_s=60.0, feature_dim=64),
}


def synth_config(profile: str) -> SynthConfig:
    if profile not in SYNTH_PROFILES:
        raise ValueError(f"unknown synthetic profile {profile!r}; expected one of {sorted(SYNTH_PROFILES)}")
    return SYNTH_PROFILES[profile]


# ----------------------------------------------------------------------------------------------------------------
# Vocabulary and affordances

VERBS = [
    "take",
    "put down",
    "open",
    "close",
    "wash",
    "dry",
    "cut",
    "peel",
    "stir",
    "pour",
    "turn on",
    "turn off",
    "fill",
    "wipe",
]
CONTAINERS = ["fridge", "drawer", "cupboard"]
SWITCHES = ["tap", "hob", "kettle"]
UTENSILS = ["knife", "spoon", "fork", "plate", "bowl", "cup", "glass", "pan", "pot", "lid", "board"]
FOODS = ["onion", "tomato", "carrot", "potato", "pepper", "garlic", "cheese", "bread"]
OTHERS = ["sponge", "towel", "jar", "milk", "oil", "butter"]
NOUNS = CONTAINERS + ["tap", "hob", "counter", "kettle"] + UTENSILS + FOODS + OTHERS
PORTABLE = ["kettle"] + UTENSILS + FOODS + OTHERS
WASHABLE = [
    "knife",
    "spoon",
    "fork",
    "plate",
    "bowl",
    "cup",
    "glass",
    "pan",
    "pot",
    "lid",
    "board",
    "tomato",
    "carrot",
    "potato",
    "pepper",
]
DRYABLE = ["knife", "spoon", "fork", "plate", "bowl", "cup", "glass", "pan", "pot", "lid", "board"]
CUTTABLE = FOODS
PEELABLE = ["onion", "carrot", "potato", "garlic"]
STIRRABLE = ["pan", "pot", "bowl"]
POURABLE = ["milk", "oil", "kettle"]
FILLABLE = ["kettle", "pot", "glass", "cup"]
WIPEABLE = ["counter", "board"]

# duration factor per verb (quick grasps vs. long manipulations)
VERB_DURATION = {
    "take": 0.55,
    "put down": 0.45,
    "open": 0.5,
    "close": 0.4,
    "wash": 1.6,
    "dry": 1.2,
    "cut": 1.8,
    "peel": 2.0,
    "stir": 1.6,
    "pour": 1.0,
    "turn on": 0.35,
    "turn off": 0.35,
    "fill": 1.3,
    "wipe": 1.4,
}
# second-pass paraphrases (Ego4D second annotation pass, EgoExo4D second annotator)
PARAPHRASES = {
    "take": "pick up",
    "put down": "set down",
    "turn on": "switch on",
    "turn off": "switch off",
    "wash": "rinse",
    "cut": "slice",
    "close": "shut",
    "wipe": "clean",
}

# token layout: 0 = CLS; grid tokens 1..9 row-major (1 2 3 / 4 5 6 / 7 8 9)
CLS_TOKEN = 0
CENTER, TOP, LEFT, RIGHT, HANDS = 5, 2, 4, 6, 8
CENTRAL_TOKENS = [TOP, LEFT, CENTER, RIGHT, HANDS]  # the cross of the grid: where the action happens
CORNER_TOKENS = [1, 3, 7, 9]  # peripheral: the counter's four visible slots
# amplitudes (in prototype units) of the content that is not the action's own (the action's are in SynthConfig)
A_CONTAINER = 1.0  # an open / accessed container in the left token
A_REVEAL = 1.5  # the front item of an open container in the top token
A_HELD = 0.5  # each carried item, as the generic "held" prototype in the hands token
A_SCENE = 0.5  # per-video scene vector in every token
A_POSITION = 0.3  # fixed per-position vectors
SCENE_DRIFT = 0.3  # std of the slow scene drift (AR(1), rho 0.98)


def _text(verb: str, noun: str, container: str | None = None) -> str:
    return f"You {verb} the {noun}" + (f" from the {container}." if container else ".")


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


# ----------------------------------------------------------------------------------------------------------------
# Prototypes


def world_prototypes(seed: int, feature_dim: int) -> dict:
    """The fixed prototype vectors of a seed (shared by all videos and splits), float32, each (D,) with per-dim
    variance 1 (norm ~ sqrt(D)): ``{"verbs": {verb: v}, "nouns": {noun: v}, "held": v, "grasp": v,
    "positions": (9, D) array}``."""
    rng = _rng(seed, 0)
    D = feature_dim
    draw = lambda: rng.standard_normal(D).astype(np.float32)  # noqa: E731
    return {
        "verbs": {v: draw() for v in VERBS},
        "nouns": {n: draw() for n in NOUNS},
        "held": draw(),
        "grasp": draw(),
        "positions": rng.standard_normal((9, D)).astype(np.float32),
        "effect": _rng(seed, 6).standard_normal(D).astype(np.float32),  # the completion cue (world v3)
    }


def _proto(protos: dict, key: str) -> np.ndarray:
    kind, _, name = key.partition(":")
    if kind == "verb":
        return protos["verbs"][name]
    if kind == "noun":
        return protos["nouns"][name]
    return protos[key]  # "held" / "grasp"


# ----------------------------------------------------------------------------------------------------------------
# The world of one video


@dataclass
class Segment:
    """One narrated action (the card's ground truth)."""

    start: float
    end: float
    verb: str
    noun: str
    text: str
    kind: str  # "local" | "held_item" | "hidden_item"
    depends_on: int | None  # index of the earlier segment whose frames last showed the noun
    visible: list[str]  # nouns whose identity is visible in this segment's frames
    container: str | None = None
    held: list[str] = field(default_factory=list)  # items in hand during the action
    # how far back the memory this narration needs lies: segments and seconds from the end of ``depends_on`` to
    # this segment's end (None for local segments). The narration's timing cue is the same for every kind.
    gap_segments: int | None = None
    gap_s: float | None = None

    def card(self) -> dict:
        return asdict(self)


@dataclass
class Span:
    """A stretch of time with constant content: an action or an idle gap. ``components`` are
    (grid token, prototype key, amplitude)."""

    start: float
    end: float
    components: list[tuple[int, str, float]]


@dataclass
class SynthVideo:
    index: int
    duration: float  # seconds, a multiple of 1/fps; T = duration * fps + 1 frames
    segments: list[Segment]
    spans: list[Span]  # contiguous, covering [0, duration]

    def num_frames(self, fps: float) -> int:
        return int(round(self.duration * fps)) + 1


class _OutOfTime(Exception):
    pass


class _Kitchen:
    """The scripted world: state + scripts that emit actions. Every take of a carried item creates an obligation to
    put it down later; a "reveal" creates an obligation to take the seen item out of its closed container later."""

    def __init__(self, rng: np.random.Generator, cfg: SynthConfig, duration: float):
        self.rng, self.cfg, self.duration = rng, cfg, duration
        # the world's clock ticks with the frames (v3): every action starts and ends on a frame, so a narration's
        # time is exactly its frame's and the scoring measures timing, not the grid's rounding
        self.limit = self.tick(duration - float(rng.uniform(1.0, 3.0)))  # actions end before this (a short tail)
        self.t = self.tick(float(rng.uniform(1.0, 4.0)))  # lead-in
        self.segments: list[Segment] = []
        self.spans: list[Span] = []
        self.last_seen: dict[str, int] = {}  # noun -> last segment index whose frames show it
        self.pending: list[tuple[int, str, str]] = []  # (due segment index, "put_down" | "retrieve", item)
        self.reserved: set[str] = set()  # items bound to a pending obligation
        self.on = {s: False for s in SWITCHES}
        self.held: list[str] = []
        self.open: str | None = None  # at most one container open at a time
        # initial placement: each present item is in exactly one place. World v4: the containers are filled from
        # every portable item (no container gives its item away), the rest is on the counter or absent
        # (the knife, which every cut needs, and the kettle are always somewhere)
        pool = [str(x) for x in rng.permutation([x for x in PORTABLE if x not in ("kettle", "knife")])]
        pool.insert(int(rng.integers(12)), "knife")
        self.inside: dict[str, list[str]] = {}
        for c in CONTAINERS:
            k = int(rng.integers(2, 5))
            self.inside[c], pool = pool[:k], pool[k:]
        k = int(rng.integers(5, 9))
        counter = (["kettle"] + pool)[:k]
        counter = [counter[i] for i in rng.permutation(len(counter))]
        self.slots: list[str | None] = counter[:4]  # the four visible counter slots (corner tokens)
        self.offview: list[str] = counter[4:]  # further clutter, out of view

    # -------------------------------------------------------------------- helpers
    def visible_counter(self) -> list[str]:
        return [x for x in self.slots if x is not None]

    def free_hand(self) -> bool:
        return len(self.held) < 2

    def choice(self, items):
        items = list(items)
        return items[int(self.rng.integers(len(items)))] if items else None

    def gap(self, bounds: tuple[int, int]) -> int:
        """A memory gap in segments, log-uniform in [lo, hi] (as many long gaps per decade as short ones), at
        most the segments the video has time left for (~5 s each), so that the obligation is served."""
        lo, hi = bounds
        room = int((self.limit - self.t) / 5.0) - 1
        return max(lo, min(hi, room, int(math.exp(self.rng.uniform(math.log(lo), math.log(hi + 1))))))

    def state_components(self) -> list[tuple[int, str, float]]:
        amp = self.cfg.counter_amp
        comps = [(tok, f"noun:{x}", amp) for tok, x in zip(CORNER_TOKENS, self.slots) if x is not None]
        if self.open is not None:
            comps.append((LEFT, f"noun:{self.open}", A_CONTAINER))
            if self.inside[self.open]:
                comps.append((TOP, f"noun:{self.inside[self.open][0]}", A_REVEAL))
        comps += [(HANDS, "held", A_HELD) for _ in self.held]
        return comps

    def tick(self, seconds: float) -> float:
        """The first frame time at or after ``seconds`` (at least one frame after the current time)."""
        fps = self.cfg.fps
        return round(max(math.ceil(seconds * fps - 1e-6), round(getattr(self, "t", 0.0) * fps) + 1) / fps, 4)

    def duration_of(self, verb: str) -> float:
        cfg, rng = self.cfg, self.rng
        if rng.random() < cfg.quick_rate:
            return float(rng.uniform(0.25, 0.45))
        d = 0.8 + VERB_DURATION[verb] * float(rng.lognormal(cfg.action_mu, cfg.action_sigma))
        return min(d, cfg.max_action_s)

    def idle(self, seconds: float) -> None:
        end = min(self.tick(self.t + seconds), self.limit)
        if end > self.t:
            self.spans.append(Span(self.t, end, self.state_components()))
            self.t = end

    # -------------------------------------------------------------------- the one place actions are emitted
    def act(
        self, verb: str, noun: str, kind: str = "local", container: str | None = None, generic: str | None = None
    ) -> int:
        """Emit an action and update the state. The verb is shown in the hands token, the object in the centre
        and right tokens; ``generic`` ("held" for a put-down, "grasp" for a hidden retrieval) replaces the object
        in the centre and leaves the right token empty: the object's identity is then not in the frames."""
        cfg = self.cfg
        end = self.tick(self.t + self.duration_of(verb))
        if end > self.limit:
            raise _OutOfTime
        idx = len(self.segments)
        depends_on = self.last_seen.get(noun) if kind != "local" else None
        held_before = list(self.held)
        if verb == "open":  # frames show the container opening and what is inside
            self.open = noun
        comps = self.state_components()
        comps.append((HANDS, f"verb:{verb}", cfg.verb_amp))
        if generic is None:
            comps += [(CENTER, f"noun:{noun}", cfg.noun_amp), (RIGHT, f"noun:{noun}", cfg.noun_side_amp)]
        else:
            comps.append((CENTER, generic, cfg.noun_amp))
        if container is not None and self.open != container:
            comps.append((LEFT, f"noun:{container}", A_CONTAINER))
        visible = sorted({key[5:] for _, key, _ in comps if key.startswith("noun:")})
        for x in visible:
            self.last_seen[x] = idx
        seg = Segment(
            self.t, end, verb, noun, _text(verb, noun, container), kind, depends_on, visible, container, held_before
        )
        if depends_on is not None:
            seg.gap_segments = idx - depends_on
            seg.gap_s = round(end - self.segments[depends_on].end, 2)
        self.segments.append(seg)
        self.spans.append(Span(self.t, end, comps))
        self.t = end
        self._update(verb, noun, container)
        self._drift_clutter()
        return idx

    def _update(self, verb: str, noun: str, container: str | None) -> None:
        if verb == "take":
            if container is not None:
                self.inside[container].remove(noun)
            elif noun in self.slots:
                self.slots[self.slots.index(noun)] = None
            self.held.append(noun)
        elif verb == "put down":
            self.held.remove(noun)
            empty = [i for i, x in enumerate(self.slots) if x is None]
            if empty:
                self.slots[empty[int(self.rng.integers(len(empty)))]] = noun
            else:
                self.offview.append(noun)
        elif verb == "close":
            self.open = None
        elif verb == "turn on":
            self.on[noun] = True
        elif verb == "turn off":
            self.on[noun] = False

    def _drift_clutter(self) -> None:
        """Slowly changing clutter: now and then a visible counter item leaves the view and another comes in."""
        if self.rng.random() < 0.08 and self.offview:
            i = int(self.rng.integers(4))
            if self.slots[i] is None or self.slots[i] not in self.reserved:
                incoming = self.offview.pop(int(self.rng.integers(len(self.offview))))
                if self.slots[i] is not None:
                    self.offview.append(self.slots[i])
                self.slots[i] = incoming

    # -------------------------------------------------------------------- obligations
    def take(self, noun: str, container: str | None = None, gap: tuple[int, int] | None = None) -> int:
        """Take ``noun`` (visible: a local segment) and, unless ``gap`` is None, carry it: its put-down is due
        ``gap`` segments later and shows only the generic "held" prototype (a held_item segment)."""
        idx = self.act("take", noun, container=container)
        if gap is not None:
            self.pending.append((len(self.segments) - 1 + self.gap(gap), "put_down", noun))
            self.reserved.add(noun)
        return idx

    def serve_obligations(self) -> None:
        """Emit the due obligations (all of them when the video is about to end)."""
        ending = self.limit - self.t < 12.0
        for ob in sorted(self.pending):
            due, what, item = ob
            if due > len(self.segments) and not ending:
                continue
            if what == "put_down":
                self.pending.remove(ob)
                self.reserved.discard(item)
                self.act("put down", item, kind="held_item", generic="held")
            elif what == "retrieve":
                container = next(c for c, items in self.inside.items() if item in items)
                if not self.free_hand() or self.open is not None:
                    continue  # retried after the next script
                self.pending.remove(ob)
                self.act("take", item, kind="hidden_item", container=container, generic="grasp")
                self.pending.append((len(self.segments) - 1 + self.gap(self.cfg.retrieved_gap), "put_down", item))

    # -------------------------------------------------------------------- scripts (return False when infeasible)
    def usable(self, nouns) -> list[str]:
        """Visible, not reserved items among ``nouns`` (counter slots)."""
        return [x for x in self.visible_counter() if x in nouns and x not in self.reserved]

    def closed_containers(self) -> list[str]:
        """Containers that can be opened now (none is open) and hold an item no obligation is bound to."""
        if self.open is not None:
            return []
        return [c for c in CONTAINERS if any(x not in self.reserved for x in self.inside[c])]

    def _bring_to_front(self, c: str, item: str) -> None:
        """Reach past the front of container ``c``'s queue: ``item`` becomes the front (visible) item."""
        self.inside[c].remove(item)
        self.inside[c].insert(0, item)

    def script_carry(self) -> bool:
        """Take a counter item and carry it for a while (a held_item dependency)."""
        x = self.choice(self.usable(PORTABLE))
        if x is None or not self.free_hand():
            return False
        self.take(x, gap=self.cfg.carry_gap)
        return True

    def script_fetch(self) -> bool:
        """Open a container, take an item from it (visible), maybe pour it, close the container; the item is
        carried and put down later."""
        c = self.choice(self.closed_containers())
        if c is None or not self.free_hand():
            return False
        x = self.choice([x for x in self.inside[c] if x not in self.reserved])
        self._bring_to_front(c, x)
        self.act("open", c)
        self.take(x, container=c, gap=self.cfg.fetch_gap)
        if x in POURABLE and self.rng.random() < 0.5:
            self.act("pour", x)
        self.act("close", c)
        return True

    def script_reveal(self) -> bool:
        """Open a container (its front item X is seen, not named), close it; X is taken out later (hidden_item).
        The container's queue then moves on, so the next opening shows another item."""
        c = self.choice(self.closed_containers())
        if c is None:
            return False
        x = self.choice([x for x in self.inside[c] if x not in self.reserved])
        self._bring_to_front(c, x)
        self.act("open", c)
        self.reserved.add(x)
        self.pending.append((len(self.segments) + self.gap(self.cfg.retrieve_gap), "retrieve", x))
        self.act("close", c)
        self.inside[c].remove(x)
        self.inside[c].append(x)
        return True

    def script_wash(self) -> bool:
        """At the tap: wash or fill one or two things, turn the tap off."""
        targets = self.usable(WASHABLE + FILLABLE)
        if not targets:
            return False
        self.act("turn on", "tap")
        for _ in range(int(self.rng.integers(1, 3))):
            x = self.choice(self.usable(WASHABLE + FILLABLE))
            if x is None:
                break
            verb = "fill" if x in FILLABLE and (x not in WASHABLE or self.rng.random() < 0.5) else "wash"
            self.act(verb, x)
        self.act("turn off", "tap")
        if self.rng.random() < 0.4 and self.usable(DRYABLE):
            self.act("dry", self.choice(self.usable(DRYABLE)))
        return True

    def script_cut(self) -> bool:
        """Get the knife (counter or a container), cut / peel food on the counter, put the knife down (in view:
        world v4 makes this put-down a local segment, so no memory segment is answered by the knife habit)."""
        foods = self.usable(CUTTABLE)
        if not foods or "knife" in self.reserved or not self.free_hand():
            return False
        if "knife" in self.visible_counter():
            self.take("knife")
        else:
            c = next((c for c in self.closed_containers() if "knife" in self.inside[c]), None)
            if c is None:
                return False
            self._bring_to_front(c, "knife")
            self.act("open", c)
            self.take("knife", container=c)
            self.act("close", c)
        for _ in range(int(self.rng.integers(1, 4))):
            food = self.choice(self.usable(CUTTABLE))
            if food is None:
                break
            self.act("peel" if food in PEELABLE and self.rng.random() < 0.4 else "cut", food)
        self.act("put down", "knife")
        return True

    def script_cook(self) -> bool:
        """At the hob: turn it on, stir (pour something in), turn it off."""
        pots = self.usable(STIRRABLE)
        if not pots:
            return False
        self.act("turn on", "hob")
        self.act("stir", self.choice(pots))
        liquid = next((x for x in self.held if x in POURABLE and x != "kettle"), None)
        if liquid is not None:
            self.act("pour", liquid)
        if self.rng.random() < 0.5:
            self.act("stir", self.choice(self.usable(STIRRABLE)) or self.choice(pots))
        self.act("turn off", "hob")
        return True

    def script_single(self) -> bool:
        """One stand-alone action: wipe, dry, pour a held liquid, boil the kettle."""
        options = [("wipe", x) for x in self.usable(WIPEABLE)] + [("wipe", "counter")]
        options += [("dry", x) for x in self.usable(DRYABLE)]
        options += [("pour", x) for x in self.held if x in POURABLE]
        if "kettle" in self.visible_counter():
            options.append(("turn off" if self.on["kettle"] else "turn on", "kettle"))
        verb, noun = options[int(self.rng.integers(len(options)))]
        self.act(verb, noun)
        return True

    # relative frequency of the scripts (carry / fetch / reveal create the long-range dependencies; world v4 draws
    # them more often so that hundreds of memory segments are there to measure)
    SCRIPTS = [
        ("carry", 3.0),
        ("fetch", 1.5),
        ("reveal", 4.5),
        ("wash", 1.2),
        ("cut", 1.2),
        ("cook", 1.0),
        ("single", 1.0),
    ]

    def run(self) -> None:
        names = [n for n, _ in self.SCRIPTS]
        p = np.array([w for _, w in self.SCRIPTS])
        p = p / p.sum()
        self.spans.append(Span(0.0, self.t, self.state_components()))  # lead-in: the scene before any action
        try:
            while True:
                self.serve_obligations()
                if self.segments and self.rng.random() < self.cfg.idle_rate:
                    self.idle(float(self.rng.uniform(0.5, 3.0)))
                for _ in range(20):  # pick a feasible script ("single" always is)
                    if getattr(self, f"script_{names[int(self.rng.choice(len(names), p=p))]}")():
                        break
        except _OutOfTime:
            pass
        if self.t < self.duration:  # tail
            self.spans.append(Span(self.t, self.duration, self.state_components()))


def _lognormal_quantile(q: float, median: float, sigma: float) -> float:
    return math.exp(NormalDist(math.log(median), sigma).inv_cdf(q))


def video_length(cfg: SynthConfig, seed: int, index: int) -> float:
    """Length of video ``index`` in units of the training cap. Train videos: a lognormal draw. Validation videos:
    the distribution's quantiles ``(i + 0.5) / n_val`` in a seeded order, so the long tail is always there."""
    if index < cfg.n_train:
        r = float(_rng(seed, 1, index, 4).lognormal(math.log(cfg.length_median), cfg.length_sigma))
    else:
        order = _rng(seed, 5).permutation(cfg.n_val)
        q = (int(order[index - cfg.n_train]) + 0.5) / cfg.n_val
        r = _lognormal_quantile(q, cfg.length_median, cfg.length_sigma)
    return min(cfg.length_min + r, cfg.length_max)


def simulate_video(cfg: SynthConfig, seed: int, index: int) -> SynthVideo:
    """The world of video ``index`` (train videos first, then val): its duration, actions and content spans.
    Depends on (seed, index, cfg) only, never on the layout."""
    rng = _rng(seed, 1, index, 0)
    seconds = cfg.cap_s * video_length(cfg, seed, index)
    duration = math.floor(seconds * cfg.fps) / cfg.fps  # T = duration * fps + 1 frames, frame j <-> j / fps
    kitchen = _Kitchen(rng, cfg, duration)
    kitchen.run()
    return SynthVideo(index, duration, kitchen.segments, kitchen.spans)


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
    rng = _rng(seed, 1, video.index, 1)
    D, T = cfg.feature_dim, video.num_frames(cfg.fps)
    spans = video.spans
    templates = np.zeros((len(spans), 9, D), dtype=np.float32)  # (K, 9, D)
    for k, span in enumerate(spans):
        for tok, key, amp in span.components:
            templates[k, tok - 1] += amp * _proto(protos, key)
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
    x /= _feature_scale(cfg)
    return x


def _mix(x: np.ndarray, share: float) -> np.ndarray:
    """``(1 - share) * token + share * mean over the frame's tokens``, for ``(T, 10, D)``."""
    return (1.0 - share) * x + share * x.mean(axis=1, keepdims=True) if share else x


def narration_frames(video: SynthVideo, fps: float, num_frames: int) -> list[int]:
    """The frame each segment's narration is due in (``ceil(end * fps)``, as the readers place it)."""
    return sorted({min(max(math.ceil(s.end * fps - 1e-6), 0), num_frames - 1) for s in video.segments})


def _feature_scale(cfg: SynthConfig) -> float:
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


# ----------------------------------------------------------------------------------------------------------------
# Annotations


def _first_pass(video: SynthVideo) -> list[dict]:
    """The reference narrations: one per action, said at its end."""
    return [{"time": s.end, "text": s.text} for s in video.segments]


def _second_pass(video: SynthVideo, cfg: SynthConfig, rng: np.random.Generator) -> list[dict]:
    """Another annotator: times jittered, a few narrations dropped, some verbs paraphrased."""
    out = []
    for s in video.segments:
        drop, jitter, para = rng.random(), rng.uniform(-cfg.jitter_s, cfg.jitter_s), rng.random()
        if drop < cfg.drop_rate:
            continue
        text = s.text
        if para < cfg.paraphrase_rate and s.verb in PARAPHRASES:
            text = _text(PARAPHRASES[s.verb], s.noun, s.container)
        out.append({"time": round(min(max(s.end + jitter, 0.0), video.duration), 2), "text": text})
    out.sort(key=lambda n: n["time"])
    return out


AFFORDANCES = (
    [("take", x) for x in PORTABLE]
    + [("put down", x) for x in PORTABLE]
    + [(v, c) for v in ("open", "close") for c in CONTAINERS]
    + [("wash", x) for x in WASHABLE]
    + [("dry", x) for x in DRYABLE]
    + [("cut", x) for x in CUTTABLE]
    + [("peel", x) for x in PEELABLE]
    + [("stir", x) for x in STIRRABLE]
    + [("pour", x) for x in POURABLE]
    + [("fill", x) for x in FILLABLE]
    + [("wipe", x) for x in WIPEABLE]
    + [(v, s) for v in ("turn on", "turn off") for s in SWITCHES]
)


def _egoexo_descriptions(
    narrations: list[dict], video: SynthVideo, cfg: SynthConfig, rng: np.random.Generator
) -> list[dict]:
    """EgoExo4D descriptions: the narrations (ego-visible) plus ~invisible_rate of descriptions of actions the
    egocentric camera does not see (``ego_visible: false``; nothing in the features matches them)."""
    out = [{"timestamp": n["time"], "text": n["text"], "ego_visible": True} for n in narrations]
    n_extra = int(rng.binomial(len(out), cfg.invisible_rate / (1.0 - cfg.invisible_rate))) if out else 0
    for _ in range(n_extra):
        verb, noun = AFFORDANCES[int(rng.integers(len(AFFORDANCES)))]
        t = round(float(rng.uniform(0.5, video.duration)), 2)
        out.append({"timestamp": t, "text": _text(verb, noun), "ego_visible": False})
    out.sort(key=lambda d: d["timestamp"])
    return out


def _summary_windows(duration: float, window: float) -> list[tuple[float, float]]:
    """Windows of ~``window`` seconds tiling [0, duration]; a short remainder joins the last window."""
    edges = [0.0]
    while duration - edges[-1] > 1.5 * window:
        edges.append(edges[-1] + window)
    edges.append(duration)
    return list(zip(edges[:-1], edges[1:]))


def _segment_summaries(duration: float, passes: dict[str, list[dict]], window: float) -> dict:
    """Ego4D ``{"<start>, <end>": {annotation_uid: {"narration": [...]}}}`` for one video (empty windows left out)."""
    out = {}
    windows = _summary_windows(duration, window)
    for w, (s, e) in enumerate(windows):
        last = w == len(windows) - 1
        inside = {
            ann: [n for n in nars if s <= n["time"] < e or (last and n["time"] == e)] for ann, nars in passes.items()
        }
        inside = {ann: {"narration": nars} for ann, nars in inside.items() if nars}
        if inside:
            out[f"{s:.1f}, {e:.1f}"] = inside
    return out


def _uuid(rng: np.random.Generator) -> str:
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


def _video_uid(layout: str, seed: int, index: int) -> str:
    """EK100: ``P01_01``-style ids (4 videos per participant, seed-independent); Ego4D / EgoExo4D: UUIDs derived
    from (seed, index)."""
    if layout == "ek100":
        return f"P{index // 4 + 1:02d}_{index % 4 + 1:02d}"
    return _uuid(_rng(seed, 1, index, 3))


# ----------------------------------------------------------------------------------------------------------------
# Writing


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _write_json(path: Path, obj) -> None:
    _atomic_write(path, json.dumps(obj).encode("utf-8"))


def _feature_bytes(x: np.ndarray, feature_format: str) -> bytes:
    t = torch.from_numpy(x).to(torch.bfloat16).contiguous()
    if feature_format == "safetensors":
        from safetensors.torch import save  # the bytes of save_file({"features": t}), written atomically here

        return save({"features": t})
    buf = io.BytesIO()  # saving to a buffer keeps the archive's inner name fixed ("archive"): identical bytes
    torch.save(t, buf)
    return buf.getvalue()


def _clear_previous(out: Path) -> None:
    """Before an overwrite: remove what an earlier synthetic write left (its card says which layout); a folder
    without a card (not ours) keeps its other files and ours are written over them."""
    card_path = out / SYNTHETIC_CARD_FILE
    if not card_path.is_file():
        return
    try:
        old = get_layout(json.loads(card_path.read_text()).get("layout", ""))
    except (ValueError, OSError, AttributeError):
        old = None
    card_path.unlink(missing_ok=True)
    (out / METADATA_FILE).unlink(missing_ok=True)
    if old is not None:
        shutil.rmtree(old.feature_dir(out), ignore_errors=True)
        for name in list(old.narration_files.values()) + ([old.summary_file] if old.summary_file else []):
            (out / "annotations" / name).unlink(missing_ok=True)


def write_synthetic_dataset(
    out,
    layout: str = "ek100",
    profile: str = "smoke",
    seed: int = 0,
    feature_format: str = "pt",
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write the synthetic world (``profile``, ``seed``) as a complete dataset root in ``layout``'s file layout.

    Returns the root. Raises FileExistsError when ``out`` is non-empty and ``overwrite`` is False. Files are
    written atomically; the card is written last (a partly written root has no card)."""
    from tqdm.auto import tqdm

    cfg = synth_config(profile)
    lay = get_layout(layout)
    if feature_format not in ("pt", "safetensors"):
        raise ValueError(f"unknown feature format {feature_format!r}; expected 'pt' or 'safetensors'")
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise FileExistsError(f"{out} exists and is not a directory")
        if any(out.iterdir()):
            if not overwrite:
                raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True to replace the dataset")
            _clear_previous(out)
    feature_dir = lay.feature_dir(out)
    feature_dir.mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)

    protos = world_prototypes(seed, cfg.feature_dim)
    splits = {"train": [], "val": []}
    narrations = {"train": {}, "val": {}}
    summaries, metadata, videos = {}, {}, {}
    for i in tqdm(range(cfg.n_videos), desc=f"synthetic {lay.name} ({profile})", disable=not progress):
        split = "train" if i < cfg.n_train else "val"
        video = simulate_video(cfg, seed, i)
        uid = _video_uid(lay.name, seed, i)
        x = render_features(video, protos, cfg, seed)  # (T, 10, D)
        name = f"{uid}.{feature_format}"
        _atomic_write(feature_dir / name, _feature_bytes(x, feature_format))
        metadata[uid] = {"duration": (x.shape[0] - 1) / cfg.fps, "path": name}
        splits[split].append(uid)
        videos[uid] = {
            "split": split,
            "index": i,
            "duration": video.duration,
            "length_over_cap": round(video.duration / cfg.cap_s, 4),
            "segments": [s.card() for s in video.segments],
        }

        ann_rng = _rng(seed, 1, i, 2)
        first = _first_pass(video)
        if lay.name == "ek100":
            narrations[split][uid] = first
        elif lay.name == "ego4d":
            passes = {_uuid(ann_rng): first, _uuid(ann_rng): _second_pass(video, cfg, ann_rng)}
            narrations[split][uid] = passes
            if split == "val":
                summaries[uid] = _segment_summaries(video.duration, passes, cfg.summary_window_s)
        else:  # egoexo4d: two annotator entries per take
            second = _second_pass(video, cfg, ann_rng)
            narrations[split][uid] = [
                {"descriptions": _egoexo_descriptions(n, video, cfg, ann_rng)} for n in (first, second)
            ]

    for split, obj in narrations.items():
        _write_json(lay.annotation_path(out, split), obj)
    if lay.summary_file is not None:
        _write_json(out / "annotations" / lay.summary_file, summaries)
    _write_json(out / METADATA_FILE, metadata)
    card = {
        "generator": "flownar.data.synth",
        "version": SYNTH_VERSION,
        "note": "embedded synthetic data (procedural kitchen), not FlowNar-Data",
        "layout": lay.name,
        "profile": profile,
        "seed": seed,
        "fps": cfg.fps,
        "feature_dim": cfg.feature_dim,
        "tokens_per_frame": cfg.tokens_per_frame,
        "feature_format": feature_format,
        "config": asdict(cfg),
        "cap_s": cfg.cap_s,  # training clips are cut at this length (the original's max_num_frames)
        "cap_frames": cfg.cap_frames,
        "token_layout": {"cls": CLS_TOKEN, "central": CENTRAL_TOKENS, "corners": CORNER_TOKENS},
        # where each part of an action is shown (world v4): the object, again beside it, the verb, the container,
        # an open container's front item
        "token_roles": {"noun": CENTER, "noun_side": RIGHT, "verb": HANDS, "container": LEFT, "revealed": TOP},
        "splits": splits,
        "vocabulary": {"verbs": VERBS, "nouns": NOUNS},
        "videos": videos,
    }
    _write_json(out / SYNTHETIC_CARD_FILE, card)
    return out
