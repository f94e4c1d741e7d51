"""Vocoders the project implements itself, to turn real speech into matched spoofed speech.

Each resynthesises a 16 kHz mono signal from a few analysis parameters and returns float32 of the
same length, so that a spoof differs from its bona fide source only by having gone through the
vocoder:

- ``griffin_lim``: the STFT magnitude is kept and the phase re-estimated (Griffin and Lim, "Signal
  Estimation from Modified Short-Time Fourier Transform", 1984, with the momentum of Perraudin et
  al., "A Fast Griffin-Lim Algorithm", 2013);
- ``lpc_vocoder``: a source-filter resynthesis in the manner of LPC-10: per 20 ms frame an all-pole
  envelope (autocorrelation-method LPC), excited by a pulse train at the frame's estimated pitch or
  by white noise when it is unvoiced, gain-matched and overlap-added.

``pitch_track`` (normalised autocorrelation, 60-400 Hz) and ``lpc`` are the analysis steps, usable
on their own.
"""

from __future__ import annotations

import numpy as np

from voicescreen.audio import SAMPLE_RATE

F0_MIN = 60.0  # Hz, the pitch range searched
F0_MAX = 400.0
HOP = 160  # samples: 10 ms frames at 16 kHz
PRE_EMPHASIS = 0.97


def griffin_lim(
    x: np.ndarray,
    n_fft: int = 1024,
    hop: int | None = None,
    n_iter: int = 32,
    momentum: float = 0.99,
    seed: int = 0,
) -> np.ndarray:
    """``x`` with its STFT magnitude kept (Hann window, ``hop`` = ``n_fft // 4`` by default) and
    the phase re-estimated by ``n_iter`` fast Griffin-Lim iterations from a random phase drawn
    with ``seed``. Returns float32 of ``x``'s length."""
    import torch

    x = np.asarray(x, dtype=np.float32)
    hop = hop or n_fft // 4
    window = torch.hann_window(n_fft)

    def stft(y: torch.Tensor) -> torch.Tensor:
        return torch.stft(y, n_fft, hop, window=window, return_complex=True)

    def istft(s: torch.Tensor) -> torch.Tensor:
        return torch.istft(s, n_fft, hop, window=window, length=x.size)

    magnitude = stft(torch.from_numpy(x)).abs()
    generator = torch.Generator().manual_seed(int(seed))
    phase = 2 * np.pi * torch.rand(magnitude.shape, generator=generator)
    angles = torch.polar(torch.ones_like(magnitude), phase)
    previous = torch.zeros_like(angles)
    with torch.no_grad():
        for _ in range(n_iter):
            rebuilt = stft(istft(magnitude * angles))
            angles = rebuilt - (momentum / (1 + momentum)) * previous
            angles = angles / angles.abs().clamp_min(1e-16)
            previous = rebuilt
        y = istft(magnitude * angles)
    return y.numpy().astype(np.float32)


def _frames(x: np.ndarray, length: int, hop: int) -> np.ndarray:
    """Frames of ``length`` samples centred every ``hop`` samples (frame k on sample k·hop), the
    signal zero-padded by ``length // 2`` at both ends; shape (1 + len(x) // hop, length)."""
    n = 1 + x.size // hop
    padded = np.pad(x, (length // 2, length // 2 + hop))
    index = np.arange(n)[:, None] * hop + np.arange(length)[None, :]
    return padded[index]


def pitch_track(
    x: np.ndarray,
    rate: int = SAMPLE_RATE,
    hop: int = HOP,
    threshold: float = 0.5,
    floor_db: float = -40.0,
) -> np.ndarray:
    """Pitch (Hz) of the frame centred on every ``hop``-th sample, 0 where unvoiced.

    A 40 ms window's normalised autocorrelation is searched between ``F0_MIN`` and ``F0_MAX``; the
    shortest lag within 10 % of the best peak wins (against octave-down errors). A frame is voiced
    when that peak exceeds ``threshold`` and its energy is within ``floor_db`` of the loudest
    frame's. A 3-frame median smooths isolated decisions. Shape (1 + len(x) // hop,).
    """
    from scipy.signal import medfilt

    x = np.asarray(x, dtype=np.float64)
    length = int(0.04 * rate)
    frames = _frames(x, length, hop)
    frames = frames - frames.mean(axis=1, keepdims=True)
    lo, hi = int(rate / F0_MAX), min(int(rate / F0_MIN), length - 1)
    n_fft = 1 << int(np.ceil(np.log2(2 * length)))
    spectrum = np.fft.rfft(frames, n_fft)
    r = np.fft.irfft(np.abs(spectrum) ** 2, n_fft)[:, : hi + 1]
    # Energies of the overlapping parts x[:N-l] and x[l:], for the normalisation at lag l.
    c = np.cumsum(frames**2, axis=1)
    total = c[:, -1:]
    lags = np.arange(lo, hi + 1)
    head = c[:, length - 1 - lags]
    tail = total - np.concatenate([np.zeros((len(frames), 1)), c], axis=1)[:, lags]
    nr = r[:, lags] / np.sqrt(np.maximum(head * tail, 1e-20))
    best = nr.max(axis=1)
    first = np.argmax(nr >= 0.9 * best[:, None], axis=1)
    f0 = rate / lags[first]
    energy = total[:, 0]
    loud = energy > energy.max() * 10 ** (floor_db / 10) if energy.max() > 0 else energy > 0
    f0 = np.where((best > threshold) & loud, f0, 0.0)
    return medfilt(f0, 3)


def lpc(frame: np.ndarray, order: int) -> tuple[np.ndarray, float]:
    """Autocorrelation-method LPC of one (windowed) frame: the predictor polynomial
    ``a`` = [1, a1, ..., a_order] (so that the all-pole envelope is 1 / A(z)) and the prediction
    error energy (summed over the frame). A silent frame gives ``a`` = [1, 0, ...] and 0."""
    from scipy.linalg import solve_toeplitz

    frame = np.asarray(frame, dtype=np.float64)
    n_fft = 1 << int(np.ceil(np.log2(2 * frame.size)))
    r = np.fft.irfft(np.abs(np.fft.rfft(frame, n_fft)) ** 2, n_fft)[: order + 1]
    a = np.zeros(order + 1)
    a[0] = 1.0
    if r[0] <= 1e-12:
        return a, 0.0
    r[0] *= 1.0 + 1e-6  # white-noise correction: keeps the system well conditioned
    a[1:] = -solve_toeplitz(r[:order], r[1 : order + 1])
    return a, float(max(r[0] + np.dot(a[1:], r[1 : order + 1]), 0.0))


def excitation(
    f0: np.ndarray, n: int, rng: np.random.Generator, hop: int = HOP, rate: int = SAMPLE_RATE
) -> np.ndarray:
    """A unit-power source signal of ``n`` samples for the pitch track ``f0`` (one value per
    ``hop``): a pulse train with continuous phase where voiced (a little noise added), white
    noise where unvoiced."""
    frame_of = np.minimum((np.arange(n) + hop // 2) // hop, f0.size - 1)
    f = f0[frame_of]
    voiced = f > 0
    phase = np.cumsum(f / rate)
    pulses = np.diff(np.floor(phase), prepend=0.0) > 0
    period = rate / np.where(voiced, f, 1.0)
    noise = rng.standard_normal(n)
    return np.where(voiced, pulses * np.sqrt(period) + 0.05 * noise, noise)


def lpc_vocoder(
    x: np.ndarray,
    order: int = 18,
    hop: int = HOP,
    seed: int = 0,
    rate: int = SAMPLE_RATE,
) -> np.ndarray:
    """``x`` resynthesised from its LPC envelope, pitch and frame energy: frames of ``2 · hop``
    samples (Hann, 50 % overlap), pre-emphasised for the analysis, each an all-pole filter of
    ``order`` driven by ``excitation`` and scaled to the frame's energy, overlap-added and
    de-emphasised. The noise is drawn with ``seed``; float32, ``x``'s length, ``x``'s RMS."""
    from scipy.signal import lfilter

    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return np.zeros(0, np.float32)
    emphasised = lfilter([1.0, -PRE_EMPHASIS], [1.0], x)
    length = 2 * hop
    window = np.hanning(length + 1)[:length]  # periodic Hann: overlap-adds to 1 at hop
    frames = _frames(emphasised, length, hop) * window
    f0 = pitch_track(x, rate, hop)
    source = excitation(f0, x.size, np.random.default_rng(seed), hop, rate)
    source = np.pad(source, (length // 2, length // 2 + hop))  # aligned with the frames
    out = np.zeros(frames.shape[0] * hop + length)
    for k, frame in enumerate(frames):
        energy = float(np.dot(frame, frame))
        if energy <= 0:
            continue
        a, _ = lpc(frame, order)
        y = lfilter([1.0], a, source[k * hop : k * hop + length]) * window
        out[k * hop : k * hop + length] += y * np.sqrt(energy / max(float(np.dot(y, y)), 1e-20))
    y = lfilter([1.0], [1.0, -PRE_EMPHASIS], out[length // 2 : length // 2 + x.size])
    rms_in, rms_out = np.sqrt(np.mean(x**2)), np.sqrt(np.mean(y**2))
    return (y * (rms_in / rms_out if rms_out > 0 else 0.0)).astype(np.float32)


__all__ = ["excitation", "griffin_lim", "lpc", "lpc_vocoder", "pitch_track"]
