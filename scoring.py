"""Offline scoring: a whole signal, cut into sliding windows, scored in batches by one bundle.

The same windows, padding and score calibration are what the streaming sessions use, so offline
and streaming scores of the same audio agree.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from voicescreen.audio import HOP_SECONDS, SAMPLE_RATE, load_audio, sliding_windows
from voicescreen.models.bundle import Bundle

BATCH = 16  # windows per model call offline


def verdict_of(calibrated: float) -> str:
    return "bonafide" if calibrated >= 0 else "spoof"


@dataclass
class WindowScore:
    index: int
    start: float  # seconds in the source
    end: float
    score: float  # raw, in the bundle's convention
    calibrated: float  # scale * (score - threshold); > 0 is bona fide
    verdict: str


@dataclass
class FileScore:
    """The score of one file: the mean of its window scores, and the windows themselves."""

    file: str
    duration: float  # seconds
    bundle: str
    architecture: str
    threshold: float
    score: float
    calibrated: float
    verdict: str
    windows: list[WindowScore] = field(default_factory=list)

    def to_dict(self, windows: bool = True) -> dict:
        d = asdict(self)
        if not windows:
            d.pop("windows")
        return d


class Scorer:
    """Scores signals and files with one bundle through one runtime."""

    def __init__(
        self, bundle: Bundle, backend: str = "onnx", runtime=None, **runtime_options
    ) -> None:
        """``runtime``: score with this one (a remote backend's, say) instead of making the
        bundle's ``backend`` runtime with ``runtime_options``."""
        if runtime is None and bundle.plan is not None:  # whole windows: nothing to reuse
            bundle = bundle.with_plan(bundle.plan.for_files())
        self.bundle = bundle
        self.spec = bundle.score
        self.runtime = runtime or bundle.runtime(backend, **runtime_options)

    def score_windows(self, windows: np.ndarray) -> np.ndarray:
        """Raw scores of (N, input_samples) windows, computed in batches."""
        out = [self.runtime(windows[i : i + BATCH])[1] for i in range(0, len(windows), BATCH)]
        return np.concatenate(out).astype(np.float64)

    def score_signal(self, x: np.ndarray, name: str = "-", hop: float = HOP_SECONDS) -> FileScore:
        """Score a 16 kHz mono signal window by window (hop in seconds)."""
        wins = list(sliding_windows(x, self.bundle.input_samples, int(round(hop * SAMPLE_RATE))))
        raw = self.score_windows(np.stack([w.samples for w in wins]))
        cal = self.spec.calibrate(raw)
        scored = [
            WindowScore(
                w.index,
                w.start / SAMPLE_RATE,
                w.end / SAMPLE_RATE,
                float(r),
                float(c),
                verdict_of(c),
            )
            for w, r, c in zip(wins, raw, cal, strict=True)
        ]
        mean_raw = float(raw.mean())
        mean_cal = float(self.spec.calibrate(mean_raw))
        return FileScore(
            file=name,
            duration=len(x) / SAMPLE_RATE,
            bundle=self.bundle.name,
            architecture=self.bundle.architecture,
            threshold=self.spec.threshold,
            score=mean_raw,
            calibrated=mean_cal,
            verdict=verdict_of(mean_cal),
            windows=scored,
        )

    def score_file(self, path: str | Path, hop: float = HOP_SECONDS) -> FileScore:
        return self.score_signal(load_audio(path), str(path), hop)
