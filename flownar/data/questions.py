"""The world's questions: what a person could ask during the stream, with the one right answer the kitchen knows.

Each question is asked at a frame time ``t`` and is about the kitchen as the frames up to ``t`` showed it (the
state after every segment that ended by ``t``). Six types, from the issue that asked for them:

==============  ====================================  ===================================================
type            question                              answer, and where its evidence is in the frames
==============  ====================================  ===================================================
``held``        What am I holding?                    the items in hand (asked when something is); each was
                                                      seen when it was taken (the hands token shows "held")
``last_action`` What did I just do?                   the last segment's narration; in view unless it was a
                                                      put-down of a carried item (then its take)
``container``   What did I last see in the {c}?       the front item the container showed when last open
                                                      (asked only while it is closed)
``put_down``    What did I put down last?             the last put-down's item (seen when it was taken, or
                                                      at the put-down when that is in view)
``where``       Where did I last see the {x}?         "In the {c}." / "On the counter." / "In my hands." (the
                                                      key is the phrase): where it was after the last segment
                                                      that showed it
``count``       How many times did I open the {c}?    "Never." / "Once." / "Twice." / ...: every such segment
                (or turn on the tap, hob, kettle)     so far (the evidence: the first, or the whole video)
==============  ====================================  ===================================================

The *memory gap* of a question is how far back its evidence lies: from the end of the earliest segment the answer
needs (the last one that showed the answer's content; for ``count``, the first occurrence) to ``t``, in seconds,
in segments that ended between them, and in units of the training cap. A question is *in view* when that gap is
at most :data:`IN_VIEW_S` seconds.

Questions are drawn with their own random stream (``rng_for(seed, 1, video, 7)``), so adding them changed no
other file of the world.
"""

from __future__ import annotations

import numpy as np

from .kitchen import SynthVideo
from .world import CONTAINERS, PORTABLE, SWITCHES, SynthConfig

QA_VERSION = 1
QUESTION_TYPES = ("held", "last_action", "container", "put_down", "where", "count")
IN_VIEW_S = 2.0  # a question whose evidence ended at most this long before it was asked is "in view"
QUESTION_EVERY_S = 10.0  # one question per this many seconds of video, on average
COUNTED = [("open", c) for c in CONTAINERS] + [("turn on", s) for s in SWITCHES]  # what ``count`` asks about
NUMBER_WORDS = ("Never.", "Once.", "Twice.", "Three times.", "Four times.", "Five times.", "Six times.")


def _items(xs: list[str]) -> str:
    """ "The knife." / "The knife and the cup." / "Nothing." """
    if not xs:
        return "Nothing."
    return " and the ".join(["The " + xs[0], *xs[1:]]) + "."


def _times(n: int) -> str:
    return NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else f"{n} times."


class _Past:
    """The video as the frames up to time ``t`` showed it."""

    def __init__(self, video: SynthVideo, t: float):
        self.segs = [s for s in video.segments if s.end <= t + 1e-6]
        self.states = video.states[: len(self.segs)]

    def last_showing(self, noun: str) -> int | None:
        """The last ended segment whose frames showed ``noun``."""
        return next((i for i in range(len(self.segs) - 1, -1, -1) if noun in self.segs[i].visible), None)

    def held(self):
        held = self.states[-1]["held"]
        if not held:  # asked only with something in hand ("nothing" is in view and would be a free answer)
            return None
        shown = [self.last_showing(x) for x in held]
        if None in shown:  # never seen (not in this world: every carried item was seen when taken or revealed)
            return None
        return "What am I holding?", _items(held), list(held), min(shown)

    def last_action(self):
        i = len(self.segs) - 1
        seg = self.segs[i]
        evidence = i if seg.kind == "local" else seg.depends_on
        return "What did I just do?", seg.text, [seg.verb, seg.noun], evidence

    def container(self, rng):
        shown = {}  # container -> (segment, front item) of the last segment that showed it open
        for i, st in enumerate(self.states):
            if st["revealed"] is not None:
                shown[st["revealed"][0]] = (i, st["revealed"][1])
        closed = [c for c in CONTAINERS if c in shown and self.states[-1]["open"] != c]
        if not closed:
            return None
        c = closed[int(rng.integers(len(closed)))]
        i, item = shown[c]
        return f"What did I last see in the {c}?", f"The {item}.", [item], i

    def put_down(self):
        i = next((i for i in range(len(self.segs) - 1, -1, -1) if self.segs[i].verb == "put down"), None)
        if i is None:
            return None
        seg = self.segs[i]
        evidence = i if seg.kind == "local" else seg.depends_on
        return "What did I put down last?", f"The {seg.noun}.", [seg.noun], evidence

    def where(self, rng):
        """The place is drawn first, uniformly among the places some seen item was last seen in (so that "on the
        counter", where most things are, is not a free answer), then the item."""
        by_place: dict[str, list[tuple[str, int]]] = {}
        for x in sorted({x for s in self.segs for x in s.visible if x in PORTABLE}):
            i = self.last_showing(x)
            st = self.states[i]
            place = next((c for c, items in st["inside"].items() if x in items), None)
            place = place or ("hands" if x in st["held"] else "counter")
            by_place.setdefault(place, []).append((x, i))
        places = sorted(by_place)
        place = places[int(rng.integers(len(places)))]
        x, i = by_place[place][int(rng.integers(len(by_place[place])))]
        answer = {"hands": "In my hands.", "counter": "On the counter."}.get(place, f"In the {place}.")
        return f"Where did I last see the {x}?", answer, [answer[:-1].lower()], i  # the phrase: "in the drawer"

    def count(self, rng):
        """How often a container was opened or a switch turned on so far ("Never." included). The answer is drawn
        first, uniformly among the counts some such action has then (most are never done: not a free answer)."""
        by_count: dict[int, list[tuple[str, str]]] = {}
        for verb, noun in COUNTED:
            by_count.setdefault(sum((s.verb, s.noun) == (verb, noun) for s in self.segs), []).append((verb, noun))
        counts = sorted(by_count)
        n = counts[int(rng.integers(len(counts)))]
        verb, noun = by_count[n][int(rng.integers(len(by_count[n])))]
        hits = [i for i, s in enumerate(self.segs) if (s.verb, s.noun) == (verb, noun)]
        evidence = hits[0] if hits else 0  # "never": every segment so far had to be watched
        answer = _times(n)
        return f"How many times did I {verb} the {noun}?", answer, [answer[:-1].lower()], evidence


def world_questions(video: SynthVideo, cfg: SynthConfig, rng: np.random.Generator) -> list[dict]:
    """The questions of one video: about one per :data:`QUESTION_EVERY_S` seconds, at frame times after its first
    narration, each of a type drawn uniformly among those that have an answer then. Each: ``{time, question,
    answer, keywords, type, evidence_segment, gap_s, gap_segments, gap_caps, in_view}``."""
    if not video.segments:
        return []
    first = video.segments[0].end
    n = max(1, int(round((video.duration - first) / QUESTION_EVERY_S)))
    frames = np.arange(int(np.ceil(first * cfg.fps)), int(round(video.duration * cfg.fps)) + 1)
    times = sorted(float(f) / cfg.fps for f in rng.choice(frames, size=min(n, len(frames)), replace=False))
    out = []
    for t in times:
        past = _Past(video, t)
        order = [QUESTION_TYPES[int(k)] for k in rng.permutation(len(QUESTION_TYPES))]
        for kind in order:
            made = getattr(past, kind)(rng) if kind in ("container", "where", "count") else getattr(past, kind)()
            if made is not None:
                break
        question, answer, keywords, evidence = made
        gap_s = 0.0 if evidence is None else round(max(0.0, t - past.segs[evidence].end), 2)
        gap_segments = 0 if evidence is None else len(past.segs) - 1 - evidence
        out.append(
            {
                "time": t,
                "question": question,
                "answer": answer,
                "keywords": [k.lower() for k in keywords],
                "type": kind,
                "evidence_segment": evidence,
                "gap_s": gap_s,
                "gap_segments": gap_segments,
                "gap_caps": round(gap_s / cfg.cap_s, 3),
                "in_view": gap_s <= IN_VIEW_S,
            }
        )
    return out


def question_counts(questions: dict[str, list[dict]]) -> dict:
    """The data card's counts of one split: per type, in view, per gap in units of the training cap (< 1, 1-2,
    >= 2) and in segments between the evidence and the question (FlowNar-C's and the StreamingVLM-style window keep
    the last 10 turns)."""
    qs = [q for v in questions.values() for q in v]

    def bins(values, edges, names):
        return {name: sum(lo <= x < hi for x in values) for name, lo, hi in zip(names, edges, edges[1:])}

    inf = float("inf")
    return {
        "questions": len(qs),
        "by_type": {k: sum(q["type"] == k for q in qs) for k in QUESTION_TYPES},
        "in_view": sum(q["in_view"] for q in qs),
        "by_gap_caps": bins([q["gap_caps"] for q in qs], [0, 1, 2, inf], ["<1", "1-2", ">=2"]),
        "by_gap_segments": bins([q["gap_segments"] for q in qs], [0, 1, 11, 41, inf], ["0", "1-10", "11-40", ">40"]),
    }
