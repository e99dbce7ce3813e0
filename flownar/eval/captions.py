"""Caption scores of matched narration pairs: METEOR (pycocoevalcap's Meteor: METEOR 1.5 on a Java runtime, one
JVM per process), ROUGE-L and CIDEr-D, at corpus level, with no PTB tokenizer (as the original evaluator)."""

from __future__ import annotations

import atexit
import math
import re
import shutil
import threading
import warnings
from collections.abc import Iterable

_METEOR_NO_JAVA = "METEOR skipped: no Java runtime (install a JRE, e.g. `apt-get install default-jre-headless`)"


def java_available() -> bool:
    """Whether a ``java`` executable is on PATH (METEOR runs a Java program).  Tests monkeypatch this."""
    return shutil.which("java") is not None


_meteor_lock = threading.Lock()
_meteor_scorer = None  # one METEOR JVM per process, started on first use (a JVM start costs seconds)


def _new_meteor():
    from pycocoevalcap.meteor.meteor import Meteor

    return Meteor()


def close_meteor() -> None:
    """Stop the cached METEOR JVM (it holds about 1 GB of memory once started); the next METEOR score starts a
    new one.  Also called at interpreter exit."""
    global _meteor_scorer
    scorer, _meteor_scorer = _meteor_scorer, None
    proc = getattr(scorer, "meteor_p", None)
    if proc is not None:
        try:
            proc.stdin.close()
        except Exception:  # noqa: BLE001 - the pipe may already be broken
            pass
        try:
            proc.kill()
            proc.wait()
        except Exception:  # noqa: BLE001 - best effort
            pass
    if scorer is not None and hasattr(scorer, "lock"):
        # pycocoevalcap 1.2's Meteor.compute_score takes its lock without try/finally, so after a failure the lock
        # stays held and Meteor.__del__ (which acquires it) would block forever: give it a fresh one.
        scorer.lock = threading.Lock()


atexit.register(close_meteor)


def _meteor_text(s: str) -> str:
    # The METEOR jar speaks a line protocol with ' ||| ' separators: drop '|||' and collapse every whitespace run
    # (newlines included) to one space, as the original's vendored meteor.py does with its score line.
    return re.sub(r"\s+", " ", s.replace("|||", "")).strip()


def _meteor_score(gts: dict, res: dict) -> float:
    """Corpus-level METEOR 1.5 (``-l en -norm``) or NaN with a warning if Java is missing or fails."""
    global _meteor_scorer
    if not java_available():
        warnings.warn(_METEOR_NO_JAVA, RuntimeWarning, stacklevel=3)
        return float("nan")
    g = {k: [_meteor_text(x) for x in v] for k, v in gts.items()}
    r = {k: [_meteor_text(x) for x in v] for k, v in res.items()}
    with _meteor_lock:
        try:
            if _meteor_scorer is None:
                _meteor_scorer = _new_meteor()
            score, _ = _meteor_scorer.compute_score(g, r)
            score = float(score)
            if not math.isfinite(score):
                raise ValueError(f"non-finite METEOR score {score}")
            return score
        except Exception as exc:  # noqa: BLE001 - a dead JVM surfaces as OSError/ValueError/BrokenPipeError/...
            close_meteor()
            warnings.warn(
                f"METEOR skipped: the Java subprocess failed ({type(exc).__name__}: {exc})",
                RuntimeWarning,
                stacklevel=3,
            )
            return float("nan")


def caption_scores(pairs: Iterable[tuple[str, str]]) -> dict:
    """Corpus-level caption scores over ``(reference, candidate)`` pairs (extra tuple items are ignored).

    Each pair is one "image" with a single reference.  ``METEOR``: pycocoevalcap's Meteor (METEOR 1.5, the
    jar's aggregate over all pairs; NaN plus a warning without a working Java runtime).  ``ROUGE_L``: mean over
    pairs of ROUGE-L (LCS F-measure, beta 1.2, tokens = ``split(" ")``).  ``CIDEr``: pycocoevalcap's ``Cider``
    (CIDEr-D, n = 4, sigma = 6, document frequencies from the references of all pairs, x10).  No PTB tokenizer:
    texts are passed as they are, empty ones included (as the original).  No pairs: all three are 0.0 and Java is
    not started.
    """
    pairs = [(str(p[0]), str(p[1])) for p in pairs]
    if not pairs:
        return {"METEOR": 0.0, "ROUGE_L": 0.0, "CIDEr": 0.0}
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    gts = {i: [ref] for i, (ref, _) in enumerate(pairs)}
    res = {i: [cand] for i, (_, cand) in enumerate(pairs)}
    rouge, _ = Rouge().compute_score(gts, res)
    if any(ref.split() for ref, _ in pairs):
        cider, _ = Cider().compute_score(gts, res)
    else:  # pycocoevalcap's CIDEr fails (empty document frequencies) when no reference has a word
        warnings.warn("CIDEr undefined: every reference text is empty", RuntimeWarning, stacklevel=2)
        cider = float("nan")
    return {"METEOR": _meteor_score(gts, res), "ROUGE_L": float(rouge), "CIDEr": float(cider)}
