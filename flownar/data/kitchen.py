"""The kitchen's simulation: a video as a sequence of actions from short scripts over a small state (containers,
counter, hands, switches), with the ground truth of every segment (kind, memory gap, what each span shows).
Lengths follow the paper's regime in units of the training cap (:func:`video_length`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from statistics import NormalDist

import numpy as np

from .world import (
    A_CONTAINER,
    A_HELD,
    A_REVEAL,
    CENTER,
    CONTAINERS,
    CORNER_TOKENS,
    CUTTABLE,
    DRYABLE,
    FILLABLE,
    HANDS,
    LEFT,
    PEELABLE,
    PORTABLE,
    POURABLE,
    RIGHT,
    STIRRABLE,
    SWITCHES,
    TOP,
    VERB_DURATION,
    WASHABLE,
    WIPEABLE,
    SynthConfig,
    action_text,
    rng_for,
)

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
    revealed: str | None = None  # the front item an open container showed during the segment (the top token)

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
    states: list[dict] = field(default_factory=list)  # the kitchen after each segment (:meth:`_Kitchen.snapshot`)

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
        self.states: list[dict] = []  # the state after each segment, for the world's questions
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
            self.t,
            end,
            verb,
            noun,
            action_text(verb, noun, container),
            kind,
            depends_on,
            visible,
            container,
            held_before,
        )
        seg.revealed = next((key[5:] for tok, key, _ in comps if tok == TOP and key.startswith("noun:")), None)
        if depends_on is not None:
            seg.gap_segments = idx - depends_on
            seg.gap_s = round(end - self.segments[depends_on].end, 2)
        self.segments.append(seg)
        self.spans.append(Span(self.t, end, comps))
        self.t = end
        self._update(verb, noun, container)
        self._drift_clutter()
        self.states.append(self.snapshot(comps))
        return idx

    def snapshot(self, comps: list[tuple[int, str, float]]) -> dict:
        """The state after a segment (it draws nothing, so the world is the same with or without it): what is held,
        which container is open, what each holds, and which container's front item the segment showed
        (``revealed``: [container, item]); an item in no container and not held is on the counter."""
        shown = {tok: key[5:] for tok, key, _ in comps if key.startswith("noun:")}
        return {
            "held": list(self.held),
            "open": self.open,
            "inside": {c: list(items) for c, items in self.inside.items()},
            "revealed": [shown[LEFT], shown[TOP]] if TOP in shown and LEFT in shown else None,
        }

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
        r = float(rng_for(seed, 1, index, 4).lognormal(math.log(cfg.length_median), cfg.length_sigma))
    else:
        order = rng_for(seed, 5).permutation(cfg.n_val)
        q = (int(order[index - cfg.n_train]) + 0.5) / cfg.n_val
        r = _lognormal_quantile(q, cfg.length_median, cfg.length_sigma)
    return min(cfg.length_min + r, cfg.length_max)


def simulate_video(cfg: SynthConfig, seed: int, index: int) -> SynthVideo:
    """The world of video ``index`` (train videos first, then val): its duration, actions and content spans.
    Depends on (seed, index, cfg) only, never on the layout."""
    rng = rng_for(seed, 1, index, 0)
    seconds = cfg.cap_s * video_length(cfg, seed, index)
    duration = math.floor(seconds * cfg.fps) / cfg.fps  # T = duration * fps + 1 frames, frame j <-> j / fps
    kitchen = _Kitchen(rng, cfg, duration)
    kitchen.run()
    return SynthVideo(index, duration, kitchen.segments, kitchen.spans, kitchen.states)
