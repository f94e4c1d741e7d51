"""``train/vocoders.py``: Griffin-Lim and the LPC vocoder resynthesise speech that keeps its
spectrum and pitch but not its waveform, reproducibly; the analysis steps measure what they
claim."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.signal import lfilter, welch

from voicescreen.audio import SAMPLE_RATE
from voicescreen.train.augment import speech_probe
from voicescreen.train.vocoders import excitation, griffin_lim, lpc, lpc_vocoder, pitch_track


@pytest.fixture(scope="module")
def speech(speech_clips: dict[str, np.ndarray]) -> np.ndarray:
    return speech_clips["bonafide"][:32000]


def spectral_convergence(a: np.ndarray, b: np.ndarray, n_fft: int = 1024) -> float:
    """||(|A| - |B|)|| / ||A|| of two STFT magnitudes."""
    window = torch.hann_window(n_fft)
    mags = [
        torch.stft(torch.from_numpy(s), n_fft, n_fft // 4, window=window, return_complex=True).abs()
        for s in (a, b)
    ]
    return float((mags[0] - mags[1]).norm() / mags[0].norm())


def log_spectral_distance(a: np.ndarray, b: np.ndarray) -> float:
    """RMS difference (dB) of the long-term spectra below 7 kHz."""
    f, pa = welch(a, SAMPLE_RATE, nperseg=512)
    _, pb = welch(b, SAMPLE_RATE, nperseg=512)
    keep = f < 7000
    return float(np.sqrt(np.mean((10 * np.log10(pa[keep] / pb[keep])) ** 2)))


def test_griffin_lim_keeps_the_magnitude_and_changes_the_phase(speech):
    y = griffin_lim(speech, n_fft=1024, n_iter=32, seed=0)
    assert y.dtype == np.float32 and y.shape == speech.shape
    assert spectral_convergence(speech, y) < 0.1  # the magnitude is (almost) the same ...
    assert spectral_convergence(speech, griffin_lim(speech, n_iter=0)) > 0.4  # iterations matter
    assert abs(np.corrcoef(speech, y)[0, 1]) < 0.3  # ... the waveform is not


def test_griffin_lim_is_reproducible_by_seed(speech):
    a = griffin_lim(speech[:8000], n_fft=512, seed=3)
    np.testing.assert_array_equal(a, griffin_lim(speech[:8000], n_fft=512, seed=3))
    assert not np.allclose(a, griffin_lim(speech[:8000], n_fft=512, seed=4))


def test_pitch_track_follows_a_known_pitch_and_ignores_noise():
    probe = speech_probe(SAMPLE_RATE, 2.0)  # f0 = 120 + 40 sin(2π 1.3 t)
    f0 = pitch_track(probe)
    t = np.arange(f0.size) * 160 / SAMPLE_RATE
    truth = 120 + 40 * np.sin(2 * np.pi * 1.3 * t)
    voiced = f0 > 0
    assert voiced.mean() > 0.8
    assert np.median(np.abs(f0[voiced] - truth[voiced]) / truth[voiced]) < 0.03
    noise = np.random.default_rng(1).standard_normal(2 * SAMPLE_RATE)
    assert (pitch_track(noise) > 0).mean() < 0.05


def test_lpc_recovers_an_autoregressive_process():
    e = np.random.default_rng(2).standard_normal(20000)
    x = lfilter([1.0], [1.0, -1.3, 0.6], e)
    a, err = lpc(x, 2)
    np.testing.assert_allclose(a, [1.0, -1.3, 0.6], atol=0.02)
    assert err / x.size == pytest.approx(1.0, rel=0.05)  # the innovation's variance
    silent, zero = lpc(np.zeros(400), 4)
    np.testing.assert_array_equal(silent, [1, 0, 0, 0, 0])
    assert zero == 0.0


def test_excitation_is_unit_power_with_pulses_at_the_pitch():
    f0 = np.r_[np.full(50, 125.0), np.zeros(51)]  # voiced, then unvoiced
    x = excitation(f0, SAMPLE_RATE, np.random.default_rng(0))
    assert np.mean(x**2) == pytest.approx(1.0, rel=0.1)
    peaks = np.flatnonzero(x[: 50 * 160] > 5)
    assert np.median(np.diff(peaks)) == SAMPLE_RATE / 125  # one pulse every 128 samples


def test_lpc_vocoder_keeps_envelope_pitch_and_level_not_the_waveform(speech):
    y = lpc_vocoder(speech, seed=0)
    assert y.dtype == np.float32 and y.shape == speech.shape and np.isfinite(y).all()
    assert np.sqrt(np.mean(y**2)) == pytest.approx(np.sqrt(np.mean(speech**2)), rel=1e-4)
    noise = np.random.default_rng(0).standard_normal(speech.size) * np.std(speech)
    assert log_spectral_distance(speech, y) < 6.0 < log_spectral_distance(speech, noise)
    assert abs(np.corrcoef(speech, y)[0, 1]) < 0.3
    probe = speech_probe(SAMPLE_RATE, 2.0)
    a, b = pitch_track(probe), pitch_track(lpc_vocoder(probe))
    both = (a > 0) & (b > 0)
    assert both.mean() > 0.8 and np.median(np.abs(a[both] - b[both]) / a[both]) < 0.03


def test_lpc_vocoder_is_reproducible_by_seed(speech):
    a = lpc_vocoder(speech[:8000], seed=1)
    np.testing.assert_array_equal(a, lpc_vocoder(speech[:8000], seed=1))
    assert not np.allclose(a, lpc_vocoder(speech[:8000], seed=2))
    assert lpc_vocoder(np.zeros(0, np.float32)).size == 0
