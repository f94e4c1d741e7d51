"""The verdict rule: calibrated window scores in, ``bonafide``, ``spoof`` or ``uncertain`` out.

Every surface decides with this one rule: a live stream's sessions (server, ``tap``,
``monitor``), the offline scoring of a file (``score``, ``POST /v1/score``) and a stream's or
file's summary::

    window scores (calibrated: 0 is the bundle's threshold, > 0 bona fide)
        -> mean of the last K scored windows (the smoothed score)
        -> hysteresis: reach +enter to become bonafide, -enter to become spoof; a verdict holds
           until the smoothed score falls back past leave (toward the other side)
        -> uncertain, whatever the scores, while less than min_speech seconds of speech has
           been heard: a tenth of a second of a voice says nothing about who or what spoke

A signal starts ``uncertain``. A whole signal's verdict (a stream's summary, a file's) is the
same rule applied to the mean of all its scored windows, from ``uncertain``. Speech is what the
VAD calls voiced (``voicescreen.stream.vad``), counted up to the end of the window being
decided; with the VAD off, every second of audio counts.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

VERDICTS = ("bonafide", "spoof", "uncertain")
MIN_SPEECH_SECONDS = 1.0


@dataclass(frozen=True)
class SmoothingOptions:
    """``windows``: K, how many of the last scored windows are averaged; ``enter`` and ``leave``:
    hysteresis margins on the calibrated scale (0 is the bundle's threshold), leave <= enter;
    ``min_speech``: seconds of speech a signal needs before it gets any verdict but
    ``uncertain``."""

    windows: int = 3
    enter: float = 0.5
    leave: float = 0.0
    min_speech: float = MIN_SPEECH_SECONDS

    def __post_init__(self) -> None:
        if self.windows < 1:
            raise ValueError(f"smoothing needs at least one window, got {self.windows}")
        if not 0 <= self.leave <= self.enter:
            raise ValueError(
                f"need 0 <= leave <= enter, got leave {self.leave}, enter {self.enter}"
            )
        if not self.min_speech >= 0:
            raise ValueError(f"min_speech must be >= 0 seconds, got {self.min_speech}")


def decide(smoothed: float, previous: str, options: SmoothingOptions) -> str:
    """The verdict for a smoothed score, given the previous verdict (hysteresis); the speech
    rule is ``judge``'s."""
    if smoothed >= options.enter:
        return "bonafide"
    if smoothed <= -options.enter:
        return "spoof"
    if previous == "bonafide" and smoothed > options.leave:
        return "bonafide"
    if previous == "spoof" and smoothed < -options.leave:
        return "spoof"
    return "uncertain"


def too_little_speech(speech: float, options: SmoothingOptions) -> str | None:
    """Why a signal with ``speech`` seconds of speech stays uncertain, or None if it has enough."""
    if speech >= options.min_speech:
        return None
    return f"too little speech: {speech:.2f} s heard, a verdict needs {options.min_speech:g} s"


def judge(smoothed: float, previous: str, speech: float, options: SmoothingOptions) -> str:
    """The rule whole: ``uncertain`` below ``min_speech`` seconds of speech, else ``decide``."""
    if too_little_speech(speech, options):
        return "uncertain"
    return decide(smoothed, previous, options)


@dataclass(frozen=True)
class Summary:
    """A whole signal's verdict: the mean calibrated score of its scored windows (None if none
    was scored), the verdict, and why it is ``uncertain`` when the rule says so for a reason
    other than the score (too little speech, nothing scored)."""

    mean: float | None
    verdict: str
    reason: str | None = None


def summarise(scores: Sequence[float], speech: float, options: SmoothingOptions) -> Summary:
    """The verdict of a whole signal from all its scored windows' calibrated scores."""
    if len(scores) == 0:
        return Summary(None, "uncertain", "no window was scored")
    mean = float(sum(scores) / len(scores))
    verdict = judge(mean, "uncertain", speech, options)
    return Summary(mean, verdict, too_little_speech(speech, options))


class Smoother:
    """Per-model verdict state of one signal."""

    def __init__(self, options: SmoothingOptions | None = None) -> None:
        self.options = options or SmoothingOptions()
        self._last: deque[float] = deque(maxlen=self.options.windows)
        self.verdict = "uncertain"

    def update(self, calibrated: float, speech: float) -> tuple[float, str]:
        """Add a window's calibrated score, with the seconds of speech heard up to its end;
        returns (smoothed score, verdict)."""
        self._last.append(float(calibrated))
        smoothed = sum(self._last) / len(self._last)
        self.verdict = judge(smoothed, self.verdict, speech, self.options)
        return smoothed, self.verdict
