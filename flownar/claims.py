"""What the embedded default reproduces: one row per claim of the paper, from the tables of one or more seeds.

``flownar claims --dataset ek100 --dirs DIR [DIR ...]`` (``make seeds-ek100`` runs the default pipeline once per
seed of ``SEEDS`` and then this) reads each seed's output folder (``metrics/<system>.json``,
``oracle/<system>.json``, ``content_rates.csv``, ``table_position.csv``, ``table_efficiency*.csv``) and writes
``table_claims.{csv,md,tex}``: the paper's figure (read from the paper's tables in ``flownar/resources``, never
computed), ours as mean +- std over seeds, and a verdict. Systems are read by key (the per-system JSON files and
the content scores; the position and efficiency tables through the registry's display names); a missing input is
an error naming the file.

**The verdict rules.** For a quantity measured per seed, our interval is ``mean +- 2 sd`` (sd: the seed-to-seed
standard deviation): a difference counts only beyond the seed spread. ``x`` below is the difference signed so that
positive is the claim's side.

* *better* (the paper claims an improvement): **reproduced** when the interval lies above 0; **opposite** when it
  lies below 0; otherwise **not reproduced** when the paper's figure lies above the interval (its effect is
  excluded and ours is not distinguishable from none), else **inconclusive at n seeds** (the interval holds 0 and
  the paper's figure, or the paper gives none). Monotone: a larger ``x`` never reads worse, and matching the paper's
  figure can never read *not reproduced*.
* *no worse* (the paper says "on par" / "keeps the quality"): **not reproduced** only when the interval lies below
  both 0 and the paper's figure (worse beyond the spread, and worse than the paper found); otherwise
  **reproduced**, saying whether ours is on par (the interval holds 0), better beyond the spread, or a loss no
  larger than the paper's.
* *ratio* (efficiency: a bounded cache, a faster stream): above 1 is the claim's side. An analytic ratio does not
  depend on the seed: one value, no spread, judged by direction; a measured one is judged like *better* around 1.
* *compare* (our adaptations against the systems they are built from; the paper says nothing about them, so there
  is no expected sign): **difference beyond the seed spread** or **no difference beyond the seed spread**.

"The paper's sign in k of n seeds" is said only where the paper has a figure; "the claimed direction" where it
claims one without a number. With one seed there is no spread: the verdict says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import systems as registry
from .errors import FlowNarError
from .eval.tables import PAPER_DATASET, paper_self_conditioned, paper_teacher_forcing
from .report import read_table_csv
from .systems import display_name

#: the content scores the memory rows read (notebook 05: flownar.eval.content.rates)
CONTENT_RATES = "content_rates"
#: the streaming-QA scores the question rows read (notebook 06: flownar.eval.qa.qa_long)
QA_RATES = "qa_rates"


@dataclass(frozen=True)
class Claim:
    key: str
    text: str  # the claim, in the paper's own terms where it has them
    unit: str
    kind: str  # "better" | "no worse" | "ratio" | "compare"
    sign: int = 1  # which way of ours is the claim's side (+1: larger, -1: smaller); unused by "compare"
    analytic: bool = False  # seed-independent: one value, no spread


CLAIMS = [
    Claim(
        "dcm_f1",
        "DCM improves self-conditioned temporal F1 over VideoLLM-online / MoD (FlowNar - best of them)",
        "F1 points",
        "better",
    ),
    Claim(
        "dcmonly_f1",
        "DCM alone (no CLAM) improves F1 over VideoLLM-online (DCM-only - VideoLLM-online)",
        "F1 points",
        "better",
    ),
    Claim(
        "c_vs_full_f1",
        "FlowNar-C keeps FlowNar's quality with a bounded cache (FlowNar-C - FlowNar)",
        "F1 points",
        "no worse",
    ),
    Claim(
        "clam_memory",
        "CLAM helps narrations that need long-range memory (FlowNar - DCM-only, object named right on memory segments)",
        "points",
        "better",
    ),
    Claim(
        "tf_ppl",
        "Teacher forcing: FlowNar on par with VideoLLM-online in LM-PPL (FlowNar - VideoLLM-online; lower is better)",
        "PPL",
        "no worse",
        sign=-1,
    ),
    Claim(
        "tf_corr",
        "Teacher forcing: FlowNar on par with VideoLLM-online in LM-Correctness (FlowNar - VideoLLM-online)",
        "points",
        "no worse",
    ),
    Claim(
        "beyond_cap",
        "Past the training length FlowNar degrades less than VideoLLM-online "
        "(F1 beyond 1x cap minus F1 0-1x, FlowNar - VideoLLM-online)",
        "F1 points",
        "better",
    ),
    Claim(
        "cache_ratio",
        "KV cache of FlowNar-C far below VideoLLM-online's (reduction, analytic at Llama-3.2-1B)",
        "x",
        "ratio",
        analytic=True,
    ),
    Claim(
        "speed_ratio",
        "FlowNar-C streams faster than VideoLLM-online (frames/s ratio, measured in each seed's run, mini model, CPU)",
        "x",
        "ratio",
    ),
    # our adaptations (no paper claim, no expected sign: the sign of "ours" says which way)
    Claim(
        "swap_f1",
        "Same narrator, memory swapped: CLAM vs Flash Memory (FlowNar - Flash-VStream memory, ours), F1",
        "F1 points",
        "compare",
    ),
    Claim(
        "swap_memory",
        "Same narrator, memory swapped: object named right on memory segments (FlowNar - Flash-VStream memory, ours)",
        "points",
        "compare",
    ),
    Claim(
        "window_f1",
        "Bounded by pruning at narrations vs by a sliding window (FlowNar-C - StreamingVLM-style cache, ours), F1",
        "F1 points",
        "compare",
    ),
    Claim(
        "window_memory",
        "Pruning vs a window: object named right on memory segments (FlowNar-C - StreamingVLM-style cache, ours)",
        "points",
        "compare",
    ),
]


# questions asked during the stream (notebook 06): rows only where every seed folder has its QA scores
QA_CLAIMS = [
    Claim(
        "qa_clam",
        "Questions answered from memory: CLAM vs none (FlowNar - DCM-only, answers right on questions from memory)",
        "points",
        "compare",
    ),
    Claim(
        "qa_flash",
        "Questions answered from memory: CLAM vs Flash Memory (FlowNar - Flash-VStream memory, ours)",
        "points",
        "compare",
    ),
    Claim(
        "qa_window",
        "Questions answered from memory: pruning vs a window (FlowNar-C - StreamingVLM-style cache, ours)",
        "points",
        "compare",
    ),
]


# ---------------------------------------------------------------------------------------------------- reading
def _get(df: pd.DataFrame | None, row: str, col: str) -> float:
    """A cell of one of the paper's tables (nan where the paper has no such row or column)."""
    try:
        return float(df.loc[row, col])
    except (AttributeError, KeyError, TypeError, ValueError):
        return float("nan")


class SeedFolder:
    """One seed's outputs, read by system key: the self-conditioned scores and the teacher-forced metrics from the
    per-system JSON files (``metrics/<key>.json``, ``oracle/<key>.json``), the content scores
    (``content_rates.csv``), and the tables keyed by display name (position, efficiency) through the registry.
    Anything a claim needs and the folder lacks is an error naming the file, never a verdict."""

    def __init__(self, d: Path):
        self.d = Path(d)

    def _json(self, sub: str, key: str) -> dict:
        p = self.d / sub / f"{key}.json"
        try:
            return json.loads(p.read_text())
        except FileNotFoundError:
            raise FlowNarError(f"{p}: missing (the claims need {key}'s {sub}; run its notebook)") from None
        except ValueError as e:
            raise FlowNarError(f"{p}: not valid JSON ({e})") from e

    def f1(self, key: str) -> float:
        """Temporal F1 (%) in the corrected scoring."""
        return 100.0 * float(self._json("metrics", key)["scores"]["corrected"]["t_f1"])

    def teacher_forced(self, key: str, metric: str) -> float:
        """``lm_ppl``, or ``lm_correctness`` in %."""
        v = float(self._json("oracle", key)["metrics"][metric])
        return 100.0 * v if metric == "lm_correctness" else v

    @staticmethod
    def _csv(p: Path, read, needs: tuple[str, ...], missing: str) -> pd.DataFrame:
        """The table at ``p`` read by ``read``, with the columns ``needs``; any other outcome names the file."""
        if not p.is_file():
            raise FlowNarError(f"{p}: missing ({missing})")
        try:
            df = read(p)
        except (ValueError, UnicodeDecodeError, OSError) as e:  # pandas' parser errors are ValueErrors
            raise FlowNarError(f"{p}: not a readable table ({type(e).__name__}: {e})") from None
        absent = [c for c in needs if c not in df.columns]
        if absent:
            raise FlowNarError(f"{p}: not the table the claims read (no column {', '.join(map(repr, absent))})")
        return df

    def table(self, name: str, key: str, col: str, source: str | None = None) -> float:
        p = self.d / f"{name}.csv"
        needs = ("system",) if source is not None else ()
        df = self._csv(p, read_table_csv, needs, "the claims need it; run the notebook that writes it")
        if source is not None:  # table_efficiency_measured: rows of several sources ("this run", committed runs)
            df = df[df.index == source].set_index("system")
        row = display_name(key)
        if row not in df.index or col not in df.columns:
            raise FlowNarError(f"{p}: no {col!r} for {row!r}")
        return float(df.loc[row, col])

    def content(self, key: str, group: str, metric: str = "noun") -> tuple[float, int]:
        """(percentage, n) of the narrations closing a ``group`` segment whose ``metric`` is right (notebook 05's
        content scores)."""
        p = self.d / f"{CONTENT_RATES}.csv"
        df = self._csv(
            p, _long_csv, ("system", "group", "metric", "rate", "n"), "the claims need notebook 05's content scores"
        )
        sel = df[(df.system == key) & (df.group == group) & (df.metric == metric)]
        if sel.empty:
            raise FlowNarError(f"{p}: no {group} / {metric} row for {key}")
        return 100.0 * float(sel.rate.iloc[0]), int(sel.n.iloc[0])

    def memory_accuracy(self, key: str) -> float:
        """The percentage of narrations closing a memory segment that name its object (the content scores'
        ``memory`` / ``noun`` row)."""
        return self.content(key, "memory")[0]

    @property
    def has_qa(self) -> bool:
        return (self.d / f"{QA_RATES}.csv").is_file()

    def qa_accuracy(self, key: str, group: str = "in_view", value: str = "from memory") -> float:
        """Answers right (%) of ``key`` on one group of questions (default: those answered from memory)."""
        p = self.d / f"{QA_RATES}.csv"
        df = self._csv(p, _long_csv, ("system", "group", "value", "rate"), "notebook 06's answer rates")
        sel = df[(df.system == key) & (df.group == group) & (df.value == value)]
        if sel.empty:
            raise FlowNarError(f"{p}: no {group} = {value!r} row for {key}")
        return float(sel.rate.iloc[0])


def _long_csv(p: Path) -> pd.DataFrame:
    return pd.read_csv(p, comment="#")


def check_dirs(dirs: list[Path], dataset: str) -> None:
    """Every seed folder exists and, where it records one (``provenance.json``), is of ``dataset``."""
    missing = [str(d) for d in dirs if not d.is_dir()]
    if missing:
        raise FlowNarError(f"seed folder(s) not found: {', '.join(missing)}")
    profiles = {}
    for d in dirs:
        prov = d / "provenance.json"
        if prov.is_file():
            try:
                rec = json.loads(prov.read_text())
                got = rec.get("dataset")
            except (OSError, ValueError, AttributeError) as e:
                raise FlowNarError(f"{prov}: unreadable ({e})") from e
            if got and got != dataset:
                raise FlowNarError(f"{d}: a {got} folder (provenance.json), but the claims are for {dataset}")
            if rec.get("profile"):
                profiles.setdefault(rec["profile"], []).append(str(d))
    if len(profiles) > 1:
        mix = "; ".join(f"{p}: {', '.join(ds)}" for p, ds in sorted(profiles.items()))
        raise FlowNarError(f"seed folders of different profiles ({mix}): the claims compare seeds of one profile")


def _seed_values(d: Path) -> dict[str, float]:
    """The quantity behind each claim in one seed folder."""
    s = SeedFolder(d)
    f1 = {k: s.f1(k) for k in ("videollm-online", "videollm-mod", "flownar-c", "flownar", "dcm-only")}
    f1.update({k: s.f1(k) for k in ("flash-vstream", "streaming-vlm")})
    mem = {k: s.memory_accuracy(k) for k in ("flownar", "dcm-only", "flash-vstream", "flownar-c", "streaming-vlm")}

    def drop(key):  # F1 past the cap minus within it
        return s.table("table_position", key, "F1 >1x (pooled)") - s.table("table_position", key, "F1 0-1x")

    def tf(metric):
        return s.teacher_forced("flownar", metric) - s.teacher_forced("videollm-online", metric)

    return {
        "dcm_f1": f1["flownar"] - max(f1["videollm-online"], f1["videollm-mod"]),
        "dcmonly_f1": f1["dcm-only"] - f1["videollm-online"],
        "c_vs_full_f1": f1["flownar-c"] - f1["flownar"],
        "clam_memory": mem["flownar"] - mem["dcm-only"],
        "tf_ppl": tf("lm_ppl"),
        "tf_corr": tf("lm_correctness"),
        "beyond_cap": drop("flownar") - drop("videollm-online"),
        "cache_ratio": s.table("table_efficiency", "flownar-c", "Cache reduction (x)"),
        "speed_ratio": s.table("table_efficiency_measured", "flownar-c", "FPS / VideoLLM-online", source="this run"),
        "swap_f1": f1["flownar"] - f1["flash-vstream"],
        "swap_memory": mem["flownar"] - mem["flash-vstream"],
        "window_f1": f1["flownar-c"] - f1["streaming-vlm"],
        "window_memory": mem["flownar-c"] - mem["streaming-vlm"],
    } | (_qa_values(s) if s.has_qa else {})


def _qa_values(s: SeedFolder) -> dict[str, float]:
    qa = {k: s.qa_accuracy(k) for k in ("flownar", "dcm-only", "flash-vstream", "flownar-c", "streaming-vlm")}
    return {
        "qa_clam": qa["flownar"] - qa["dcm-only"],
        "qa_flash": qa["flownar"] - qa["flash-vstream"],
        "qa_window": qa["flownar-c"] - qa["streaming-vlm"],
    }


def _claims(dirs: list[Path]) -> list[Claim]:
    """The claims these folders can be judged on: the question rows where every folder has QA scores (some but not
    all: an error naming the others)."""
    has = [SeedFolder(d).has_qa for d in dirs]
    if any(has) and not all(has):
        missing = [str(Path(d) / f"{QA_RATES}.csv") for d, h in zip(dirs, has) if not h]
        raise FlowNarError(f"QA scores in some seed folders but not in: {', '.join(missing)} (run notebook 06)")
    return CLAIMS + (QA_CLAIMS if all(has) and has else [])


def _per_seed(dirs: list[Path]) -> dict[str, list[float]]:
    """The quantity behind each claim, one value per seed folder."""
    values = [_seed_values(d) for d in dirs]
    return {c.key: [v[c.key] for v in values] for c in _claims(dirs)}


def _paper_figures(dataset: str) -> dict[str, tuple[float, str]]:
    ds = PAPER_DATASET[dataset]
    sc = paper_self_conditioned(dataset)
    tf = paper_teacher_forcing()

    def f1(s):
        return _get(sc, display_name(s), "F1")

    ours = (float("nan"), "our adaptation, not in the paper")
    return {
        "dcm_f1": (f1("flownar") - max(f1("videollm-online"), f1("videollm-mod")), f"{ds} F1"),
        "dcmonly_f1": (float("nan"), "no DCM-only row"),
        "c_vs_full_f1": (f1("flownar-c") - f1("flownar"), f"{ds} F1"),
        "clam_memory": (float("nan"), "qualitative, Fig. 6"),
        "tf_ppl": (
            _get(tf, display_name("flownar"), "LM-PPL") - _get(tf, display_name("videollm-online"), "LM-PPL"),
            "Ego4D; 'on par'",
        ),
        "tf_corr": (
            _get(tf, display_name("flownar"), "LM-Correctness (%)")
            - _get(tf, display_name("videollm-online"), "LM-Correctness (%)"),
            "Ego4D; 'on par'",
        ),
        "beyond_cap": (float("nan"), "claimed in the text, no number"),
        "cache_ratio": (
            _get(sc, display_name("videollm-online"), "cache_M") / _get(sc, display_name("flownar-c"), "cache_M"),
            f"{ds} cache, Llama-3.2-1B",
        ),
        "speed_ratio": (float("nan"), "Fig. 4, H100"),
        "swap_f1": ours,
        "swap_memory": ours,
        "window_f1": ours,
        "window_memory": ours,
    } | {c.key: (float("nan"), "our measurement, not in the paper") for c in QA_CLAIMS}


# ---------------------------------------------------------------------------------------------------- verdicts
def verdict(values, claim: Claim, paper: float = float("nan")) -> str:
    """The verdict of ``claim`` from its per-seed ``values`` and the paper's figure (module docstring)."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    n = len(v)
    if n == 0:
        return "no value (not a number in any seed)"
    mean = float(v.mean())
    if claim.kind == "ratio":
        if claim.analytic or n == 1:
            side = "reproduced" if mean > 1.0 else "opposite"
            return f"{side} (direction; " + ("analytic, seed-independent)" if claim.analytic else "one seed)")
        sd = float(v.std(ddof=1))
        if mean - 2 * sd > 1.0:
            return "reproduced (beyond the seed spread)"
        if mean + 2 * sd < 1.0:
            return "opposite (beyond the seed spread)"
        return f"inconclusive at {n} seeds (above 1 in {int((v > 1).sum())} of {n})"
    if claim.kind == "compare":
        if n == 1:
            return "one seed: no spread to judge"
        sd = float(v.std(ddof=1))
        if abs(mean) > 2 * sd:
            return "difference beyond the seed spread"
        return f"no difference beyond the seed spread (positive in {int((v > 0).sum())} of {n} seeds)"
    x, p = claim.sign * v, claim.sign * paper  # positive: the claim's side
    xm = float(x.mean())
    has_paper = not np.isnan(p)
    agree = int((x > 0).sum())
    direction = (
        f"the paper's sign in {agree} of {n} seeds" if has_paper else f"the claimed direction in {agree} of {n} seeds"
    )
    if n == 1:
        floor = min(p, 0.0) if claim.kind == "no worse" and has_paper else 0.0
        side = xm >= floor if claim.kind == "no worse" else xm > 0
        return "one seed: no spread to judge (" + ("on the claim's side" if side else "not on the claim's side") + ")"
    sd = float(x.std(ddof=1))
    lo, hi = xm - 2 * sd, xm + 2 * sd
    if claim.kind == "better":
        if lo > 0:
            return "reproduced (beyond the seed spread)"
        if hi < 0:
            return "opposite (beyond the seed spread)"
        if has_paper and p > hi:
            return (
                "not reproduced (no effect beyond the seed spread, and the paper's figure lies above ours; "
                f"{direction})"
            )
        return (
            f"inconclusive at {n} seeds (the spread holds no effect"
            + (" and the paper's figure" if has_paper else "")
            + f"; {direction})"
        )
    if claim.kind == "no worse":
        floor = min(p, 0.0) if has_paper else 0.0
        if hi < floor:
            return "not reproduced (worse beyond the seed spread" + (
                ", and by more than the paper's figure)" if has_paper else ")"
            )
        if lo > 0:
            return "reproduced (better beyond the seed spread)"
        if hi >= 0:
            return "reproduced (on par: no loss beyond the seed spread)"
        return "reproduced (a loss no larger than the paper's figure)"
    raise ValueError(f"unknown claim kind {claim.kind!r}")


def claims_table(dirs: list, dataset: str) -> pd.DataFrame:
    dirs = [Path(d) for d in dirs]
    check_dirs(dirs, dataset)
    seeds = _per_seed(dirs)
    paper = _paper_figures(dataset)
    rows = []
    for c in _claims(dirs):
        v = np.asarray(seeds.get(c.key, []), dtype=float)
        ok = v[~np.isnan(v)]
        mean = float(ok.mean()) if len(ok) else float("nan")
        sd = float(ok.std(ddof=1)) if len(ok) > 1 else float("nan")
        pv, pnote = paper[c.key]
        fmt = (lambda x: f"{x:.2f}") if c.kind == "ratio" else (lambda x: f"{x:+.2f}")
        if np.isnan(mean):
            ours = "n/a"
        elif c.analytic:
            ours = f"{fmt(mean)} (analytic)"
        else:
            ours = fmt(mean) + ("" if np.isnan(sd) else f" +- {sd:.2f}")
        rows.append(
            {
                "claim": c.text,
                "paper": ("n/a" if np.isnan(pv) else f"{pv:.1f}" if c.kind == "ratio" else f"{pv:+.2f}")
                + f" ({pnote})",
                "ours (mean +- std)": ours,
                "unit": c.unit,
                "seeds": len(ok),
                "verdict": verdict(v, c, pv),
            }
        )
    return pd.DataFrame(rows).set_index("claim")


SEED_COLUMNS = (  # (column, how a seed folder gives it, or None for a row that has no such value)
    ("F1", lambda s, k: s.f1(k)),
    ("F1 within the cap", lambda s, k: s.table("table_position", k, "F1 0-1x")),
    ("F1 past the cap", lambda s, k: s.table("table_position", k, "F1 >1x (pooled)")),
    ("object, local (%)", lambda s, k: s.content(k, "local")[0]),
    ("object, local, habit wrong (%)", lambda s, k: s.content(k, "local, habit wrong")[0]),
    ("object, memory (%)", lambda s, k: s.content(k, "memory")[0]),
)
REFERENCE_ROWS = {"world-oracle": "World oracle (ceiling)", "habit": "Verb habit (verb given)"}


def seeds_table(dirs: list) -> pd.DataFrame:
    """Per system (and the oracle and habit rows of the content scores), mean +- std over the seed folders of F1,
    F1 within and past the training cap and the object named right, the decision AUC and the number of memory
    narrations per seed: the table behind the claims, written beside them."""
    folders = [SeedFolder(Path(d)) for d in dirs]
    rows = {}
    for key in [*registry.learned(), *REFERENCE_ROWS]:
        ref = key in REFERENCE_ROWS
        row = {}
        if not ref:
            row["decision AUC per seed"] = " / ".join(
                f"{s.table('table_parameters', key, 'decision AUC (val)'):.2f}" for s in folders
            )
        for col, get in SEED_COLUMNS:
            if ref and not col.startswith("object"):
                continue
            v = np.array([get(s, key) for s in folders], dtype=float)
            row[col] = f"{v.mean():.1f}" + (f" +- {v.std(ddof=1):.1f}" if len(v) > 1 else "")
        row["memory narrations n per seed"] = " / ".join(str(s.content(key, "memory")[1]) for s in folders)
        rows[REFERENCE_ROWS.get(key) or display_name(key)] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("system").fillna("")


def main(argv=None) -> int:
    import argparse

    from .report import save_table

    p = argparse.ArgumentParser(prog="flownar claims", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="ek100", choices=sorted(PAPER_DATASET))
    p.add_argument("--dirs", nargs="+", required=True, help="one output folder per seed")
    p.add_argument("--out", required=True, help="folder for table_claims and table_seeds (.csv, .md, .tex)")
    a = p.parse_args(argv)
    table = claims_table(a.dirs, a.dataset)
    banner = (
        f"EMBEDDED SYNTHETIC DATA ({a.dataset} layout): not the paper's data. What the embedded default reproduces, "
        f"over {len(a.dirs)} seed(s); a difference counts only beyond two seed-to-seed standard deviations "
        "(rules: flownar.claims)."
    )
    for path in save_table(table, Path(a.out) / "table_claims", banner):
        print("wrote", path)
    seeds_banner = banner.split(" What the embedded")[0] + f" Mean +- std over {len(a.dirs)} seed(s) (flownar.claims)."
    for path in save_table(seeds_table(a.dirs), Path(a.out) / "table_seeds", seeds_banner):
        print("wrote", path)
    return 0
