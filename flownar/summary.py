"""A results page per output folder, written by the pipeline: ``SUMMARY.md`` in ``paper_figures/<dataset>/<profile>/``.

It is assembled from the files the notebooks wrote, never typed: the data banner, the provenance (commit, data,
when), the headline tables (their ``.md`` form, as written) each with its figure, the claims table where the folder
has one, then every other table, figure and executed notebook as links. ``make reproduce-*`` writes it last
(``flownar summary DIR``); the README and the documentation link to it.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import FlowNarError

SUMMARY_FILE = "SUMMARY.md"
#: (table stem, figure stem or None, heading): what the page shows first, in this order, where present
HEADLINE = (
    ("table_claims", None, "Claims over seeds (paper vs ours, verdict)"),
    ("table_seeds", None, "Over seeds: each system, mean +- std"),
    ("table_self_conditioned", "fig_comparison", "Self-conditioned narration, the paper's scoring beside the paper"),
    ("table_self_conditioned_corrected", None, "Self-conditioned narration, corrected scoring"),
    ("table_teacher_forcing", None, "Teacher-forced metrics"),
    ("table_content", "fig_content", "What is said: object named right, narrations closing a segment"),
    ("table_memory_gap", None, "What is said on memory segments, by gap"),
    ("table_qa", "fig_qa", "Questions during the stream: answers right"),
    ("table_efficiency", "fig_efficiency", "Efficiency: cache and compute"),
    ("table_position", "fig_position", "F1 along the stream, in training caps"),
)


def _table_body(md: Path) -> tuple[str, str]:
    """(banner, table) of a table written by :func:`flownar.report.save_table` (banner as a leading quote)."""
    lines = md.read_text(encoding="utf-8").splitlines()
    quote = [x[2:] for x in lines if x.startswith("> ")]
    table = [x for x in lines if not x.startswith(">")]
    return " ".join(quote), "\n".join(table).strip()


def summary_page(out_dir: str | Path) -> str:
    """The Markdown of ``out_dir``'s results page (see the module docstring)."""
    d = Path(out_dir)
    if not d.is_dir():
        raise FlowNarError(f"{d}: no such output folder")
    prov_file = d / "provenance.json"
    prov = json.loads(prov_file.read_text()) if prov_file.is_file() else {}
    title = f"{prov.get('dataset', d.parent.name)} / {prov.get('profile', d.name)}"
    parts = [f"# Results: {title}", "", "Written by `flownar summary` from the files in this folder; do not edit.", ""]
    shown: set[str] = set()
    main_table = d / "table_self_conditioned.md"
    if main_table.is_file():  # the data banner ("not the paper's data" on the embedded default), as it carries it
        parts[1:1] = ["", f"> {_table_body(main_table)[0]}"]
    for stem, fig, heading in HEADLINE:
        md = d / f"{stem}.md"
        if not md.is_file():
            continue
        _, table = _table_body(md)
        parts += [f"## {heading}", "", f"[`{stem}.csv`]({stem}.csv)", "", table, ""]
        shown.add(md.name)
        if fig and (d / f"{fig}.png").is_file():
            parts += [f"![{fig}]({fig}.png)", ""]
            shown.add(f"{fig}.png")
    if prov:
        git, data = prov.get("git", {}), prov.get("data", {})
        parts += [
            "## Provenance",
            "",
            f"- commit `{git.get('commit', '?')}`" + (" (with uncommitted changes)" if git.get("dirty") else ""),
            f"- data `{data.get('root', '?')}`, sha256 `{str(data.get('sha256', '?'))[:16]}`",
            f"- seed {prov.get('seed', '?')}, made {prov.get('created', '?')} by `{prov.get('command', '?')}`",
            "",
        ]
    others = sorted(p.name for p in d.glob("*.md") if p.name not in shown and p.name != SUMMARY_FILE)
    figures = sorted(p.name for p in d.glob("fig_*.png") if p.name not in shown)
    notebooks = sorted(p.name for p in (d / "notebooks").glob("*.ipynb")) if (d / "notebooks").is_dir() else []
    for heading, names, prefix in (
        ("Other tables", others, ""),
        ("Other figures", figures, ""),
        ("Executed notebooks", notebooks, "notebooks/"),
    ):
        if names:
            parts += [f"## {heading}", ""] + [f"- [{n}]({prefix}{n})" for n in names] + [""]
    return "\n".join(parts).rstrip() + "\n"


def write_summary(out_dir: str | Path) -> Path:
    path = Path(out_dir) / SUMMARY_FILE
    path.write_text(summary_page(out_dir), encoding="utf-8")
    return path
