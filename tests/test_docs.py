"""The front door (issue 27): a short README whose headline numbers are the committed CSV's, and a documentation
site that builds with MkDocs in strict mode (broken links and anchors are errors) from the committed outputs."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flownar import docsite

ROOT = Path(__file__).resolve().parents[1]
MKDOCS = [sys.executable, "-m", "mkdocs", "build", "--strict"]  # not -q: it hides the warnings strict counts


def test_readme_is_short_and_its_headline_is_the_csv(tmp_path):
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150 and len(text.encode()) <= 15_000
    assert docsite.check_readme() == []
    # a number changed by hand is caught
    changed = re.sub(r"\| FlowNar \| ([0-9.]+) \|", "| FlowNar | 12.34 |", text, count=1)
    assert changed != text
    (tmp_path / "README.md").write_text(changed)
    shutil.copytree(
        ROOT / "paper_figures" / "ek100" / "default",
        tmp_path / "paper_figures" / "ek100" / "default",
        ignore=shutil.ignore_patterns("predictions", "notebooks", "*.png", "*.pdf"),
    )
    assert docsite.check_readme(tmp_path / "README.md") != []
    docsite.write_readme(tmp_path / "README.md")
    assert docsite.check_readme(tmp_path / "README.md") == []


def test_every_readme_link_to_the_repository_exists():
    text = (ROOT / "README.md").read_text()
    targets = [t.split("#")[0] for t in re.findall(r"\]\(([^)]+)\)", text) if not t.startswith(("http", "#"))]
    assert targets and not [t for t in targets if not (ROOT / t).exists()]


def test_the_site_builds_strict_with_every_layout_and_a_broken_link_fails(tmp_path):
    staged = docsite.stage()
    assert [d.name for d in staged] == list(docsite.LAYOUTS)
    assert not (staged[0] / "predictions").exists() and (staged[0] / "notebooks" / "01_training.ipynb").is_file()
    site = tmp_path / "site"
    out = subprocess.run([*MKDOCS, "-d", str(site)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    page = (site / "results" / "ego4d" / "notebooks" / "03_self_conditioned_eval" / "index.html").read_text()
    assert "EMBEDDED SYNTHETIC DATA" in page and "<img" in page  # rendered with its committed outputs
    assert "Narrator" in (site / "api" / "index.html").read_text()
    notes = (site / "results-notes" / "index.html").read_text()  # tables included from the committed files
    assert "DCM improves self-conditioned temporal F1" in notes and "<table>" in notes
    assert "{{" not in notes and "cell |" not in notes  # the prose's numbers filled from the CSVs

    # the same configuration on a copy of the pages with one broken link: the build fails and names it
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs, ignore=shutil.ignore_patterns("results"))
    (docs / "engine.md").write_text((docs / "engine.md").read_text() + "\nSee [nowhere](no-such-page.md).\n")
    cfg = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    cfg.pop("nav")
    cfg["docs_dir"] = str(docs)
    cfg["hooks"] = [str(ROOT / h) for h in cfg["hooks"]]  # relative to the configuration file
    cfg["plugins"] = [p for p in cfg["plugins"] if not (isinstance(p, dict) and "mkdocstrings" in p)]
    (docs / "api.md").write_text("# API\n")
    for md in docs.glob("*.md"):  # links into the staged results are not part of this copy
        md.write_text(re.sub(r"\]\(results/[^)]*\)", "](index.md)", md.read_text()))
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(cfg))
    out = subprocess.run(
        [*MKDOCS, "-f", str(tmp_path / "mkdocs.yml"), "-d", str(tmp_path / "s2")],
        cwd=ROOT,  # the results tables are included from the committed files, relative to the project
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode != 0 and "no-such-page.md" in out.stderr, out.stderr[-3000:]


def test_stage_names_a_missing_results_page(tmp_path):
    from flownar.errors import FlowNarError

    (tmp_path / "paper_figures" / "ek100" / "default").mkdir(parents=True)
    with pytest.raises(FlowNarError, match="no SUMMARY.md"):
        docsite.stage(tmp_path)


def test_no_hand_copied_result_table_in_the_docs():
    """Result tables are included from the committed files at build time (``--8<-- "paper_figures/..."``); a
    Markdown table row with two or more decimal numbers in a hand-written page is a copy that will drift."""
    copied = []
    for md in sorted((ROOT / "docs").glob("*.md")):
        for i, line in enumerate(md.read_text().splitlines(), 1):
            cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
            if sum(bool(re.fullmatch(r"[-+]?[0-9]+\.[0-9]+\S*", c)) for c in cells) >= 2:
                copied.append(f"{md.name}:{i}")
    assert not copied, copied
    included = [f for md in (ROOT / "docs").glob("*.md") for f in re.findall(r'--8<-- "([^"]+)"', md.read_text())]
    assert included and all((ROOT / f).is_file() for f in included)


def test_prose_numbers_are_read_from_the_csv_they_name(tmp_path):
    """A number in the prose is a placeholder ``{{ KIND | CSV | ROWS | COLUMN [| ARG] }}`` filled from the committed
    file at build time: a cell, a range and a count, from a table written like the pipeline's; a row, column or
    file that is not there is an error naming the placeholder."""
    import pandas as pd

    from flownar.errors import FlowNarError
    from flownar.report import save_table

    df = pd.DataFrame(
        {"F1": ["72.1 +- 4.4", "85.5 +- 4.1", "-"], "AUC per seed": ["0.92 / 0.89", "0.95 / 0.97", "-"]},
        index=pd.Index(["VideoLLM-online", "FlowNar (ours)", "World oracle (ceiling)"], name="system"),
    )
    save_table(df, tmp_path / "t", banner="EMBEDDED SYNTHETIC DATA")
    t = "t.csv"
    page = (
        f"F1 {{{{ cell | {t} | FlowNar | F1 }}}}; {{{{ range | {t} | VideoLLM-online, FlowNar | F1 | .0f }}}}; "
        f"{{{{ below | {t} | * | AUC per seed | 0.90 }}}} runs below 0.90; {{{{cell|{t}|online|F1|.1f}}}}"
    )
    assert docsite.fill_figures(page, tmp_path) == "F1 85.5 ± 4.1; 72-86; 1 of 4 runs below 0.90; 72.1"
    shown = "write `{{ cell | CSV | ROW | COLUMN }}`:\n```\n{{ range | CSV | * | F1 }}\n```\n"
    assert docsite.fill_figures(shown, tmp_path) == shown  # in code: shown as written
    for bad, why in (
        (f"{{{{ cell | {t} | MoD | F1 }}}}", "row 'MoD' matches 0 rows"),
        (f"{{{{ cell | {t} | FlowNar | CIDEr }}}}", "no column 'CIDEr'"),
        ("{{ cell | nowhere.csv | FlowNar | F1 }}", "no file"),
        (f"{{{{ cell | {t} | World oracle | F1 | .1f }}}}", "holds no number"),
    ):
        with pytest.raises(FlowNarError, match=re.escape(why)):
            docsite.fill_figures(bad, tmp_path)


def test_the_results_notes_hold_no_hand_written_result_number():
    """The results notes' percentages, F1 figures, AUCs and ± spreads are placeholders (above), and every one of
    them resolves against the committed outputs."""
    text = (ROOT / "docs" / "results-notes.md").read_text()
    prose = re.sub(r"\{\{.*?\}\}", "", text, flags=re.S)
    prose = "\n".join(line for line in prose.splitlines() if not line.startswith("|"))  # the time table
    hand = re.findall(r"\b\d+(?:\.\d+)? ?%|\b\d+\.\d+ ?± ?\d|\b0\.\d\d\b|\bF1 \d+\.\d", prose)
    allowed = {"5 %", "0.90", "0 %", "95 %"}  # warm-up, the AUC the world is built for, by construction, intervals
    assert not [h for h in hand if h not in allowed], [h for h in hand if h not in allowed]
    filled = docsite.fill_figures(text)
    assert "{{" not in filled and filled != text


def test_every_executed_notebook_of_every_layout_is_a_page():
    """The navigation lists exactly the executed notebooks each layout's committed output folder holds."""
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text().replace("!!python", "#"))["nav"]

    def leaves(node):
        if isinstance(node, dict):
            return [x for v in node.values() for x in leaves(v)]
        if isinstance(node, list):
            return [x for v in node for x in leaves(v)]
        return [node]

    listed = {p for p in leaves(nav) if p.endswith(".ipynb")}
    committed = {
        f"results/{ds}/notebooks/{nb.name}"
        for ds in docsite.LAYOUTS
        for nb in (ROOT / "paper_figures" / ds / "default" / "notebooks").glob("*.ipynb")
    }
    assert listed == committed, (sorted(committed - listed), sorted(listed - committed))
