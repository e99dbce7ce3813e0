"""Tables and figures that always say where their numbers come from.

Every artefact written for a run carries a data banner: the embedded synthetic data is never to be mistaken for
the paper's. Paper numbers appear only in labelled reference columns read from ``flownar/resources``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import paths


def data_banner(data) -> str:
    """One line naming the data a result was computed on."""
    card = data.synthetic_card
    if card is not None:
        return (
            f"EMBEDDED SYNTHETIC DATA ({data.dataset} layout, profile {card.get('profile')}, seed {card.get('seed')}): "
            "not the paper's data; numbers are not comparable to the paper's."
        )
    return f"FlowNar-Data {data.dataset} ({len(data.videos)} videos in features_metadata.json)"


def display_path(p: str | Path) -> str:
    """A path relative to the project root when inside it (stable across machines), else absolute."""
    p = Path(p).resolve()
    try:
        return str(p.relative_to(paths.project_root()))
    except ValueError:
        return str(p)


def save_table(df: pd.DataFrame, stem: str | Path, banner: str, float_format: str = "%.2f") -> list[Path]:
    """Write ``stem.csv`` (banner as a leading ``#`` comment), ``stem.md`` (banner as a quote) and ``stem.tex``
    (banner as the caption). Returns the written paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    csv, md, tex = stem.with_suffix(".csv"), stem.with_suffix(".md"), stem.with_suffix(".tex")
    with open(csv, "w", encoding="utf-8") as f:
        f.write(f"# {banner}\n")
        df.to_csv(f, float_format=float_format)
    md.write_text(f"> {banner}\n\n" + df.to_markdown(floatfmt=float_format.lstrip("%")) + "\n", encoding="utf-8")
    body = df.to_latex(float_format=lambda x: float_format % x, escape=True)
    caption = banner.replace("_", r"\_").replace("%", r"\%")
    tex.write_text(
        "\\begin{table}\n\\centering\n" + body + f"\\caption{{{caption}}}\n\\end{{table}}\n", encoding="utf-8"
    )
    return [csv, md, tex]


def read_table_csv(path: str | Path) -> pd.DataFrame:
    """Read a table written by :func:`save_table` (skips the banner comment)."""
    return pd.read_csv(path, comment="#", index_col=0)


def save_figure(fig, stem: str | Path, banner: str | None = None) -> list[Path]:
    """Save ``stem.png`` and ``stem.pdf``; the banner goes in small print at the bottom."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    if banner:
        fig.text(0.5, -0.01, banner, ha="center", va="top", fontsize=7, color="firebrick", wrap=True)
    out = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    fig.savefig(out[0], dpi=150, bbox_inches="tight", metadata=None)
    fig.savefig(out[1], bbox_inches="tight", metadata={"CreationDate": None})
    return out


def relativize_paths(path: str | Path, root: str | Path | None = None) -> int:
    """Rewrite a text file (an executed notebook, a JSON record) so that it names paths inside the project relative
    to it (papermill records the absolute input and output paths and parameters; outputs print absolute paths):
    committed outputs then name no machine. Returns how many occurrences were replaced."""
    path = Path(path)
    root = str(Path(root) if root else paths.project_root()).rstrip("/")
    text = path.read_text(encoding="utf-8")
    n = text.count(root)
    if n:
        path.write_text(text.replace(root + "/", "").replace(root, "."), encoding="utf-8")
    return n


if __name__ == "__main__":  # python -m flownar.report relativize NOTEBOOK... (make reproduce-* runs it)
    import sys

    if len(sys.argv) < 3 or sys.argv[1] != "relativize":
        raise SystemExit("python -m flownar.report relativize NOTEBOOK...")
    for nb in sys.argv[2:]:
        relativize_paths(nb)
