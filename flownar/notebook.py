"""The set-up every numbered notebook starts with, in one place.

``nb = setup(dataset, data_root, profile, seed, output_dir, systems)`` prepares the dataset (real, or the embedded
synthetic one of the profile), shows its banner ("not the paper's data" on the embedded default), and gives the
output folder, the systems (:mod:`flownar.systems`) and their run folders, all from :mod:`flownar.paths`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import paths
from . import systems as registry


@dataclass
class Notebook:
    dataset: str
    profile: str
    seed: int
    out: Path  # tables and figures (paper_figures/<dataset>/<profile> unless output_dir says otherwise)
    data: object  # the FlowNarData of the run
    banner: str
    systems: list[str] = field(default_factory=list)

    @property
    def runs(self) -> dict[str, Path]:
        """Each system's run folder (runs/<dataset>/<profile>/<system>)."""
        return {s: paths.run_dir(self.dataset, self.profile, s) for s in self.systems}

    def require_trained(self) -> dict[str, Path]:
        """The run folders, after checking that every system has been trained (notebook 01)."""
        missing = [s for s, r in self.runs.items() if not (r / "config.json").is_file()]
        assert not missing, f"not trained yet (run notebook 01): {missing}"
        return self.runs

    def require_predictions(self) -> None:
        """Check that every system has self-conditioned predictions (notebook 03)."""
        missing = [s for s in self.systems if not (self.out / "predictions" / s).is_dir()]
        assert not missing, f"no predictions yet (run notebook 03): {missing}"


def setup(
    dataset: str, data_root: str, profile: str, seed: int, output_dir: str = "", systems: str = "all", show: bool = True
) -> Notebook:
    """Prepare the notebook's dataset and paths; displays the data banner. ``systems``: ``all`` (every registered
    system, :func:`flownar.systems.select`) or comma-separated keys."""
    from .data.prepare import prepare_dataset
    from .report import data_banner

    out = Path(output_dir) if output_dir else paths.figures_dir(dataset, profile)
    out.mkdir(parents=True, exist_ok=True)
    data = prepare_dataset(dataset, data_root or None, profile, seed, progress=False)
    banner = data_banner(data)
    if show:
        from IPython.display import Markdown, display

        display(Markdown(f"**{banner}**"))
    return Notebook(dataset, profile, seed, out, data, banner, registry.select(systems))
