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

from voicescreen.resample import Resampler
from voicescreen.resample import resample as _resample

SAMPLE_RATE = 16000  # Hz, the one rate inside the package
WINDOW_SAMPLES = 64600  # ≈ 4.04 s: the input of AASIST and the AASIST-repo RawNet2
HOP_SECONDS = 1.0  # default hop between sliding windows
HOP_SAMPLES = int(HOP_SECONDS * SAMPLE_RATE)

# Kinds of audio a bundle may be calibrated for (``score.channels`` of its card): telephone audio
# (8 kHz rates, G.711/GSM/AMR codecs: nothing above ~4 kHz) scores differently from wideband
# audio (16 kHz and up: G.722, Opus, a sound card) through the same model.
WIDEBAND, NARROWBAND = "wideband", "narrowband"
CHANNELS = (WIDEBAND, NARROWBAND)


def check_channel(channel: object) -> str | None:
    """``channel`` itself when it is None or one of ``CHANNELS``; else a ValueError saying which
    are (each surface wraps it in its own error: a stream's ``bad_start``, an HTTP 422)."""
    if channel is None or channel in CHANNELS:
        return channel
    raise ValueError(f"channel must be one of {list(CHANNELS)}, got {str(channel)[:40]!r}")


TELEPHONE_RATE = 8000  # Hz: the telephone band's rate (G.711 mu-law/A-law, GSM, AMR-NB, Twilio)
NARROWBAND_MAX_RATE = 8000  # Hz: a source at this rate or below can hold nothing above 4 kHz
BAND_EDGE_HZ = 4000.0  # narrowband audio has (almost) no energy above this
# Energy above BAND_EDGE_HZ (up to 7.5 kHz) relative to the 300-3400 Hz speech band, in dB, below
# which 16 kHz audio is judged narrowband. Measured on ../shared/data: wideband (G.722) clips
# -46 to -12 dB (median -19), the telephone eval split -81 to -76, G.711 and GSM round trips
# of dev clips -115 to -104.
NARROWBAND_BELOW_DB = -55.0
MEASURE_SECONDS = 60.0  # a signal's channel is measured on its first minute

# What a file may ask of its reader. A header is cheap to write and costly to obey: 20 s at
# 655,350 Hz x 8 channels fits a 113 KB FLAC and decodes to 1.2 GB. So a file is judged by its
# header before a sample is decoded, decoded in blocks, and refused when it is out of bounds.
MIN_FILE_RATE = 4000  # Hz: below it there is no speech band to screen
MAX_FILE_RATE = 384000  # Hz: the highest rate audio interfaces record
# Samples a file may decode to, frames x channels (and as many at the output rate): 3.1 h of
# 48 kHz stereo, 18.6 h of 16 kHz mono. The server's uploads have a tighter bound of their own.
MAX_FILE_SAMPLES = 1 << 30
READ_BLOCK_FRAMES = 1 << 16  # frames decoded at a time (2 MiB of float32 at 8 channels)


class AudioError(ValueError):
    """Audio that cannot be read or makes no sense (empty, NaN, impossible rate)."""


class AudioTooLarge(AudioError):
    """A file that would decode to more samples than its reader allows."""


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
    """Resample a whole 1-D float32 signal with the streams' resampler (``voicescreen.resample``),
    so both agree exactly."""
    if orig_rate <= 0 or new_rate <= 0:
        raise AudioError(f"impossible sample rate {orig_rate} -> {new_rate}")
    if orig_rate == new_rate:
        return np.asarray(x, dtype=np.float32)
    return _resample(x, orig_rate, new_rate)


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read a WAV/FLAC/OGG file as mono float32 at ``sample_rate`` Hz, shape (samples,)."""
    return read_audio(path, sample_rate)[0]


def read_audio(
    path: str | Path, sample_rate: int = SAMPLE_RATE, max_samples: int = MAX_FILE_SAMPLES
) -> tuple[np.ndarray, int]:
    """``load_audio``, and the file's own sample rate (Hz).

    The header is checked before anything is decoded (``check_header``: the rate within
    ``MIN_FILE_RATE``-``MAX_FILE_RATE``, at most ``max_samples`` decoded samples), and the file
    is decoded ``READ_BLOCK_FRAMES`` at a time, each block mixed to mono and resampled before
    the next is read into the result, so memory holds the result and one block, whatever the
    channel count.
    """
    import soundfile as sf

    if not Path(path).exists():  # libsndfile would say only "System error."
        raise AudioError(f"{path}: no such file")
    if Path(path).is_dir():
        raise AudioError(f"{path}: a directory, not an audio file")
    try:
        with sf.SoundFile(str(path)) as f:
            rate, channels = int(f.samplerate), int(f.channels)
            declared = f.frames if f.frames < 1 << 62 else 0  # (a FLAC may leave it unknown)
            check_header(path, declared, channels, rate, sample_rate, max_samples)
            resampler = Resampler(rate, sample_rate)
            out = _Output(-(-declared * sample_rate // rate))
            frames = 0
            for block in f.blocks(READ_BLOCK_FRAMES, dtype="float32", always_2d=True):
                frames += block.shape[0]  # a header may understate: counted as decoded
                check_header(path, frames, channels, rate, sample_rate, max_samples)
                out.put(resampler.process(to_mono(block)))
            out.put(resampler.flush())
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        reason = str(e).removeprefix(f"Error opening {str(path)!r}: ")  # the path once is enough
        raise AudioError(f"{path}: cannot read audio ({reason})") from e
    if frames == 0:
        raise AudioError(f"{path}: no audio samples")
    x = out.samples()
    if not np.isfinite(x).all():
        raise AudioError(f"{path}: audio contains NaN or infinite samples")
    return x, rate


class _Output:
    """A signal written piece by piece into an array of the length its header promised (one
    copy in memory, not the pieces and their concatenation), and past it if the header lied."""

    def __init__(self, expected: int) -> None:
        self.buffer = np.empty(expected, dtype=np.float32)
        self.n = 0
        self.beyond: list[np.ndarray] = []

    def put(self, x: np.ndarray) -> None:
        room = self.buffer.size - self.n
        head = x[:room]
        self.buffer[self.n : self.n + head.size] = head
        self.n += head.size
        if x.size > room:
            self.beyond.append(x[room:])

    def samples(self) -> np.ndarray:
        if self.beyond:
            return np.concatenate([self.buffer[: self.n], *self.beyond])
        return self.buffer[: self.n] if self.n < self.buffer.size else self.buffer


def decoded_samples(frames: int, channels: int, rate: int, sample_rate: int = SAMPLE_RATE) -> int:
    """What reading ``frames`` frames of ``channels`` channels at ``rate`` Hz costs, in samples:
    the more of what it decodes to and what it resamples to at ``sample_rate``."""
    return max(frames * channels, -(-frames * sample_rate // max(rate, 1)))


def check_header(
    path: str | Path,
    frames: int,
    channels: int,
    rate: int,
    sample_rate: int = SAMPLE_RATE,
    max_samples: int = MAX_FILE_SAMPLES,
) -> None:
    """Refuse a file by what its header says: AudioError for a rate outside
    ``MIN_FILE_RATE``-``MAX_FILE_RATE``, AudioTooLarge for more than ``max_samples`` decoded
    samples (``decoded_samples``)."""
    if not MIN_FILE_RATE <= rate <= MAX_FILE_RATE:
        raise AudioError(
            f"{path}: a sample rate of {rate} Hz; files are read at {MIN_FILE_RATE}-"
            f"{MAX_FILE_RATE} Hz"
        )
    if channels < 1:
        raise AudioError(f"{path}: {channels} channels")
    n = decoded_samples(frames, channels, rate, sample_rate)
    if n > max_samples:
        raise AudioTooLarge(
            f"{path}: {frames / rate:.4g} s of {channels}-channel audio at {rate} Hz decodes to "
            f"{n:,} samples; the limit is {max_samples:,}"
        )


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
