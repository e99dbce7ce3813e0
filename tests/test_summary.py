"""SUMMARY.md, an output folder's results page: assembled from the folder's own files, never typed."""

import json

import pandas as pd
import pytest

from flownar.cli import main
from flownar.errors import FlowNarError
from flownar.report import save_table
from flownar.summary import SUMMARY_FILE, summary_page


def test_the_page_shows_the_folders_tables_figures_and_provenance(tmp_path):
    banner = "EMBEDDED SYNTHETIC DATA (test): not the paper's data."
    save_table(
        pd.DataFrame({"F1": [80.47]}, index=pd.Index(["FlowNar"], name="system")),
        tmp_path / "table_self_conditioned",
        banner,
    )
    save_table(pd.DataFrame({"x": [1.0]}), tmp_path / "table_extra", banner)
    (tmp_path / "fig_comparison.png").write_bytes(b"png")
    (tmp_path / "fig_other.png").write_bytes(b"png")
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "03_self_conditioned_eval.ipynb").write_text("{}")
    prov = {
        "dataset": "ek100",
        "profile": "default",
        "seed": 0,
        "git": {"commit": "abc"},
        "data": {"root": "data/ek100/default"},
    }
    (tmp_path / "provenance.json").write_text(json.dumps(prov))
    assert main(["summary", str(tmp_path)]) == 0
    page = (tmp_path / SUMMARY_FILE).read_text()
    assert page.startswith("# Results: ek100 / default\n\n> " + banner)
    table = (tmp_path / "table_self_conditioned.md").read_text().split("\n\n", 1)[1].strip()
    assert table in page  # the table as written
    assert "![fig_comparison](fig_comparison.png)" in page and "- [fig_other.png](fig_other.png)" in page
    assert "- [table_extra.md](table_extra.md)" in page and "(notebooks/03_self_conditioned_eval.ipynb)" in page
    assert "commit `abc`" in page and "data `data/ek100/default`" in page
    assert summary_page(tmp_path) == page  # deterministic: the same files give the same page
    with pytest.raises(FlowNarError, match="no such output folder"):
        summary_page(tmp_path / "nope")
