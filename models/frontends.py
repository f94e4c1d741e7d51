"""Spectral front-ends: waveform (B, T) float32 at 16 kHz -> features (B, frames, dims).

- ``LFCC``: linear-frequency cepstral coefficients as in the ASVspoof 2021 LFCC-LCNN baseline
  (pre-emphasis 0.97, 20 ms Hamming frames every 10 ms, 1024-point FFT, power spectrum of the lower
  half of the band, 20 linear triangular filters, log10, DCT-II (orthonormal), first coefficient
  replaced by the log frame energy, then Δ and ΔΔ: 60 dims).
- ``LogMel``: log mel filterbank energies on the same framing (80 HTK mel bands by default).

Framing follows ``torch.stft(center=True)``: frame ``i`` is centred on sample ``i * hop`` of the
signal, the signal is padded by half a frame at both ends, and a window shorter than the FFT sits in
the middle of the FFT frame, so a signal of T samples gives ``T // hop + 1`` frames.

The short-time Fourier transform is a ``conv1d`` with a fixed windowed-DFT basis rather than
``torch.stft``: the same numbers, and a graph of plain Conv/Mul/Add that the ONNX exporter and
every ONNX Runtime execution provider (CPU, CUDA, TensorRT) handle. All constant matrices are
derived from the config and kept out of the state dict (non-persistent buffers).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from voicescreen.audio import SAMPLE_RATE

FLOAT32_EPS = float(np.finfo(np.float32).eps)  # the baseline's floor inside log10


def _from_dict(cls: type, d: Mapping[str, Any] | None) -> Any:
    """Build dataclass ``cls`` from ``d``, ignoring keys it does not know."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in (d or {}).items() if k in names})


@dataclass
class LFCCConfig:
    """LFCC options; names in comments are those of the baseline's ``LFCC(...)`` call."""

    sample_rate: int = SAMPLE_RATE  # sr
    frame_length: int = 320  # fl: 20 ms
    frame_shift: int = 160  # fs: 10 ms
    n_fft: int = 1024  # fn
    n_filters: int = 20  # filter_num
    n_ceps: int = 20  # num_coef (None there means n_filters)
    min_freq: float = 0.0  # fraction of Nyquist: first FFT bin kept is int(min_freq * (n_fft//2+1))
    max_freq: float = 0.5  # lfcc_max_freq: the baseline keeps 0-4 kHz of the 0-8 kHz band
    with_energy: bool = True  # replace c0 by log10 of the frame energy
    with_delta: bool = True  # append Δ and ΔΔ
    preemphasis: float = 0.97  # with_emphasis=True; 0 switches it off
    window: str = "hamming"  # periodic, as torch.hamming_window
    pad_mode: str = "constant"  # torch.stft(center=True, pad_mode="constant") in the baseline
    log_floor: float = FLOAT32_EPS

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> LFCCConfig:
        return _from_dict(cls, d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def dims(self) -> int:
        return self.n_ceps * (3 if self.with_delta else 1)


@dataclass
class LogMelConfig:
    """Log mel options (HTK mel scale, unnormalised triangles: torchaudio's defaults)."""

    sample_rate: int = SAMPLE_RATE
    frame_length: int = 320  # 20 ms
    frame_shift: int = 160  # 10 ms
    n_fft: int = 1024
    n_mels: int = 80
    f_min: float = 0.0
    f_max: float = 8000.0
    preemphasis: float = 0.0
    window: str = "hamming"
    pad_mode: str = "reflect"  # torchaudio.transforms.MelSpectrogram's default
    log_floor: float = 1e-6  # natural log of (mel energy + floor)
    with_delta: bool = False

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> LogMelConfig:
        return _from_dict(cls, d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def dims(self) -> int:
        return self.n_mels * (3 if self.with_delta else 1)


# --- constant matrices (numpy, float64) --------------------------------------------------------


def n_frames(n_samples: int, frame_shift: int) -> int:
    """Frames of a centred STFT of ``n_samples`` samples: 404 for 64600 samples at a 160 hop."""
    return n_samples // frame_shift + 1


def window(name: str, length: int) -> np.ndarray:
    """Periodic Hamming or Hann window (``torch.hamming_window(length)``), shape (length,)."""
    n = np.arange(length)
    if name == "hamming":
        return 0.54 - 0.46 * np.cos(2 * np.pi * n / length)
    if name == "hann":
        return 0.5 - 0.5 * np.cos(2 * np.pi * n / length)
    raise ValueError(f"unknown window {name!r}; use 'hamming' or 'hann'")


def triangles(grid: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Triangular filters on frequency ``grid``: filter j rises from edges[j] to 1 at edges[j+1]
    and falls to 0 at edges[j+2]. Shape (len(grid), len(edges) - 2)."""
    lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]
    f = grid[:, None]
    up = (f - lo) / np.maximum(mid - lo, 1e-12)
    down = (hi - f) / np.maximum(hi - mid, 1e-12)
    return np.clip(np.minimum(up, down), 0.0, None)


def linear_filterbank(
    n_fft: int, sample_rate: int, n_filters: int, min_freq: float, max_freq: float
) -> tuple[np.ndarray, int, int]:
    """The baseline's linear filterbank over FFT bins ``[first, last)``.

    As in the baseline, the kept bins are given the frequencies
    ``linspace(min_freq, max_freq, last - first) * sample_rate / 2`` and the filter edges are
    spaced evenly from the lowest to the highest of them. Returns (filterbank (bins, n_filters),
    first, last).
    """
    if not 0 <= min_freq < max_freq <= 1:
        raise ValueError(f"need 0 <= min_freq < max_freq <= 1, got {min_freq}, {max_freq}")
    first = int(min_freq * (n_fft // 2 + 1))
    last = int(max_freq * (n_fft // 2 + 1))
    grid = np.linspace(min_freq, max_freq, last - first) * sample_rate / 2
    edges = np.linspace(grid[0], grid[-1], n_filters + 2)
    return triangles(grid, edges), first, last


def mel_filterbank(
    n_fft: int, sample_rate: int, n_mels: int, f_min: float, f_max: float
) -> np.ndarray:
    """HTK mel triangles over all ``n_fft // 2 + 1`` FFT bins, shape (bins, n_mels)."""

    def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    def mel_to_hz(m: np.ndarray) -> np.ndarray:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    grid = np.linspace(0, sample_rate // 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    return triangles(grid, edges)


def dct_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Orthonormal DCT-II as a matrix: ``x @ dct_matrix(N, K)`` are the first K coefficients."""
    n = np.arange(n_in)
    k = np.arange(n_out)
    m = np.cos(np.pi * k[None, :] * (2 * n[:, None] + 1) / (2 * n_in)) * np.sqrt(2.0 / n_in)
    m[:, 0] = np.sqrt(1.0 / n_in)
    return m


# --- modules ----------------------------------------------------------------------------------


def deltas(x: Tensor) -> Tensor:
    """Δ along time of (B, frames, dims): ``x[t+1] - x[t-1]``, edge frames repeated (the baseline's
    delta, no 1/2 factor)."""
    padded = torch.cat([x[:, :1], x, x[:, -1:]], dim=1)
    return padded[:, 2:] - padded[:, :-2]


def preemphasize(x: Tensor, coef: float) -> Tensor:
    """``y[0] = x[0]``, ``y[n] = x[n] - coef * x[n-1]`` on (B, T)."""
    return torch.cat([x[:, :1], x[:, 1:] - coef * x[:, :-1]], dim=1)


class PowerSpectrogram(nn.Module):
    """|STFT|² of (B, T) for FFT bins ``[first, last)``, shape (B, frames, last - first).

    A conv1d whose kernels are the window times cos and sin of each bin's frequency. Only the
    ``frame_length`` non-zero samples of the zero-padded FFT frame take part, and the phase offset
    of the window inside that frame drops out of the magnitude.
    """

    def __init__(
        self,
        frame_length: int,
        frame_shift: int,
        n_fft: int,
        window_name: str = "hamming",
        first: int = 0,
        last: int | None = None,
        pad_mode: str = "constant",
    ) -> None:
        super().__init__()
        if frame_length > n_fft:
            raise ValueError(f"frame_length {frame_length} exceeds n_fft {n_fft}")
        if pad_mode not in ("constant", "reflect"):
            raise ValueError(f"unknown pad_mode {pad_mode!r}; use 'constant' or 'reflect'")
        last = n_fft // 2 + 1 if last is None else last
        self.frame_shift = frame_shift
        self.pad_mode = pad_mode
        # torch.stft(center=True) pads n_fft // 2 and puts the window at (n_fft - length) // 2
        self.pad = n_fft // 2 - (n_fft - frame_length) // 2
        w = window(window_name, frame_length)
        phase = 2 * np.pi * np.arange(first, last)[:, None] * np.arange(frame_length) / n_fft
        basis = np.concatenate([np.cos(phase) * w, -np.sin(phase) * w])  # (2 * bins, length)
        self.n_bins = last - first
        self.register_buffer(
            "basis", torch.tensor(basis[:, None, :], dtype=torch.float32), persistent=False
        )

    def forward(self, x: Tensor) -> Tensor:
        frames = n_frames(x.shape[-1], self.frame_shift)
        x = F.pad(x[:, None, :], (self.pad, self.pad), mode=self.pad_mode)
        spec = F.conv1d(x, self.basis, stride=self.frame_shift)[:, :, :frames]
        re, im = spec[:, : self.n_bins], spec[:, self.n_bins :]
        return (re * re + im * im).transpose(1, 2)


class LFCC(nn.Module):
    """LFCC front-end: (B, T) -> (B, T // frame_shift + 1, n_ceps * 3), see the module docstring."""

    def __init__(self, config: LFCCConfig | Mapping[str, Any] | None = None) -> None:
        super().__init__()
        cfg = config if isinstance(config, LFCCConfig) else LFCCConfig.from_dict(config)
        if cfg.n_ceps > cfg.n_filters:
            raise ValueError(f"n_ceps {cfg.n_ceps} exceeds n_filters {cfg.n_filters}")
        self.config = cfg
        fbank, first, last = linear_filterbank(
            cfg.n_fft, cfg.sample_rate, cfg.n_filters, cfg.min_freq, cfg.max_freq
        )
        self.spectrogram = PowerSpectrogram(
            cfg.frame_length, cfg.frame_shift, cfg.n_fft, cfg.window, first, last, cfg.pad_mode
        )
        self.register_buffer("filterbank", torch.tensor(fbank, dtype=torch.float32), False)
        dct = dct_matrix(cfg.n_filters, cfg.n_ceps)
        self.register_buffer("dct", torch.tensor(dct, dtype=torch.float32), False)

    def forward(self, x: Tensor) -> Tensor:
        cfg = self.config
        if cfg.preemphasis:
            x = preemphasize(x, cfg.preemphasis)
        power = self.spectrogram(x)  # (B, frames, bins)
        ceps = torch.log10(power @ self.filterbank + cfg.log_floor) @ self.dct
        if cfg.with_energy:
            energy = torch.log10(power.sum(dim=-1, keepdim=True) / cfg.n_fft + cfg.log_floor)
            ceps = torch.cat([energy, ceps[:, :, 1:]], dim=-1)
        if not cfg.with_delta:
            return ceps
        d1 = deltas(ceps)
        return torch.cat([ceps, d1, deltas(d1)], dim=-1)


class LogMel(nn.Module):
    """Log mel front-end: (B, T) -> (B, T // frame_shift + 1, n_mels (* 3 with deltas))."""

    def __init__(self, config: LogMelConfig | Mapping[str, Any] | None = None) -> None:
        super().__init__()
        cfg = config if isinstance(config, LogMelConfig) else LogMelConfig.from_dict(config)
        if not 0 <= cfg.f_min < cfg.f_max <= cfg.sample_rate / 2:
            raise ValueError(f"need 0 <= f_min < f_max <= Nyquist, got {cfg.f_min}, {cfg.f_max}")
        self.config = cfg
        self.spectrogram = PowerSpectrogram(
            cfg.frame_length, cfg.frame_shift, cfg.n_fft, cfg.window, pad_mode=cfg.pad_mode
        )
        fbank = mel_filterbank(cfg.n_fft, cfg.sample_rate, cfg.n_mels, cfg.f_min, cfg.f_max)
        self.register_buffer("filterbank", torch.tensor(fbank, dtype=torch.float32), False)

    def forward(self, x: Tensor) -> Tensor:
        cfg = self.config
        if cfg.preemphasis:
            x = preemphasize(x, cfg.preemphasis)
        feats = torch.log(self.spectrogram(x) @ self.filterbank + cfg.log_floor)
        if not cfg.with_delta:
            return feats
        d1 = deltas(feats)
        return torch.cat([feats, d1, deltas(d1)], dim=-1)


__all__ = [
    "FLOAT32_EPS",
    "LFCC",
    "LFCCConfig",
    "LogMel",
    "LogMelConfig",
    "PowerSpectrogram",
    "dct_matrix",
    "deltas",
    "linear_filterbank",
    "mel_filterbank",
    "n_frames",
    "window",
]
