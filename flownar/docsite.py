"""The documentation site (``make docs``, MkDocs): what it takes from the committed outputs, and the README's
generated headline table.

* :func:`stage`: copies each layout's committed output folder (``paper_figures/<dataset>/default/``: its results
  page ``SUMMARY.md``, tables, figures and executed notebooks; not the per-clip predictions) to
  ``docs/results/<dataset>/``, where the site renders it as committed: notebooks are shown with their outputs,
  never re-executed. ``docs/results/`` is generated (git-ignored).
* :func:`headline_block` / :func:`check_readme`: the README's headline table is the block between
  ``<!-- headline: <csv> -->`` and ``<!-- /headline -->``, written from the CSV it names (``make readme`` rewrites
  it); a README whose numbers differ from that CSV fails ``tests/test_docs.py``.
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
