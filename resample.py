"""A stateful resampler, any integer rate to any other, chunk by chunk, with no boundary effects.

Rational polyphase resampling with a Kaiser-windowed sinc low-pass. Output sample ``n`` lies at
input time ``t = n * down / up`` (input samples) and is the filter's dot product with the input
around ``t``; the signal is taken as zero before its start and, at ``flush()``, after its end. The
output depends only on ``n`` and the input, never on how the input was chunked, so a stream
resampled chunk by chunk equals the same signal resampled whole (``resample``), and offline loading
(``voicescreen.audio.resample``, ``read_audio``) uses this same code.

This module sits below the rest of the package and imports none of it: ``audio.py`` (files) and
``stream/`` (live audio) both resample through it and pass the package's rate,
``audio.SAMPLE_RATE``, themselves. Impossible input raises ``ValueError`` (as ``audio.AudioError``
is one, callers that catch that still catch these).

The filter is zero-phase (centred), so output sample ``n`` waits for ``taps`` input samples of
look-ahead: at 8 kHz input that is ~4 ms of latency.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

ZERO_CROSSINGS = 64  # sinc zero crossings on each side of the centre: sets the transition band
ROLLOFF = 0.95  # cut-off as a fraction of the lower of the two Nyquist frequencies
KAISER_BETA = 9.0  # ≈ 90 dB stop-band
MAX_TABLE = 4_000_000  # coefficients of an exact table, one row per phase (up, down pair)
# Beyond it (an odd rate: 44,101 Hz -> 16 kHz has 16,000 phases of 3,000 taps), the filter is
# tabulated at OVERSAMPLE phases per input sample and a phase between two rows is interpolated
# linearly: a bounded table, and a sum of two rows per output instead of a kernel evaluated per
# output (5-10 CPU seconds per audio second at 383,999 Hz). At 256 rows the interpolation errs by
# < 1e-5 of the peak coefficient at any cut-off (~-100 dB), below the Kaiser window's own ~-90 dB
# stop-band.
OVERSAMPLE = 256
BLOCK = 4096  # output samples computed per numpy step at most
BLOCK_BYTES = 8 << 20  # and at most this much of float64 per temporary array of a step (at
# 384 kHz a filter has 3,234 taps: 4,096 outputs at once took 3 x 106 MB)
TABLE_CACHE_BYTES = 64 << 20  # coefficient tables kept for reuse, all rates together


def _kernel(phase: np.ndarray, up: int, down: int, taps: int, cutoff: float) -> np.ndarray:
    """Coefficients (len(phase), 2*taps) for outputs at fractional input offset ``phase / up``.

    Column ``j`` multiplies input sample ``q - taps + 1 + j`` of an output at time ``q + phase/up``,
    so its distance from the output is ``phase/up + taps - 1 - j`` input samples.
    """
    t = phase[:, None] / up + (taps - 1 - np.arange(2 * taps))[None, :]
    window = np.i0(KAISER_BETA * np.sqrt(np.clip(1.0 - (t / taps) ** 2, 0.0, None)))
    h = cutoff * np.sinc(cutoff * t) * window / np.i0(KAISER_BETA)
    return h / h.sum(axis=1, keepdims=True)  # unit gain at DC for every phase


# up, down, taps, cutoff, table, and the table's rows per input sample when it is interpolated
# (0: exact, one row per phase)
Design = tuple[int, int, int, float, np.ndarray, int]
_designs: OrderedDict[tuple[int, int], Design] = OrderedDict()  # least recently used first


def _design(orig_rate: int, new_rate: int) -> Design:
    """The filter for ``orig_rate -> new_rate``: ratio, taps, cut-off and, when it is small enough,
    a coefficient table: every phase's when there are few enough (``MAX_TABLE``), else
    ``OVERSAMPLE`` rows per input sample to interpolate between. Kept for reuse, most recently
    used last, up to
    ``TABLE_CACHE_BYTES`` of tables in all (a stream at an odd rate makes a table of up to 32 MB;
    sixteen of them were once kept for good)."""
    key = (orig_rate, new_rate)
    design = _designs.pop(key, None)
    if design is None:
        g = math.gcd(orig_rate, new_rate)
        up, down = new_rate // g, orig_rate // g
        cutoff = min(1.0, up / down) * ROLLOFF  # in cycles per input sample, times 2
        taps = math.ceil(ZERO_CROSSINGS / cutoff)
        if up * 2 * taps <= MAX_TABLE:
            rows = 0
            table = _kernel(np.arange(up), up, down, taps, cutoff)
        else:
            rows = max(16, min(OVERSAMPLE, MAX_TABLE // (2 * taps) - 1))
            table = _kernel(np.arange(rows + 1) * (up / rows), up, down, taps, cutoff)
        table.setflags(write=False)
        design = (up, down, taps, cutoff, table, rows)
    _designs[key] = design
    while len(_designs) > 1 and cached_table_bytes() > TABLE_CACHE_BYTES:
        _designs.popitem(last=False)  # the least recently used (never the one just asked for)
    return design


def cached_table_bytes() -> int:
    """Bytes of coefficient tables the resampler keeps for reuse."""
    return sum(d[4].nbytes for d in _designs.values())


class Resampler:
    """Resample a stream in chunks: ``process(chunk)`` as input arrives, ``flush()`` at the end.

    Input and output are 1-D float32; the total output length is ``ceil(n_in * new / orig)``.
    """

    def __init__(self, orig_rate: int, new_rate: int) -> None:
        if int(orig_rate) != orig_rate or int(new_rate) != new_rate:
            raise ValueError(f"sample rates must be integers, got {orig_rate} -> {new_rate}")
        if orig_rate <= 0 or new_rate <= 0:
            raise ValueError(f"impossible sample rate {orig_rate} -> {new_rate}")
        self.orig_rate, self.new_rate = int(orig_rate), int(new_rate)
        self.passthrough = self.orig_rate == self.new_rate
        self.up, self.down, self.taps, self._cutoff, self._table, self._rows = _design(
            self.orig_rate, self.new_rate
        )
        # Input kept for outputs still to come; _first is the input index of _buf[0]. The signal
        # is zero before index 0, so the buffer starts with that zero history.
        self._buf = np.zeros(self.taps - 1, dtype=np.float64)
        self._first = -(self.taps - 1)
        self._n_in = 0  # input samples received
        self._n_out = 0  # output samples produced
        self._flushed = False

    @property
    def latency(self) -> int:
        """Input samples of look-ahead an output sample waits for."""
        return 0 if self.passthrough else self.taps

    def process(self, x: np.ndarray) -> np.ndarray:
        """Resample the next chunk; returns the output samples that are now complete."""
        if self._flushed:
            raise ValueError("resampler already flushed")
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"expected a 1-D chunk, got shape {x.shape}")
        self._n_in += x.size
        if self.passthrough:
            self._n_out += x.size
            return x.copy()
        self._buf = np.concatenate([self._buf, x.astype(np.float64)])
        # Output n needs input up to index q + taps, q = floor(n * down / up): that holds for
        # n < (n_in - taps) * up / down.
        return self._emit(-((-(self._n_in - self.taps) * self.up) // self.down))

    def flush(self) -> np.ndarray:
        """The remaining output, taking the signal as zero after its end."""
        if self._flushed:
            return np.zeros(0, dtype=np.float32)
        self._flushed = True
        if self.passthrough:
            return np.zeros(0, dtype=np.float32)
        self._buf = np.concatenate([self._buf, np.zeros(self.taps + 1)])
        return self._emit(self._total_out())

    def _total_out(self) -> int:
        return -((-self._n_in * self.up) // self.down)  # ceil(n_in * up / down)

    def _emit(self, stop: int) -> np.ndarray:
        """Outputs [self._n_out, stop) from the buffer, then drop input no longer needed."""
        n = np.arange(self._n_out, max(stop, self._n_out), dtype=np.int64)
        out = np.empty(n.size, dtype=np.float32)
        if n.size:
            frames = np.lib.stride_tricks.sliding_window_view(self._buf, 2 * self.taps)
            step = max(1, min(BLOCK, BLOCK_BYTES // (16 * self.taps)))
            for i in range(0, n.size, step):
                nb = n[i : i + step]
                q, phase = np.divmod(nb * self.down, self.up)
                rows = frames[q - self.taps + 1 - self._first]
                if not self._rows:
                    out[i : i + step] = (rows * self._table[phase]).sum(axis=1)
                    continue
                at = phase * (self._rows / self.up)  # the phase in table rows
                k = at.astype(np.int64)
                below = np.einsum("ij,ij->i", rows, self._table[k])
                above = np.einsum("ij,ij->i", rows, self._table[k + 1])
                out[i : i + step] = below + (at - k) * (above - below)
            self._n_out = int(n[-1]) + 1
        keep = (self._n_out * self.down) // self.up - self.taps + 1  # first input still needed
        if keep > self._first:
            self._buf = self._buf[keep - self._first :]
            self._first = keep
        return out


def resample(x: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Resample a whole 1-D signal: exactly what a ``Resampler`` gives for it in any chunks."""
    r = Resampler(orig_rate, new_rate)
    if r.passthrough:
        return np.asarray(x, dtype=np.float32)
    return np.concatenate([r.process(x), r.flush()])
