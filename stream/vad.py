"""The VAD gate: which 10/20/30 ms frames of a 16 kHz stream hold speech (webrtcvad).

Frames tile the stream from sample 0 (frame ``i`` is samples ``[i*F, (i+1)*F)``). A window's voiced
ratio is the fraction of the frames lying wholly inside it that are voiced, so it depends only on
the audio, never on how the audio was chunked. A window is scored when its ratio reaches
``min_voiced``; otherwise the session reports it as ``no_speech``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from voicescreen.audio import SAMPLE_RATE

FRAME_MS = (10, 20, 30)  # what webrtcvad accepts


@dataclass(frozen=True)
class VadOptions:
    """``aggressiveness`` 0 (keeps most) to 3 (drops most non-speech); ``min_voiced`` in [0, 1]:
    the voiced fraction a window needs to be scored (0 scores every window); ``enabled=False``
    skips the VAD entirely (every window scored, no voiced ratio reported)."""

    aggressiveness: int = 2
    frame_ms: int = 30
    min_voiced: float = 0.3
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.aggressiveness not in (0, 1, 2, 3):
            raise ValueError(f"VAD aggressiveness must be 0-3, got {self.aggressiveness}")
        if self.frame_ms not in FRAME_MS:
            raise ValueError(f"VAD frame_ms must be one of {FRAME_MS}, got {self.frame_ms}")
        if not 0.0 <= self.min_voiced <= 1.0:
            raise ValueError(f"min_voiced must be in [0, 1], got {self.min_voiced}")

    @property
    def frame_samples(self) -> int:
        return SAMPLE_RATE * self.frame_ms // 1000


class VoiceGate:
    """Incremental webrtcvad over 16 kHz float32 audio: ``process(chunk)`` returns the voiced
    flags of the frames that chunk completed; ``voiced_ratio(start, end)`` asks about a window."""

    def __init__(self, options: VadOptions | None = None) -> None:
        import webrtcvad  # the webrtcvad-wheels distribution

        self.options = options or VadOptions()
        self.frame = self.options.frame_samples
        self._vad = webrtcvad.Vad(self.options.aggressiveness)
        self._pending = np.zeros(0, dtype=np.int16)  # samples of the frame not yet complete
        self._flags = np.zeros(0, dtype=bool)  # voiced flag per frame, from frame _first_frame
        self._first_frame = 0
        self._voiced_before_first = 0  # voiced frames among those forgotten

    @property
    def frames(self) -> int:
        """Frames classified so far."""
        return self._first_frame + self._flags.size

    def process(self, x: np.ndarray) -> np.ndarray:
        """Classify the frames completed by chunk ``x`` (16 kHz float32); returns their flags."""
        pcm = np.clip(np.round(np.asarray(x, np.float32) * 32768.0), -32768, 32767).astype("<i2")
        pcm = np.concatenate([self._pending, pcm])
        n = pcm.size // self.frame
        self._pending = pcm[n * self.frame :]
        data = pcm[: n * self.frame].tobytes()
        step = 2 * self.frame
        flags = np.fromiter(
            (
                self._vad.is_speech(data[i : i + step], SAMPLE_RATE)
                for i in range(0, len(data), step)
            ),
            dtype=bool,
            count=n,
        )
        self._flags = np.concatenate([self._flags, flags])
        return flags

    def voiced_ratio(self, start: int, end: int) -> float:
        """Fraction of voiced frames among those wholly inside samples [start, end); 0 if none.

        Frames not classified yet (past the audio processed so far) do not count.
        """
        first = max(-(-start // self.frame), self._first_frame)
        stop = min(end // self.frame, self.frames)
        if stop <= first:
            return 0.0
        flags = self._flags[first - self._first_frame : stop - self._first_frame]
        return float(np.count_nonzero(flags)) / flags.size

    def voiced_seconds(self, end: int | None = None) -> float:
        """Seconds of speech from the start of the stream: the voiced frames wholly before
        sample ``end`` (None: every frame classified so far). ``end`` must not fall before the
        frames already forgotten."""
        stop = self.frames if end is None else min(end // self.frame, self.frames)
        if stop < self._first_frame:
            raise ValueError(f"frames before sample {end} are forgotten")
        voiced = self._voiced_before_first + int(
            np.count_nonzero(self._flags[: stop - self._first_frame])
        )
        return voiced * self.frame / SAMPLE_RATE

    def forget_before(self, sample: int) -> None:
        """Drop the flags of frames that end before ``sample`` (no window will ask for them)."""
        drop = min(sample // self.frame, self.frames) - self._first_frame
        if drop > 0:
            self._voiced_before_first += int(np.count_nonzero(self._flags[:drop]))
            self._flags = self._flags[drop:]
            self._first_frame += drop


def speech_before(x: np.ndarray, options: VadOptions | None = None) -> Callable[[int], float]:
    """For a whole 16 kHz signal: a function sample ``end`` -> seconds of speech before it, as a
    stream's gate counts them (``VoiceGate.voiced_seconds``); with the VAD off, every second of
    audio before ``end`` counts."""
    options = options or VadOptions()
    if not options.enabled:
        return lambda end: min(end, x.size) / SAMPLE_RATE
    gate = VoiceGate(options)
    gate.process(x)
    return gate.voiced_seconds
