"""What a narration says, in the embedded world's words: the verb and the object it names.

One parser for every reader of narration text (the content scores, the teacher-forced content probe, the world
oracle's tests): "You <verb> the <noun> ...", where the second annotator's paraphrases count as their verb.
"""

from __future__ import annotations

import re

from ..data.world import PARAPHRASES


def parse_narration(text: str, verbs: list[str], nouns: list[str]) -> tuple[str | None, str | None]:
    """``(verb, noun)`` of "You <verb> the <noun> ...": the verb (or a paraphrase of it) right after "You", the
    first vocabulary noun after it; None for a part that is not there."""
    low = " ".join(re.findall(r"[a-z']+", text.lower()))
    low = low[4:] if low.startswith("you ") else low
    synonyms = [(v, v) for v in verbs] + [(p, v) for v, p in PARAPHRASES.items() if v in verbs]
    verb, rest = None, low
    for said, v in sorted(synonyms, key=lambda sv: -len(sv[0])):
        if re.match(rf"{re.escape(said)}\b", low):
            verb, rest = v, low[len(said) :]
            break
    found = [(m.start(), -len(n), n) for n in nouns for m in [re.search(rf"\b{re.escape(n)}\b", rest)] if m]
    return verb, (min(found)[2] if found else None)
