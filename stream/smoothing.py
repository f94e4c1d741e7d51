"""From window scores to a verdict: the mean calibrated score of the last K windows, hysteresis.

A stream starts ``uncertain``. The smoothed score must reach ``+enter`` to become ``bonafide``
(``-enter`` for ``spoof``), and a verdict, once reached, holds until the smoothed score falls back
past ``leave`` (toward the other side): one borderline window does not flip the verdict back and
forth.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class SmoothingOptions:
    """``windows``: K, how many of the last scored windows are averaged; ``enter`` and ``leave``:
    hysteresis margins on the calibrated scale (0 is the bundle's threshold), leave <= enter."""

    windows: int = 3
    enter: float = 0.5
    leave: float = 0.0

    def __post_init__(self) -> None:
        if self.windows < 1:
            raise ValueError(f"smoothing needs at least one window, got {self.windows}")
        if not 0 <= self.leave <= self.enter:
            raise ValueError(
                f"need 0 <= leave <= enter, got leave {self.leave}, enter {self.enter}"
            )


def decide(smoothed: float, previous: str, options: SmoothingOptions) -> str:
    """The verdict for a smoothed score, given the previous verdict (hysteresis)."""
    if smoothed >= options.enter:
        return "bonafide"
    if smoothed <= -options.enter:
        return "spoof"
    if previous == "bonafide" and smoothed > options.leave:
        return "bonafide"
    if previous == "spoof" and smoothed < -options.leave:
        return "spoof"
    return "uncertain"


class Smoother:
    """Per-model verdict state of one stream."""

    def __init__(self, options: SmoothingOptions | None = None) -> None:
        self.options = options or SmoothingOptions()
        self._last: deque[float] = deque(maxlen=self.options.windows)
        self.verdict = "uncertain"

    def update(self, calibrated: float) -> tuple[float, str]:
        """Add a window's calibrated score; returns (smoothed score, verdict)."""
        self._last.append(float(calibrated))
        smoothed = sum(self._last) / len(self._last)
        self.verdict = decide(smoothed, self.verdict, self.options)
        return smoothed, self.verdict
