"""When to speak: the trigger that turns the model's frame decision into "narrate now" or "stay silent".

At each frame's last ``<v>`` the model predicts the next token; p = P(stay silent) is the probability of the
frame separator (the token that continues the frame run). The original's two-threshold rule speaks when
p < threshold, with threshold = ``threshold_high`` (0.8) once more than ``avg_duration`` (8) frames have passed
since the last narration, and ``threshold_low`` (0.5) before that: a narration soon after the previous one needs
more confidence. ``rule="single"`` uses ``threshold_high`` always.

Used by the streaming engine (:class:`flownar.stream.Narrator`) and by the decision probe
(:func:`flownar.eval.oracle.decision_probe`), which reports how often the rule would fire.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RULES = ("two_threshold", "single")


@dataclass(frozen=True)
class TriggerRule:
    threshold_high: float = 0.8
    threshold_low: float = 0.5
    avg_duration: int = 8
    rule: str = "two_threshold"

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {self.rule!r}")

    def threshold(self, frames_since_last: int) -> float:
        """The threshold on P(stay silent) ``frames_since_last`` frames after the last narration."""
        if self.rule == "single" or frames_since_last > self.avg_duration:
            return self.threshold_high
        return self.threshold_low

    def speaks(self, p_silent, frames_since_last: int):
        """Whether to narrate (a bool, or a bool array for an array of ``p_silent``)."""
        p = np.asarray(p_silent) if not isinstance(p_silent, float) else p_silent
        return p < self.threshold(frames_since_last)
