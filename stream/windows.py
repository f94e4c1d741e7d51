"""Sliding windows over a stream, cut as the audio arrives.

The regular windows are exactly those of ``voicescreen.audio.sliding_windows`` on the whole
stream: starts 0, hop, 2·hop, ... as soon as each is complete, then at the end of the stream the
end-aligned tail window when the regular ones leave a tail, or, for a stream shorter than one
window, the single repeat-padded window of the whole stream. A stream scored window by window
therefore gives the offline scores of the same audio.

Before the first full window is available, *early* windows give a first answer sooner: at
``min_audio`` seconds and then every hop, the audio so far repeat-padded to a window
(``audio.pad_repeat``, as offline pads a short file). They are extra and flagged ``early``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from voicescreen.audio import HOP_SECONDS, SAMPLE_RATE, pad_repeat

MIN_AUDIO_SECONDS = 1.5  # first early window after this much audio


@dataclass(frozen=True)
class WindowOptions:
    """``window_samples``: the model input (None: the bundle card's ``input_samples``);
    ``hop_seconds`` between window starts; ``min_audio`` seconds before the first early window
    (None or 0: no early windows)."""

    window_samples: int | None = None
    hop_seconds: float = HOP_SECONDS
    min_audio: float | None = MIN_AUDIO_SECONDS

    def __post_init__(self) -> None:
        if self.window_samples is not None and self.window_samples <= 0:
            raise ValueError(f"window_samples must be positive, got {self.window_samples}")
        if self.hop_samples <= 0:
            raise ValueError(f"hop must be at least one sample, got {self.hop_seconds} s")
        if self.min_audio is not None and self.min_audio < 0:
            raise ValueError(f"min_audio must be >= 0, got {self.min_audio}")

    @property
    def hop_samples(self) -> int:
        return int(round(self.hop_seconds * SAMPLE_RATE))  # as the offline scorer rounds it

    @property
    def min_audio_samples(self) -> int | None:
        if not self.min_audio:
            return None
        return max(1, int(round(self.min_audio * SAMPLE_RATE)))

    def resolve(self, input_samples: int) -> WindowOptions:
        """These options with the window length filled in from a model's input length."""
        if self.window_samples is None:
            return WindowOptions(input_samples, self.hop_seconds, self.min_audio)
        if self.window_samples != input_samples:
            raise ValueError(
                f"window_samples {self.window_samples} does not match the model input "
                f"({input_samples} samples)"
            )
        return self


@dataclass(frozen=True)
class StreamWindow:
    """One window cut from a stream. ``index`` counts all windows of the stream, early ones
    included; ``start``/``end`` are the stream samples of the audio it holds (``end - start`` is
    less than the window for early and short-stream windows, which are repeat-padded)."""

    index: int
    start: int
    end: int
    samples: np.ndarray  # (window_samples,) float32
    early: bool = False

    @property
    def kind(self) -> str:
        return "early" if self.early else "regular"


class _Buffer:
    """Samples of a stream from absolute sample ``first`` on, with amortised O(1) appends."""

    def __init__(self, capacity: int) -> None:
        self._data = np.zeros(max(capacity, 1024), dtype=np.float32)
        self._lo = 0  # index in _data of sample `first`
        self._hi = 0
        self.first = 0

    @property
    def end(self) -> int:
        return self.first + self._hi - self._lo

    def append(self, x: np.ndarray) -> None:
        if self._hi + x.size > self._data.size:
            live = self._data[self._lo : self._hi]
            size = self._data.size
            while live.size + x.size > size // 2:
                size *= 2
            data = np.zeros(size, dtype=np.float32) if size != self._data.size else self._data
            data[: live.size] = live  # copy (overlap-safe: live lies to the right)
            self._data, self._lo, self._hi = data, 0, live.size
        self._data[self._hi : self._hi + x.size] = x
        self._hi += x.size

    def get(self, start: int, end: int) -> np.ndarray:
        if start < self.first or end > self.end:
            raise IndexError(f"samples [{start}, {end}) not held (have [{self.first}, {self.end}))")
        return self._data[self._lo + start - self.first : self._lo + end - self.first].copy()

    def discard_before(self, sample: int) -> None:
        drop = min(sample, self.end) - self.first
        if drop > 0:
            self._lo += drop
            self.first += drop


class Windower:
    """Cut a 16 kHz stream into model windows incrementally: ``push(chunk)`` yields the windows
    the chunk completed, ``finish()`` the ones only the end of the stream decides."""

    def __init__(self, options: WindowOptions) -> None:
        if options.window_samples is None:
            raise ValueError("WindowOptions.window_samples is unset: resolve() it for the model")
        self.options = options
        self.window = options.window_samples
        self.hop = options.hop_samples
        self._buf = _Buffer(self.window + 4 * self.hop)
        self._index = 0  # next window index
        self._next_start = 0  # start of the next regular window
        self._regular = 0  # regular windows cut
        self._next_early = options.min_audio_samples  # end of the next early window
        self._finished = False

    @property
    def samples(self) -> int:
        """Stream samples received so far."""
        return self._buf.end

    @property
    def keep_from(self) -> int:
        """The first stream sample a future window may still need."""
        if self._regular == 0:
            return 0
        return self._next_start - self.hop  # the end-aligned tail starts after the last regular

    def push(self, x: np.ndarray) -> Iterator[StreamWindow]:
        if self._finished:
            raise RuntimeError("windower already finished")
        self._buf.append(np.asarray(x, dtype=np.float32))
        n = self._buf.end
        if n >= self.window:
            self._next_early = None  # the first full window is here: early ones are moot
        while self._next_early is not None and self._next_early <= n:
            end = self._next_early
            self._next_early += self.hop
            yield self._cut(0, end, early=True)
        while self._next_start + self.window <= n:
            yield self._cut(self._next_start, self._next_start + self.window)
            self._regular += 1
            self._next_early = None
            self._next_start += self.hop
        self._buf.discard_before(self.keep_from)

    def finish(self) -> Iterator[StreamWindow]:
        """The last window: the end-aligned tail, or the whole short stream padded."""
        if self._finished:
            return
        self._finished = True
        n = self._buf.end
        if n == 0:
            return
        if self._regular == 0:
            if n < self.window:  # (n == window was cut by push)
                yield self._cut(0, n)
        elif self._next_start - self.hop + self.window < n:
            yield self._cut(n - self.window, n)

    def _cut(self, start: int, end: int, early: bool = False) -> StreamWindow:
        samples = self._buf.get(start, end)
        if samples.size != self.window:
            samples = pad_repeat(samples, self.window)
        window = StreamWindow(self._index, start, end, samples, early)
        self._index += 1
        return window
