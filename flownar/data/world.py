"""The embedded synthetic world: its settings (:class:`SynthConfig` per profile), its vocabulary and what each
action can act on, the token layout of a frame and the random prototypes every feature is made of.

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
  streams beyond 2x the cap. Training cuts at the cap (:func:`training_cap`).
* Every ground-truth segment carries its memory gap (``gap_segments``, ``gap_s``) in the card.

Everything random comes from ``numpy.random.default_rng(SeedSequence(seed, spawn_key=...))``: prototypes from the
seed alone, video ``i``'s world, features and annotation noise from (seed, i), so the world of video ``i`` is the
same in every layout and the same (seed, profile, layout) gives byte-identical files.

"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import profiles

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


def training_cap(profile: str) -> int:
    """The frame cap of training clips (``max_num_frames``), which teacher-forced evaluation cuts at too: the
    original's 1200 (10 minutes at 2 fps) on real data (the ``paper`` profile), the world's ``cap_s`` on the
    embedded profiles."""
    if profiles.get(profile).real_data:
        return 1200
    return synth_config(profile).cap_frames


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


def action_text(verb: str, noun: str, container: str | None = None) -> str:
    return f"You {verb} the {noun}" + (f" from the {container}." if container else ".")


def rng_for(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


# ----------------------------------------------------------------------------------------------------------------
# Prototypes


def world_prototypes(seed: int, feature_dim: int) -> dict:
    """The fixed prototype vectors of a seed (shared by all videos and splits), float32, each (D,) with per-dim
    variance 1 (norm ~ sqrt(D)): ``{"verbs": {verb: v}, "nouns": {noun: v}, "held": v, "grasp": v,
    "positions": (9, D) array}``."""
    rng = rng_for(seed, 0)
    D = feature_dim
    draw = lambda: rng.standard_normal(D).astype(np.float32)  # noqa: E731
    return {
        "verbs": {v: draw() for v in VERBS},
        "nouns": {n: draw() for n in NOUNS},
        "held": draw(),
        "grasp": draw(),
        "positions": rng.standard_normal((9, D)).astype(np.float32),
        "effect": rng_for(seed, 6).standard_normal(D).astype(np.float32),  # the completion cue (world v3)
    }


def prototype(protos: dict, key: str) -> np.ndarray:
    kind, _, name = key.partition(":")
    if kind == "verb":
        return protos["verbs"][name]
    if kind == "noun":
        return protos["nouns"][name]
    return protos[key]  # "held" / "grasp"


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
