"""Per-clip prediction files: where a clip's narrations are written, what makes a file reusable, and reading a
folder of them back for scoring.

One JSON file per clip (:func:`clip_file`), written atomically as soon as the clip is narrated, records the model's
fingerprint and the clip's inputs (:func:`clip_inputs`: the feature file's digest, the frames, the narrator settings
that change what is said): a file is reused only for the same model from the same inputs (:func:`read_prediction`),
and a folder that mixes models is refused when scored (:func:`load_predictions`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
import warnings
from pathlib import Path

from ..errors import FlowNarError
from ..stream import Narrator
from .metrics import ClipPrediction

PREDICTION_VERSION = 2  # 2: narrations_raw (the text as the original decodes it) beside narrations


def clip_file(out_dir: Path, clip_id: str) -> Path:
    """The prediction file of a clip: a readable part (the id with unsafe characters replaced) and a short hash of
    the exact id, so ids that read alike after sanitising (``P03/01``, ``P03_01``) never share a file."""
    safe = re.sub(r"[^A-Za-z0-9_.@-]", "_", clip_id)
    return Path(out_dir) / f"{safe}-{hashlib.sha1(clip_id.encode()).hexdigest()[:8]}.json"


def _atomic_write_json(path: Path, obj) -> None:
    # a temporary name of this writer's own (process and a random part), then an atomic rename: concurrent
    # writers of one clip never write into each other's temporary file
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _read_record(path: Path) -> tuple[dict | None, str]:
    """(record, "") or (None, why it cannot be used)."""
    try:
        rec = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None, "missing"
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        return None, f"unreadable ({type(e).__name__})"
    if not isinstance(rec, dict) or rec.get("version") != PREDICTION_VERSION:
        return None, f"not a version-{PREDICTION_VERSION} prediction file"
    return rec, ""


ANY_MODEL = object()  # read_prediction(fingerprint=ANY_MODEL): do not check which model wrote the file


def read_prediction(path: Path, fingerprint=ANY_MODEL, clip_id: str | None = None) -> dict | None:
    """A finished clip's record, or None if the file is missing, unreadable, or was written by another model
    (another ``fingerprint``; None is a fingerprint too: "unknown") or for another clip (then the clip is redone)."""
    rec, _ = _read_record(path)
    if rec is None:
        return None
    if fingerprint is not ANY_MODEL and rec.get("model_fingerprint") != fingerprint:
        return None
    if clip_id is not None and rec.get("clip_id") != clip_id:
        return None
    return rec


def why_pending(path: Path, fingerprint) -> str:
    """Why a clip's file does not (yet) hold this model's narration: ``"not narrated yet"``, ``"another model's"``
    or ``"unreadable"`` (the shard pending message counts them)."""
    rec, why = _read_record(path)
    if rec is None:
        return "not narrated yet" if why == "missing" else "unreadable"
    return "another model's" if rec.get("model_fingerprint") != fingerprint else "not narrated yet"


#: the Narrator arguments that change what is said (the others, such as the engine, change only how fast)
NARRATION_SETTINGS = (
    "threshold_high",
    "threshold_low",
    "avg_duration",
    "rule",
    "max_new_tokens",
    "system_prompt",
    "instruction",
)


def clip_inputs(data, clip, settings: dict) -> dict:
    """What a clip's narration is made from, besides the model: the digest of its feature file, its frames and the
    narrator's settings that change what is said (given or the Narrator's defaults). A prediction file is reused
    only for the same."""
    import inspect

    defaults = {k: v.default for k, v in inspect.signature(Narrator).parameters.items()}
    digest = hashlib.sha256(data.videos[clip.video_uid].feature_path.read_bytes()).hexdigest()[:16]
    return {
        "features_sha256": digest,
        "frames": [clip.start_frame, clip.stop_frame],
        "settings": {k: settings.get(k, defaults[k]) for k in NARRATION_SETTINGS},
    }


def load_predictions(out_dir: str | Path, clip_ids: list[str], fingerprint=ANY_MODEL) -> list[ClipPrediction]:
    """The predictions of ``clip_ids`` in ``out_dir``. Refuses a folder that mixes models (the error names a file
    of each) or files of another model than ``fingerprint``; a file that is unreadable or holds another clip is
    counted aloud (a warning names them) and the clip is scored as one without narration."""
    preds, bad, models = [], [], {}
    for cid in clip_ids:
        path = clip_file(out_dir, cid)
        if not path.exists():
            continue
        rec, why = _read_record(path)
        if rec is not None and rec.get("clip_id") != cid:
            rec, why = None, f"holds clip {rec.get('clip_id')!r}"
        if rec is None:
            bad.append(f"{path.name} ({why})")
            continue
        fp = rec.get("model_fingerprint")
        models.setdefault(fp, path)
        raw = rec.get("narrations_raw")
        preds.append(
            ClipPrediction(
                cid,
                {int(k): v for k, v in rec["narrations"].items()},
                {int(k): v for k, v in raw.items()} if raw is not None else None,
            )
        )
    if len(models) > 1:
        which = ", ".join(f"{p} (model {fp})" for fp, p in models.items())
        raise FlowNarError(
            f"{out_dir}: prediction files of {len(models)} different models ({which}); score one "
            "model's folder (narrate again into an empty --out)"
        )
    if fingerprint is not ANY_MODEL and models and fingerprint not in models:
        ((fp, p),) = models.items()
        raise FlowNarError(f"{p}: written by model {fp}, not by the model being scored ({fingerprint})")
    if bad:
        warnings.warn(
            f"{out_dir}: {len(bad)} prediction file(s) cannot be used and their clips are scored as "
            f"clips with no narration: {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}",
            RuntimeWarning,
            stacklevel=2,
        )
    return preds
