"""The run profiles, one record each: what a profile means for data, narration, training length and hardware.

``smoke`` (seconds; CI) and ``default`` (the embedded default, CPU) run on the embedded synthetic world of their
size; ``paper`` runs on FlowNar-Data with a local Llama, on GPUs. Every choice that depends on the profile is a
property here, decided in one place (the training recipe of each profile is :data:`flownar.train.config.
TRAIN_PROFILES`, the world's size :data:`flownar.data.world.SYNTH_PROFILES`, the training cap
:func:`flownar.data.world.training_cap`).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import FlowNarError


@dataclass(frozen=True)
class Profile:
    name: str
    real_data: bool  # FlowNar-Data and a local Llama (no embedded world): the paper's scale
    narration_cap: int  # the most tokens one narration may take (100: the original's, Llama-3 BPE; 32 word-level)
    bench_config: str  # the LLM size notebook 04 benchmarks (flownar.efficiency.bench_config)
    bench_frames: int  # and the stream length it runs

    @property
    def embedded(self) -> bool:
        """Runs on the embedded synthetic world (written on demand)."""
        return not self.real_data

    @property
    def on_gpus(self) -> bool:
        """Narration and benchmarks go to the GPUs (when there are any); the embedded profiles stay on the CPU,
        where several systems narrate at once, one thread each."""
        return self.real_data


PROFILES: dict[str, Profile] = {
    "smoke": Profile("smoke", real_data=False, narration_cap=32, bench_config="micro", bench_frames=100),
    "default": Profile("default", real_data=False, narration_cap=32, bench_config="mini", bench_frames=1000),
    "paper": Profile("paper", real_data=True, narration_cap=100, bench_config="llama-3.2-1b", bench_frames=10_000),
}


def get(name: str | None) -> Profile:
    """The profile called ``name`` (None: ``default``, e.g. a run folder that does not record one)."""
    name = name or "default"
    try:
        return PROFILES[name]
    except KeyError:
        raise FlowNarError(f"unknown profile {name!r}; expected one of {', '.join(PROFILES)}") from None
