"""Odd sample rates (prime to 16 kHz, up to the 384 kHz a file may have): the filter has as many
phases as the output rate, too many to tabulate, so its table holds ``OVERSAMPLE`` rows per input
sample and a phase between two is interpolated. Same pitch, same response, chunk-invariant, and a
bounded table."""

import importlib

import numpy as np
import pytest

from voicescreen.audio import MAX_FILE_RATE, SAMPLE_RATE, resample
from voicescreen.resample import Resampler

rs = importlib.import_module("voicescreen.resample")  # the module, not the function

ODD = [44101, 96001, MAX_FILE_RATE - 1]


def _peak_hz(y: np.ndarray, rate: int = 16000) -> float:
    """The frequency of the strongest tone in ``y``: the FFT peak of a Hann-windowed signal,
    refined by a parabola through the log magnitudes around it."""
    n = 8 * y.size
    mag = np.log(np.abs(np.fft.rfft(y * np.hanning(y.size), n)) + 1e-30)
    k = int(np.argmax(mag))
    a, b, c = mag[k - 1 : k + 2]
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * rate / n


def _tone(rate: int, freq: float, seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("rate", ODD)
def test_an_odd_rate_tone_keeps_its_pitch_and_level(rate):
    for freq in (440.0, 3137.0):
        y = resample(_tone(rate, freq, 1.0), rate)[2000:-2000]
        assert y.size == 12000
        assert _peak_hz(y) == pytest.approx(freq, abs=0.05)  # 383,999 vs 384,000 Hz: 0.004 Hz
        level = np.sqrt(2 * np.mean(y.astype(np.float64) ** 2)) / 0.5
        assert abs(20 * np.log10(level)) < 0.01
    alias = resample(_tone(rate, 9000.0, 0.5), rate)[2000:-2000]  # above 8 kHz: must be gone
    assert 20 * np.log10(np.sqrt(2 * np.mean(alias.astype(np.float64) ** 2)) / 0.5) < -85


@pytest.mark.parametrize("rate", ODD)
def test_the_interpolated_filter_is_the_exact_one_within_float32(rate):
    up, down, taps, cutoff, table, rows = rs._design(rate, 16000)
    assert rows == rs.OVERSAMPLE and up * 2 * taps > rs.MAX_TABLE
    x = (0.3 * np.random.default_rng(rate).standard_normal(rate // 20)).astype(np.float32)
    got = resample(x, rate)
    n = np.arange(0, got.size, 37)  # outputs spread over every part of the phase range
    q, phase = np.divmod(n * down, up)
    padded = np.concatenate([np.zeros(taps), x.astype(np.float64), np.zeros(taps + 1)])
    rows_in = np.stack([padded[i + 1 : i + 1 + 2 * taps] for i in q])
    exact = (rows_in * rs._kernel(phase, up, down, taps, cutoff)).sum(axis=1)
    assert np.max(np.abs(got[n] - exact)) < 2e-6


def test_the_filter_table_is_bounded_at_any_file_rate():
    """However odd the rate, a table holds at most MAX_TABLE coefficients (the largest, at
    383,999 Hz: 257 rows of 3,234 taps, 6.6 MB), not one row per phase (16,000 x 3,234)."""
    for rate in (20011, 29999, 44101, 96001, 191999, 352799, MAX_FILE_RATE - 1, MAX_FILE_RATE):
        table = rs._design(rate, 16000)[4]
        assert table.size <= rs.MAX_TABLE, rate
    assert rs._design(MAX_FILE_RATE - 1, 16000)[4].nbytes < 8 << 20


def test_an_odd_rate_chunked_equals_whole():
    rate = MAX_FILE_RATE - 1
    rng = np.random.default_rng(1)
    x = (0.3 * rng.standard_normal(rate // 4)).astype(np.float32)
    whole = resample(x, rate)
    r = Resampler(rate, SAMPLE_RATE)
    out, i = [], 0
    while i < x.size:
        k = int(rng.integers(0, 20000))
        out.append(r.process(x[i : i + k]))
        i += k
    out.append(r.flush())
    chunked = np.concatenate(out)
    assert chunked.size == whole.size == -(-x.size * 16000 // rate)
    assert np.max(np.abs(chunked - whole)) <= 1e-6
