"""Audio facts, in one place, and the pure functions that apply them.

Everything inside voicescreen is 16 kHz mono float32 in [-1, 1]. A model scores a fixed-length
window; a window shorter than that (a short file, the start of a call) is repeat-padded exactly as
the reference training loaders pad, so streaming, offline and training scores of the same audio
agree.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000  # Hz, the one rate inside the package
WINDOW_SAMPLES = 64600  # ≈ 4.04 s: the input of AASIST and the AASIST-repo RawNet2
HOP_SECONDS = 1.0  # default hop between sliding windows
HOP_SAMPLES = int(HOP_SECONDS * SAMPLE_RATE)

# Kinds of audio a bundle may be calibrated for (``score.channels`` of its card): telephone audio
# (8 kHz rates, G.711/GSM/AMR codecs: nothing above ~4 kHz) scores differently from wideband
# audio (16 kHz and up: G.722, Opus, a sound card) through the same model.
WIDEBAND, NARROWBAND = "wideband", "narrowband"
CHANNELS = (WIDEBAND, NARROWBAND)
NARROWBAND_MAX_RATE = 8000  # Hz: a source at this rate or below can hold nothing above 4 kHz
BAND_EDGE_HZ = 4000.0  # narrowband audio has (almost) no energy above this
# Energy above BAND_EDGE_HZ (up to 7.5 kHz) relative to the 300-3400 Hz speech band, in dB, below
# which 16 kHz audio is judged narrowband. Measured on ../shared/data: wideband (G.722) clips
# -46 to -12 dB (median -19), the telephone eval split -81 to -76, G.711 and GSM round trips
# of dev clips -115 to -104.
NARROWBAND_BELOW_DB = -55.0
MEASURE_SECONDS = 60.0  # a signal's channel is measured on its first minute


class AudioError(ValueError):
    """Audio that cannot be read or makes no sense (empty, NaN, impossible rate)."""


def pad_repeat(x: np.ndarray, length: int = WINDOW_SAMPLES) -> np.ndarray:
    """Cut or repeat-pad a 1-D signal to ``length`` samples.

    A longer signal keeps its first ``length`` samples; a shorter one is tiled from its start
    (the reference loaders' ``pad``: ``np.tile(x, n)[:length]``).
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 1:
        raise AudioError(f"expected a 1-D signal, got shape {x.shape}")
    if x.size == 0:
        raise AudioError("cannot pad an empty signal")
    if x.size >= length:
        return x[:length].copy()
    return np.tile(x, math.ceil(length / x.size))[:length]


def to_mono(x: np.ndarray) -> np.ndarray:
    """Average the channels of a (samples, channels) array; a 1-D array is returned as is."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        return x
    if x.ndim != 2:
        raise AudioError(f"expected (samples, channels) audio, got shape {x.shape}")
    return x.mean(axis=1, dtype=np.float32)


def resample(x: np.ndarray, orig_rate: int, new_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Resample a whole 1-D float32 signal with the streams' resampler, so both agree exactly."""
    if orig_rate <= 0 or new_rate <= 0:
        raise AudioError(f"impossible sample rate {orig_rate} -> {new_rate}")
    if orig_rate == new_rate:
        return np.asarray(x, dtype=np.float32)
    from voicescreen.stream.resample import resample as _resample

    return _resample(x, orig_rate, new_rate)


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read a WAV/FLAC/OGG file as mono float32 at ``sample_rate`` Hz, shape (samples,)."""
    return read_audio(path, sample_rate)[0]


def read_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, int]:
    """``load_audio``, and the file's own sample rate (Hz)."""
    import soundfile as sf

    if not Path(path).exists():  # libsndfile would say only "System error."
        raise AudioError(f"{path}: no such file")
    if Path(path).is_dir():
        raise AudioError(f"{path}: a directory, not an audio file")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        reason = str(e).removeprefix(f"Error opening {str(path)!r}: ")  # the path once is enough
        raise AudioError(f"{path}: cannot read audio ({reason})") from e
    if data.shape[0] == 0:
        raise AudioError(f"{path}: no audio samples")
    x = resample(to_mono(data), rate, sample_rate)
    if not np.isfinite(x).all():
        raise AudioError(f"{path}: audio contains NaN or infinite samples")
    return x, int(rate)


def band_ratio_db(x: np.ndarray) -> float | None:
    """Energy of 16 kHz audio ``x`` between ``BAND_EDGE_HZ`` + 200 Hz and 7.5 kHz relative to its
    300-3400 Hz band, in dB (Welch average of 512-point periodograms); None when the speech
    band is silent."""
    x = np.asarray(x, dtype=np.float64)
    n = 512
    if x.size < n:
        return None
    frames = np.lib.stride_tricks.sliding_window_view(x, n)[:: n // 2]
    power = (np.abs(np.fft.rfft(frames * np.hanning(n), axis=1)) ** 2).mean(axis=0)
    hz = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    speech = power[(hz >= 300) & (hz <= 3400)].sum()
    high = power[(hz >= BAND_EDGE_HZ + 200) & (hz <= 7500)].sum()
    if speech <= 0:
        return None
    return float(10 * np.log10(max(high, 1e-30) / speech))


def channel_of_rate(rate: int) -> str:
    """The channel a stream or file of this sample rate is, by its rate alone."""
    return NARROWBAND if rate <= NARROWBAND_MAX_RATE else WIDEBAND


def measure_channel(x: np.ndarray, rate: int = SAMPLE_RATE) -> str:
    """The channel of audio ``x`` (16 kHz samples) that came from a source at ``rate`` Hz:
    narrowband when the source rate says so, or when its first ``MEASURE_SECONDS`` have (almost)
    nothing above 4 kHz (telephone audio stored at a wideband rate), else wideband."""
    if channel_of_rate(rate) == NARROWBAND:
        return NARROWBAND
    ratio = band_ratio_db(x[: int(MEASURE_SECONDS * SAMPLE_RATE)])
    return NARROWBAND if ratio is not None and ratio < NARROWBAND_BELOW_DB else WIDEBAND


@dataclass(frozen=True)
class Window:
    """One model input cut from a longer signal; start/end in samples of the source."""

    index: int
    start: int
    end: int
    samples: np.ndarray  # (window_samples,), repeat-padded when the source was shorter


def sliding_windows(
    x: np.ndarray, window_samples: int = WINDOW_SAMPLES, hop_samples: int = HOP_SAMPLES
) -> Iterator[Window]:
    """Cut a signal into windows of ``window_samples`` every ``hop_samples``.

    A signal shorter than one window gives one repeat-padded window. Otherwise windows start at
    0, hop, 2·hop, ... while they fit, and a last window is aligned to the end of the signal when
    the regular ones leave a tail, so every sample is scored.
    """
    if hop_samples <= 0:
        raise ValueError("hop must be positive")
    n = len(x)
    if n <= window_samples:
        yield Window(0, 0, n, pad_repeat(x, window_samples))
        return
    starts = list(range(0, n - window_samples + 1, hop_samples))
    if starts[-1] + window_samples < n:
        starts.append(n - window_samples)
    for i, s in enumerate(starts):
        yield Window(i, s, s + window_samples, np.asarray(x[s : s + window_samples], np.float32))
