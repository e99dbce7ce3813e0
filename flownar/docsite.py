"""The documentation site (``make docs``, MkDocs): what it takes from the committed outputs, and the README's
generated headline table.

* :func:`stage`: copies each layout's committed output folder (``paper_figures/<dataset>/default/``: its results
  page ``SUMMARY.md``, tables, figures and executed notebooks; not the per-clip predictions) to
  ``docs/results/<dataset>/``, where the site renders it as committed: notebooks are shown with their outputs,
  never re-executed. ``docs/results/`` is generated (git-ignored).
* :func:`headline_block` / :func:`check_readme`: the README's headline table is the block between
  ``<!-- headline: <csv> -->`` and ``<!-- /headline -->``, written from the CSV it names (``make readme`` rewrites
  it); a README whose numbers differ from that CSV fails ``tests/test_docs.py``.
* :func:`fill_figures`: a number in a page's prose is written as a placeholder that names its CSV, row and column
  (``{{ cell | CSV | ROW | COLUMN }}``, ``{{ range | ... }}``, ``{{ below | ... }}``) and is read from the committed
  file when the site is built (the MkDocs hook ``flownar/resources/mkdocs_hook.py``); a placeholder whose file, row
  or column is missing fails the build with its name.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from . import paths
from .errors import FlowNarError
from .report import read_table_csv

#: the layouts whose default-profile outputs the site shows
LAYOUTS = ("ek100", "ego4d", "egoexo4d")
SKIP = ("predictions", "metrics", "oracle", "qa")  # per-clip and per-system records: large, and not pages
HEADLINE_CSV = "paper_figures/ek100/default/table_self_conditioned_corrected.csv"
HEADLINE_COLUMNS = ("Precision", "Recall", "F1", "CIDEr", "paper: F1")
_BLOCK = re.compile(r"<!-- headline: (?P<csv>\S+) -->\n(?P<body>.*?)<!-- /headline -->\n", re.S)


def stage(root: Path | None = None, profile: str = "default") -> list[Path]:
    """Copy every layout's output folder into ``docs/results/<dataset>/`` (replacing what was there); returns the
    staged folders. A layout without committed outputs is an error naming the folder."""
    root = root or paths.project_root()
    out = root / "docs" / "results"
    staged = []
    for ds in LAYOUTS:
        src = root / "paper_figures" / ds / profile
        if not (src / "SUMMARY.md").is_file():
            raise FlowNarError(f"{src}: no SUMMARY.md (run make reproduce-{ds}, which writes it last)")
        dst = out / ds
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(src, dst, ignore=_skip_records(src))
        staged.append(dst)
    return staged


def _skip_records(top: Path):
    return lambda d, names: [n for n in names if Path(d) == top and n in SKIP]


def headline_block(csv: str, root: Path | None = None) -> str:
    """The Markdown table of the README's headline: the columns :data:`HEADLINE_COLUMNS` of ``csv`` (relative to
    the project root), one row per system, numbers as the CSV holds them to two decimals, the data banner below."""
    root = root or paths.project_root()
    path = root / csv
    df = read_table_csv(path)
    cols = [c for c in HEADLINE_COLUMNS if c in df.columns]
    if "F1" not in cols:
        raise FlowNarError(f"{path}: no F1 column (the README's headline table is read from it)")
    rows = ["| system | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for system, r in df[cols].iterrows():
        cells = ["" if r[c] != r[c] else f"{r[c]:.2f}" for c in cols]  # NaN: the paper has no such row
        rows.append(f"| {system} | " + " | ".join(cells) + " |")
    banner = path.read_text(encoding="utf-8").splitlines()[0].lstrip("# ").strip()
    return "\n".join(rows) + f"\n\n*{banner}* (from [`{csv}`]({csv}))\n"


def check_readme(readme: Path | None = None) -> list[str]:
    """What in the README's headline blocks differs from the CSVs they name (empty: all equal)."""
    readme = readme or paths.project_root() / "README.md"
    text = readme.read_text(encoding="utf-8")
    blocks = list(_BLOCK.finditer(text))
    if not blocks:
        return [f"{readme}: no <!-- headline: CSV --> block"]
    return [
        f"{readme}: the headline block of {m['csv']} differs from the CSV (make readme rewrites it)"
        for m in blocks
        if m["body"] != headline_block(m["csv"], readme.parent)
    ]


_FIGURE = re.compile(r"\{\{\s*(?P<body>(?:cell|range|below)\s*\|[^}]*?)\s*\}\}")
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def _select(df, rows: str, where: str) -> list[str]:
    """Row names: ``*`` (all rows with a number in the column), one row, or names separated by ``,``; each the exact
    name, a unique prefix or a unique part of one row's name."""
    if rows == "*":
        return list(df.index)

    def match(want: str) -> list:
        return (
            [r for r in df.index if r == want]
            or [r for r in df.index if str(r).startswith(want)]
            or [r for r in df.index if want in str(r)]
        )

    if len(match(rows)) == 1:  # one row whose name has a comma
        return match(rows)
    out = []
    for want in (r.strip() for r in rows.split(",")):
        hits = match(want)
        if len(hits) != 1:
            raise FlowNarError(f"{where}: row {want!r} matches {len(hits)} rows of {list(df.index)}")
        out.append(hits[0])
    return out


def _numbers(cell, where: str) -> list[float]:
    """The values of a cell: a number; "72.1 +- 4.4" (the mean); "0.92 / 0.90 / ..." (each)."""
    parts = str(cell).split(" / ")
    got = [_NUMBER.match(p.strip()) for p in parts]
    if not all(got):
        raise FlowNarError(f"{where}: the cell {cell!r} holds no number")
    return [float(m.group()) for m in got]


def figure(spec: str, root: Path | None = None) -> str:
    """The text of one placeholder ``KIND | CSV | ROWS | COLUMN [| ARG]`` (CSV relative to the project root):

    * ``cell``: the cell as the CSV holds it ("+-" written "±"), or its number formatted by ARG (e.g. ``.1f``);
    * ``range``: "lo-hi" over the numbers of the rows' cells (a single value when they are equal), ARG the format;
    * ``below``: "k of n": how many of those numbers are below ARG."""
    root = root or paths.project_root()
    parts = [p.strip() for p in spec.split("|")]
    kind, csv, rows, column, arg = (parts + [""] * 5)[:5]
    where = f"{{{{ {spec} }}}}"
    path = root / csv
    if not path.is_file():
        raise FlowNarError(f"{where}: no file {path}")
    df = read_table_csv(path)
    if column not in df.columns:
        raise FlowNarError(f"{where}: {csv} has no column {column!r} (columns: {list(df.columns)})")
    cells = [df.at[r, column] for r in _select(df, rows, where)]
    if rows == "*":  # every row that has a number here (not the oracle's or the habit's "-")
        cells = [c for c in cells if _NUMBER.match(str(c).strip())]
    if kind == "cell":
        if len(cells) != 1:
            raise FlowNarError(f"{where}: a cell needs one row")
        return format(_numbers(cells[0], where)[0], arg) if arg else str(cells[0]).replace("+-", "±")
    values = [v for c in cells for v in _numbers(c, where)]
    if kind == "range":
        lo, hi = (format(x, arg or "g") for x in (min(values), max(values)))
        return lo if lo == hi else f"{lo}-{hi}"
    if kind == "below":
        return f"{sum(v < float(arg) for v in values)} of {len(values)}"
    raise FlowNarError(f"{where}: unknown kind {kind!r} (cell, range, below)")


# code blocks and spans first: a placeholder there is shown as written, not filled
_CODE_OR_FIGURE = re.compile(r"(?P<code>```.*?```|`[^`\n]*`)|" + _FIGURE.pattern, re.S)


def fill_figures(markdown: str, root: Path | None = None) -> str:
    """``markdown`` with every placeholder outside code replaced by :func:`figure`."""
    return _CODE_OR_FIGURE.sub(lambda m: m["code"] or figure(m["body"], root), markdown)


def write_readme(readme: Path | None = None) -> Path:
    """Rewrite every headline block of the README from the CSV it names."""
    readme = readme or paths.project_root() / "README.md"
    text = readme.read_text(encoding="utf-8")
    new = _BLOCK.sub(
        lambda m: f"<!-- headline: {m['csv']} -->\n{headline_block(m['csv'], readme.parent)}<!-- /headline -->\n", text
    )
    readme.write_text(new, encoding="utf-8")
    return readme


if __name__ == "__main__":  # python -m flownar.docsite stage|readme
    import sys

    what = sys.argv[1] if len(sys.argv) > 1 else "stage"
    if what == "stage":
        for d in stage():
            print(f"staged {d}")
    elif what == "readme":
        print(f"wrote {write_readme()}")
    else:
        raise SystemExit(f"python -m flownar.docsite stage|readme, not {what!r}")
