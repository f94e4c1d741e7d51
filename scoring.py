"""Offline scoring: a whole signal, cut into sliding windows, scored in batches by one bundle.

The same windows, padding, score calibration and verdict rule (``voicescreen.verdict``:
smoothing, hysteresis, and ``uncertain`` below a minimum of speech, counted by the same VAD) are
what the streaming sessions use, so offline and streaming scores of the same audio agree. A
file's channel (``wideband`` or ``narrowband``, whose calibration of the bundle its scores get) is
measured from its sample rate and bandwidth (``audio.measure_channel``) unless the caller says
which it is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from voicescreen.audio import (
    HOP_SECONDS,
    SAMPLE_RATE,
    check_channel,
    measure_channel,
    read_audio,
    sliding_windows,
)
from voicescreen.models.bundle import Bundle
from voicescreen.runtimes import open_runtime
from voicescreen.stream.vad import VadOptions, speech_before
from voicescreen.verdict import Smoother, SmoothingOptions, summarise

BATCH = 16  # windows per model call offline


@dataclass
class WindowScore:
    index: int
    start: float  # seconds in the source
    end: float
    score: float  # raw, in the bundle's convention
    calibrated: float  # scale * (score - threshold); > 0 is bona fide
    smoothed: float  # mean calibrated score of the last K windows
    verdict: str  # the verdict rule's after this window, as a stream's score event


@dataclass
class FileScore:
    """The score of one file: the mean of its window scores, and the windows themselves."""

    file: str
    duration: float  # seconds
    bundle: str
    architecture: str
    threshold: float  # of the calibration used
    score: float
    calibrated: float
    verdict: str  # the verdict rule on the mean, as a stream's summary
    windows: list[WindowScore] = field(default_factory=list)
    channel: str = "wideband"  # the file's kind of audio: wideband or narrowband
    calibration: str = "pooled"  # the bundle's calibration used: the channel's own, or pooled
    speech: float = 0.0  # seconds of speech in it (VAD voiced; all audio with the VAD off)
    reason: str | None = None  # why uncertain whatever the scores (too little speech)

    def to_dict(self, windows: bool = True) -> dict:
        d = asdict(self)
        if not windows:
            d.pop("windows")
        return d


class Scorer:
    """Scores signals and files with one bundle through one runtime."""

    def __init__(
        self,
        bundle: Bundle,
        backend: str = "onnx",
        runtime=None,
        *,
        smoothing: SmoothingOptions | None = None,
        vad: VadOptions | None = None,
        **runtime_options,
    ) -> None:
        """``runtime``: score with this one (a remote backend's, say) instead of making the
        bundle's ``backend`` runtime with ``runtime_options``; ``smoothing`` and ``vad``: the
        verdict rule and the VAD that counts speech for it, as a stream's session has them."""
        if runtime is None and bundle.plan is not None:  # whole windows: nothing to reuse
            bundle = bundle.with_plan(bundle.plan.for_files())
        self.bundle = bundle
        self.spec = bundle.score
        self.smoothing = smoothing or SmoothingOptions()
        self.vad = vad or VadOptions()
        self.runtime = runtime or open_runtime(bundle, backend, **runtime_options)

    def score_windows(self, windows: np.ndarray) -> np.ndarray:
        """Raw scores of (N, input_samples) windows, computed in batches."""
        out = [self.runtime(windows[i : i + BATCH])[1] for i in range(0, len(windows), BATCH)]
        return np.concatenate(out).astype(np.float64)

    def score_signal(
        self,
        x: np.ndarray,
        name: str = "-",
        hop: float = HOP_SECONDS,
        *,
        rate: int = SAMPLE_RATE,
        channel: str | None = None,
    ) -> FileScore:
        """Score a 16 kHz mono signal window by window (hop in seconds). ``rate``: the sample
        rate of its source; ``channel``: wideband or narrowband, None to measure it."""
        channel = check_channel(channel) or measure_channel(x, rate)
        spec, calibration = self.spec.for_channel(channel)
        wins = list(sliding_windows(x, self.bundle.input_samples, int(round(hop * SAMPLE_RATE))))
        raw = self.score_windows(np.stack([w.samples for w in wins]))
        cal = spec.calibrate(raw)
        speech = speech_before(x, self.vad)
        smoother = Smoother(self.smoothing)
        scored = []
        for w, r, c in zip(wins, raw, cal, strict=True):
            smoothed, verdict = smoother.update(float(c), speech(w.end))
            scored.append(
                WindowScore(
                    w.index,
                    w.start / SAMPLE_RATE,
                    w.end / SAMPLE_RATE,
                    float(r),
                    float(c),
                    smoothed,
                    verdict,
                )
            )
        mean_raw = float(raw.mean())
        mean_cal = float(spec.calibrate(mean_raw))
        heard = speech(x.size)
        whole = summarise([mean_cal], heard, self.smoothing)
        return FileScore(
            file=name,
            duration=len(x) / SAMPLE_RATE,
            bundle=self.bundle.name,
            architecture=self.bundle.architecture,
            threshold=spec.threshold,
            score=mean_raw,
            calibrated=mean_cal,
            verdict=whole.verdict,
            windows=scored,
            channel=channel,
            calibration=calibration,
            speech=heard,
            reason=whole.reason,
        )

    def score_file(
        self, path: str | Path, hop: float = HOP_SECONDS, channel: str | None = None
    ) -> FileScore:
        x, rate = read_audio(path)
        return self.score_signal(x, str(path), hop, rate=rate, channel=channel)
