import importlib

import numpy as np
import pytest

from voicescreen import audio
from voicescreen.audio import SAMPLE_RATE, resample
from voicescreen.resample import Resampler

RATES = [8000, 11025, 22050, 24000, 32000, 44100, 48000, 16000, 12345]


def _in_chunks(r: Resampler, x: np.ndarray, rng: np.random.Generator, largest: int) -> np.ndarray:
    out, i = [], 0
    while i < x.size:
        k = int(rng.integers(0, largest))  # zero-length chunks included
        out.append(r.process(x[i : i + k]))
        i += k
    out.append(r.flush())
    return np.concatenate(out)


@pytest.mark.parametrize("rate", RATES)
def test_chunked_equals_whole(rate):
    rng = np.random.default_rng(rate)
    x = (0.3 * rng.standard_normal(int(1.3 * rate))).astype(np.float32)
    whole = resample(x, rate)
    assert whole.dtype == np.float32
    assert whole.size == -(-x.size * 16000 // rate)  # ceil(n * 16000 / rate)
    for largest in (7, 500, 5000):
        chunked = _in_chunks(Resampler(rate, SAMPLE_RATE), x, rng, largest)
        assert chunked.size == whole.size
        assert np.max(np.abs(chunked - whole)) <= 1e-6


def test_offline_loading_uses_the_stream_resampler():
    rng = np.random.default_rng(0)
    x = (0.3 * rng.standard_normal(8000)).astype(np.float32)
    streamed = _in_chunks(Resampler(8000, SAMPLE_RATE), x, rng, 321)
    np.testing.assert_allclose(audio.resample(x, 8000), streamed, atol=1e-6, rtol=0)
    assert audio.resample(x, 16000) is not None and np.array_equal(audio.resample(x, 16000), x)


def _tone_gain_db(rate: int, freq: float) -> float:
    """Gain of a pure tone through rate -> 16 kHz, measured away from the edges."""
    t = np.arange(2 * rate) / rate
    y = resample(np.sin(2 * np.pi * freq * t).astype(np.float32), rate)[4000:-4000]
    rms = np.sqrt(2 * np.mean(y.astype(np.float64) ** 2))
    return 20 * np.log10(rms + 1e-12)


@pytest.mark.parametrize("rate", [44100, 48000, 22050])
def test_downsampling_response(rate):
    for f in (50, 300, 1000, 3400, 5000, 7000):  # pass band: flat within 0.01 dB
        assert abs(_tone_gain_db(rate, f)) < 0.01, f
    for f in (8200, 9000, 10000, 11000):  # above the new Nyquist: would alias, must be gone
        if f < rate / 2:
            assert _tone_gain_db(rate, f) < -85, f


def test_upsampling_response_and_images():
    for f in (100, 1000, 3000, 3500):
        assert abs(_tone_gain_db(8000, f)) < 0.01, f
    # an 8 kHz signal upsampled to 16 kHz must not gain images above 4 kHz
    t = np.arange(16000) / 8000
    y = resample(np.sin(2 * np.pi * 1000 * t).astype(np.float32), 8000)[2000:-2000]
    spectrum = np.abs(np.fft.rfft(y * np.hanning(y.size)))
    freqs = np.fft.rfftfreq(y.size, 1 / 16000)
    peak = spectrum.max()
    assert abs(freqs[np.argmax(spectrum)] - 1000) < 5
    assert spectrum[freqs > 4500].max() < peak * 10 ** (-85 / 20)


def test_waveform_is_preserved_in_time():
    """A band-limited signal comes out as the same signal sampled at 16 kHz (no delay)."""
    rate = 44100
    t_in = np.arange(rate) / rate
    t_out = np.arange(16000) / 16000

    def signal(t):
        return 0.4 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 2500 * t + 1)

    y = resample(signal(t_in).astype(np.float32), rate)
    assert np.max(np.abs(y[500:-500] - signal(t_out)[500:-500])) < 1e-4


def test_errors():
    for bad in (0, -16000):
        with pytest.raises(ValueError, match="impossible sample rate"):
            Resampler(bad, SAMPLE_RATE)
    r = Resampler(8000, SAMPLE_RATE)
    with pytest.raises(ValueError, match="1-D"):
        r.process(np.zeros((10, 2), np.float32))
    r.flush()
    with pytest.raises(ValueError, match="flushed"):
        r.process(np.zeros(10, np.float32))
    assert r.flush().size == 0


def test_the_filter_tables_kept_for_reuse_are_bounded_in_bytes():
    """Streams at odd rates each make a large coefficient table (20001 Hz: 2.7 M coefficients,
    22 MB); what is kept for reuse stays within TABLE_CACHE_BYTES (sixteen such tables, 350 MB,
    were once kept for good), and a table that was let go is made again, the same."""
    rs = importlib.import_module("voicescreen.resample")  # the module, not the function

    odd = [r for r in range(20001, 20040, 2) if r % 5][:10]  # prime to 16000: up = 16000
    x = np.random.default_rng(0).standard_normal(30000).astype(np.float32)
    first = resample(x, odd[0])
    for rate in odd:
        assert Resampler(rate, SAMPLE_RATE)._table.nbytes > 16 << 20
        assert rs.cached_table_bytes() <= rs.TABLE_CACHE_BYTES
    assert (odd[0], 16000) not in rs._designs  # the least recently used went first
    np.testing.assert_array_equal(resample(x, odd[0]), first)
    common = Resampler(48000, SAMPLE_RATE)._table
    assert Resampler(48000, SAMPLE_RATE)._table is common  # a common rate: kept, reused
