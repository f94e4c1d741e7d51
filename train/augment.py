"""On-the-fly, seeded augmentation of 16 kHz training clips: the channel a screener really hears.

Every function is pure given its ``numpy.random.Generator``: a clip augmented with the generator
``rng_for(seed, epoch, index)`` comes out the same in every run, whatever the worker or the order.

- ``add_noise``: additive white, pink or brown noise at an exact SNR (dB);
- ``apply_gain``: a level change in dB, clipped to [-1, 1] as a real front-end clips;
- RawBoost (Tak et al., "RawBoost: A Raw Data Boosting and Augmentation Method applied to
  Automatic Speaker Verification Anti-Spoofing", ICASSP 2022): ``rawboost_lnl`` (linear and
  non-linear convolutive noise: a random multi-notch FIR filter on each power ``x**k`` of the
  signal, k = 1..N_f, the non-linear terms attenuated), ``rawboost_isd`` (impulsive
  signal-dependent noise on a random few percent of the samples), ``rawboost_ssi`` (stationary
  coloured noise: white noise through a random notch filter, at a random SNR), and ``rawboost``
  combining them with the paper's algorithm numbers 1-8;
- codec round trips: ``telephone`` (resample to 8 kHz, G.711 mu-law or A-law encode/decode, back to
  16 kHz) and ``codec_round_trip`` through PyAV (Opus, G.722, AMR-NB) where PyAV is installed.

``Augment`` composes them (RawBoost, then noise, then gain, then a codec, each with a probability)
and is the config the training recipes carry.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from fractions import Fraction
from functools import lru_cache
from typing import Any

import numpy as np

from voicescreen.audio import SAMPLE_RATE, TELEPHONE_RATE, resample

log = logging.getLogger(__name__)

PCM16_SCALE = 32768.0


def rng_for(seed: int, *keys: int) -> np.random.Generator:
    """A generator that depends only on ``seed`` and ``keys`` (e.g. epoch and clip index)."""
    return np.random.default_rng([int(seed), *(int(k) for k in keys)])


def _uniform(rng: np.random.Generator, bounds: Sequence[float] | float) -> float:
    if isinstance(bounds, int | float):
        return float(bounds)
    lo, hi = bounds
    return float(rng.uniform(lo, hi)) if hi != lo else float(lo)


def power(x: np.ndarray) -> float:
    """Mean square of a signal."""
    return float(np.mean(np.square(x, dtype=np.float64)))


def snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    """The SNR of ``noisy`` against ``clean`` in dB (noise = noisy - clean)."""
    noise = power(np.asarray(noisy, np.float64) - np.asarray(clean, np.float64))
    return float(10 * np.log10(power(clean) / max(noise, 1e-30)))


# --- additive noise and gain -------------------------------------------------------------------


def coloured_noise(n: int, rng: np.random.Generator, colour: str = "white") -> np.ndarray:
    """Unit-power noise of ``n`` samples: ``white`` (flat), ``pink`` (1/f) or ``brown`` (1/f²)."""
    white = rng.standard_normal(n)
    if colour == "white":
        noise = white
    elif colour in ("pink", "brown"):
        spectrum = np.fft.rfft(white)
        f = np.arange(spectrum.size, dtype=np.float64)
        f[0] = 1.0  # keep DC finite; it is removed below
        spectrum /= np.sqrt(f) if colour == "pink" else f
        noise = np.fft.irfft(spectrum, n)
        noise -= noise.mean()
    else:
        raise ValueError(f"unknown noise colour {colour!r}; use white, pink or brown")
    return noise / np.sqrt(max(power(noise), 1e-30))


def add_noise(
    x: np.ndarray, snr: float, rng: np.random.Generator, colour: str = "white"
) -> np.ndarray:
    """``x`` plus noise scaled so that the SNR is exactly ``snr`` dB (a silent ``x`` is kept)."""
    x = np.asarray(x, dtype=np.float32)
    p = power(x)
    if p == 0:
        return x.copy()
    noise = coloured_noise(x.size, rng, colour) * np.sqrt(p / 10 ** (snr / 10))
    return (x + noise).astype(np.float32)


def apply_gain(x: np.ndarray, db: float, clip: bool = True) -> np.ndarray:
    """``x`` times ``10**(db/20)``, clipped to [-1, 1] unless ``clip`` is off."""
    y = np.asarray(x, dtype=np.float32) * np.float32(10 ** (db / 20))
    return np.clip(y, -1.0, 1.0) if clip else y


# --- RawBoost ----------------------------------------------------------------------------------


@dataclass
class RawBoostOptions:
    """RawBoost's parameters, named as in the paper's code (defaults are its defaults)."""

    p: float = 0.0  # probability that a clip is processed
    algo: int = 5  # 1 LnL, 2 ISD, 3 SSI, 4 = 1+2+3, 5 = 1+2, 6 = 1+3, 7 = 2+3, 8 = 1 || 2
    n_bands: int = 5  # notch filters per random filter
    min_f: float = 20.0  # centre frequency range (Hz)
    max_f: float = 8000.0
    min_bw: float = 100.0  # notch width range (Hz)
    max_bw: float = 1000.0
    min_coeff: int = 10  # taps per notch filter
    max_coeff: int = 100
    min_g: float = 0.0  # gain of the linear component (dB)
    max_g: float = 0.0
    min_bias_lin_nonlin: float = 5.0  # attenuation of the non-linear components (dB)
    max_bias_lin_nonlin: float = 20.0
    n_f: int = 5  # order of the non-linearity (1 = linear only)
    p_isd: float = 10.0  # at most this percent of the samples get impulsive noise
    g_sd: float = 2.0  # impulsive noise gain
    snr_min: float = 10.0  # SSI noise SNR range (dB)
    snr_max: float = 40.0


def normalise_peak(x: np.ndarray, always: bool = False) -> np.ndarray:
    """Divide by the peak magnitude when it exceeds 1 (or ``always``)."""
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak > 0 and (always or peak > 1):
        return x / peak
    return x


def notch_filter(
    rng: np.random.Generator, o: RawBoostOptions, gain_db: tuple[float, float], fs: int
) -> np.ndarray:
    """A random FIR filter: ``n_bands`` windowed-sinc band-stop filters in cascade, scaled so that
    its largest magnitude response is ``gain`` dB, gain drawn from ``gain_db``."""
    from scipy import signal

    b = np.ones(1)
    nyquist = fs / 2
    for _ in range(o.n_bands):
        fc = rng.uniform(o.min_f, o.max_f)
        bw = rng.uniform(o.min_bw, o.max_bw)
        taps = int(rng.uniform(o.min_coeff, o.max_coeff))
        taps += 1 - taps % 2  # band-stop filters need an odd length
        f1 = max(fc - bw / 2, 1e-3)
        f2 = min(fc + bw / 2, nyquist - 1e-3)
        if f2 <= f1:  # a band wholly outside (0, Nyquist): nothing to notch
            continue
        b = np.convolve(signal.firwin(taps, [f1, f2], window="hamming", fs=fs), b)
    lo, hi = gain_db  # the non-linear range may be given high-to-low, as in the paper's code
    gain = lo + (hi - lo) * rng.random()
    _, h = signal.freqz(b, 1, worN=512, fs=fs)
    return b * (10 ** (gain / 20) / max(float(np.max(np.abs(h))), 1e-12))


def fir_same(x: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Filter ``x`` by the linear-phase FIR ``b``, delay compensated (output aligned with x)."""
    from scipy.signal import fftconvolve

    delay = (len(b) - 1) // 2
    return fftconvolve(x, b)[delay : delay + len(x)]


def rawboost_lnl(
    x: np.ndarray, rng: np.random.Generator, o: RawBoostOptions, fs: int = SAMPLE_RATE
) -> np.ndarray:
    """Linear and non-linear convolutive noise: sum over k of a random filter applied to x**k."""
    x = np.asarray(x, dtype=np.float64)
    y = np.zeros_like(x)
    for k in range(1, o.n_f + 1):
        if k == 1:
            gain = (o.min_g, o.max_g)
        else:
            gain = (o.min_g - o.min_bias_lin_nonlin, o.max_g - o.max_bias_lin_nonlin)
        y += fir_same(x**k, notch_filter(rng, o, gain, fs))
    return normalise_peak(y - y.mean()).astype(np.float32)


def rawboost_isd(x: np.ndarray, rng: np.random.Generator, o: RawBoostOptions) -> np.ndarray:
    """Impulsive signal-dependent noise: up to ``p_isd`` % of the samples x[i] become
    x[i] (1 + g_sd · u · v), u and v uniform on [-1, 1]."""
    x = np.asarray(x, dtype=np.float64)
    beta = rng.uniform(0, o.p_isd)
    n = int(x.size * beta / 100)
    idx = rng.permutation(x.size)[:n]
    y = x.copy()
    factor = rng.uniform(-1, 1, n) * rng.uniform(-1, 1, n)
    y[idx] = x[idx] + o.g_sd * x[idx] * factor
    return normalise_peak(y).astype(np.float32)


def rawboost_ssi(
    x: np.ndarray, rng: np.random.Generator, o: RawBoostOptions, fs: int = SAMPLE_RATE
) -> np.ndarray:
    """Stationary signal-independent noise: white noise through a random notch filter, added at a
    random SNR in [snr_min, snr_max] dB."""
    x = np.asarray(x, dtype=np.float64)
    noise = fir_same(rng.standard_normal(x.size), notch_filter(rng, o, (o.min_g, o.max_g), fs))
    snr = rng.uniform(o.snr_min, o.snr_max)
    scale = np.linalg.norm(x) / max(np.linalg.norm(noise), 1e-30) / 10 ** (snr / 20)
    return (x + noise * scale).astype(np.float32)


def rawboost(
    x: np.ndarray, rng: np.random.Generator, o: RawBoostOptions, fs: int = SAMPLE_RATE
) -> np.ndarray:
    """RawBoost algorithm ``o.algo`` (numbered as in the paper's code) applied to ``x``."""
    steps = {
        1: "1",
        2: "2",
        3: "3",
        4: "123",
        5: "12",
        6: "13",
        7: "23",
    }
    if o.algo == 8:  # LnL and ISD in parallel, summed
        return normalise_peak(rawboost_lnl(x, rng, o, fs) + rawboost_isd(x, rng, o)).astype(
            np.float32
        )
    if o.algo not in steps:
        raise ValueError(f"unknown RawBoost algorithm {o.algo}; use 1-8")
    y = np.asarray(x, dtype=np.float32)
    for step in steps[o.algo]:
        if step == "1":
            y = rawboost_lnl(y, rng, o, fs)
        elif step == "2":
            y = rawboost_isd(y, rng, o)
        else:
            y = rawboost_ssi(y, rng, o, fs)
    return y


# --- codecs ------------------------------------------------------------------------------------


def _g711() -> tuple[Any, Any, np.ndarray, np.ndarray]:
    from voicescreen.stream.codecs import (
        ALAW_TO_PCM16,
        MULAW_TO_PCM16,
        encode_alaw,
        encode_mulaw,
    )

    return encode_mulaw, encode_alaw, MULAW_TO_PCM16, ALAW_TO_PCM16


def to_pcm16(x: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] -> int16, rounded and clipped."""
    return np.clip(np.round(np.asarray(x, np.float64) * PCM16_SCALE), -32768, 32767).astype(
        np.int16
    )


def g711_round_trip(x: np.ndarray, law: str = "mulaw") -> np.ndarray:
    """Quantise float samples through G.711 (``mulaw`` or ``alaw``) at their own rate."""
    encode_mulaw, encode_alaw, mulaw_table, alaw_table = _g711()
    pcm = to_pcm16(x)
    if law == "mulaw":
        codes = np.frombuffer(encode_mulaw(pcm), dtype=np.uint8)
        table = mulaw_table
    elif law == "alaw":
        codes = np.frombuffer(encode_alaw(pcm), dtype=np.uint8)
        table = alaw_table
    else:
        raise ValueError(f"unknown G.711 law {law!r}; use mulaw or alaw")
    return (table[codes].astype(np.float32) / np.float32(PCM16_SCALE)).astype(np.float32)


def telephone(x: np.ndarray, law: str = "mulaw", rate: int = TELEPHONE_RATE) -> np.ndarray:
    """The telephone channel: resample 16 kHz -> ``rate``, G.711 round trip, back to 16 kHz.

    The output has the input's length; both resamplings are zero-phase, so it is time-aligned.
    """
    x = np.asarray(x, dtype=np.float32)
    narrow = g711_round_trip(resample(x, SAMPLE_RATE, rate), law)
    y = resample(narrow, rate, SAMPLE_RATE)
    return _fit_length(y, x.size)


def _fit_length(y: np.ndarray, n: int) -> np.ndarray:
    if y.size >= n:
        return np.ascontiguousarray(y[:n], dtype=np.float32)
    return np.concatenate([y, np.zeros(n - y.size, np.float32)]).astype(np.float32)


@dataclass(frozen=True)
class AvCodec:
    """A codec that PyAV (FFmpeg) encodes and decodes: encoder name, its sample rate, bit rates."""

    encoder: str
    decoder: str
    rate: int
    bit_rates: tuple[int, ...] = ()


AV_CODECS: dict[str, AvCodec] = {
    "opus": AvCodec("libopus", "libopus", SAMPLE_RATE, (6000, 8000, 12000, 16000, 24000, 32000)),
    "g722": AvCodec("g722", "g722", SAMPLE_RATE),
    "amr-nb": AvCodec(
        "libopencore_amrnb", "amrnb", TELEPHONE_RATE, (4750, 5900, 7400, 10200, 12200)
    ),
}


def av_available(codec: str) -> bool:
    """Whether PyAV is installed and its FFmpeg has ``codec`` (a key of ``AV_CODECS``)."""
    spec = AV_CODECS.get(codec)
    if spec is None:
        return False
    try:
        import av

        av.Codec(spec.encoder, "w")
        av.Codec(spec.decoder, "r")
    except Exception:  # ImportError, or FFmpeg built without the codec
        return False
    return True


def _av_encode_decode(x: np.ndarray, spec: AvCodec, bit_rate: int | None) -> np.ndarray:
    """``x`` at ``spec.rate`` through the codec; returns the decoded signal at ``spec.rate``."""
    import av

    enc = av.CodecContext.create(spec.encoder, "w")
    enc.sample_rate = spec.rate
    enc.layout = "mono"
    enc.format = "s16"
    enc.time_base = Fraction(1, spec.rate)
    if bit_rate:
        enc.bit_rate = int(bit_rate)
    enc.open()
    dec = av.CodecContext.create(spec.decoder, "r")
    dec.sample_rate = spec.rate
    dec.layout = "mono"
    if enc.extradata:
        dec.extradata = enc.extradata
    dec.open()

    frame_size = enc.frame_size or 1024
    n = -(-x.size // frame_size) * frame_size
    pcm = np.zeros(n, np.int16)
    pcm[: x.size] = to_pcm16(x)
    out: list[np.ndarray] = []
    out_rate = spec.rate

    def decode(packets) -> None:
        nonlocal out_rate
        for packet in packets:
            for frame in dec.decode(packet):
                a = frame.to_ndarray().reshape(-1)
                out_rate = frame.sample_rate
                scale = PCM16_SCALE if a.dtype == np.int16 else 1.0
                out.append(a.astype(np.float32) / np.float32(scale))

    for i in range(0, n, frame_size):
        frame = av.AudioFrame.from_ndarray(
            pcm[None, i : i + frame_size], format="s16", layout="mono"
        )
        frame.sample_rate = spec.rate
        frame.pts = i
        decode(enc.encode(frame))
    decode(enc.encode(None))
    y = np.concatenate(out) if out else np.zeros(0, np.float32)
    if out_rate != spec.rate:  # libopus decodes at 48 kHz
        y = resample(y, out_rate, spec.rate)
    return y


def speech_probe(rate: int, seconds: float = 1.0) -> np.ndarray:
    """A deterministic vowel-like test signal: a glottal pulse train (f0 80-160 Hz) through three
    formant resonators, amplitude-modulated at 4 Hz, peak 0.3."""
    from scipy import signal

    n = int(rate * seconds)
    t = np.arange(n) / rate
    phase = np.cumsum((120 + 40 * np.sin(2 * np.pi * 1.3 * t)) / rate)
    y = (np.diff(np.floor(phase), prepend=0.0) > 0).astype(np.float64)
    for fc, bw in ((700, 130), (1200, 70), (2500, 160)):
        r = np.exp(-np.pi * bw / rate)
        y = signal.lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * fc / rate), r * r], y)
    y *= 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)
    return (0.3 * y / np.max(np.abs(y))).astype(np.float32)


@lru_cache(maxsize=32)
def codec_delay(codec: str, bit_rate: int | None = None) -> int:
    """The codec's delay in samples at its rate (encoder look-ahead), measured once by
    cross-correlating a speech-like probe with its round trip; within ~2 samples for AMR-NB."""
    spec = AV_CODECS[codec]
    probe = speech_probe(spec.rate)
    y = _av_encode_decode(probe, spec, bit_rate)
    m = probe.size // 2
    lags = range(min(spec.rate // 10, y.size - m))
    return int(np.argmax([float(np.dot(y[lag : lag + m], probe[:m])) for lag in lags]))


def codec_round_trip(
    x: np.ndarray, codec: str, bit_rate: int | None = None, rate: int = SAMPLE_RATE
) -> np.ndarray:
    """``x`` (at ``rate``) encoded and decoded by a PyAV codec (``opus``, ``g722``, ``amr-nb``),
    resampled to and from the codec's rate, time-aligned, same length."""
    if codec not in AV_CODECS:
        raise ValueError(f"unknown codec {codec!r}; PyAV codecs: {list(AV_CODECS)}")
    if not av_available(codec):
        raise RuntimeError(f"PyAV with FFmpeg's {AV_CODECS[codec].encoder} is needed for {codec}")
    spec = AV_CODECS[codec]
    x = np.asarray(x, dtype=np.float32)
    if bit_rate is None and spec.bit_rates:
        bit_rate = spec.bit_rates[len(spec.bit_rates) // 2]
    at_codec = resample(x, rate, spec.rate)
    y = _av_encode_decode(at_codec, spec, bit_rate)
    delay = codec_delay(codec, bit_rate)
    y = _fit_length(y[delay:], at_codec.size)
    return _fit_length(resample(y, spec.rate, rate), x.size)


def gsm_round_trip(x: np.ndarray, rate: int = SAMPLE_RATE) -> np.ndarray:
    """``x`` (at ``rate``) through GSM 06.10 full rate (libsndfile's encoder, via soundfile) at
    8 kHz and back; time-aligned (the codec adds no delay), same length."""
    import io

    import soundfile as sf

    x = np.asarray(x, dtype=np.float32)
    narrow = resample(x, rate, TELEPHONE_RATE)
    buf = io.BytesIO()
    sf.write(buf, np.clip(narrow, -1.0, 1.0), TELEPHONE_RATE, format="WAV", subtype="GSM610")
    buf.seek(0)
    y, _ = sf.read(buf, dtype="float32")
    return _fit_length(resample(_fit_length(y, narrow.size), TELEPHONE_RATE, rate), x.size)


# A mobile call reaching a fixed-line tap: GSM 06.10 on the radio leg, then G.711 mu-law at 8 kHz
# on the trunk.
MOBILE = "mobile"
CHANNELS = ("clean", "mulaw", "alaw", *AV_CODECS, "gsm", MOBILE)


# The channels validation runs through: wideband and telephone codecs, and Opus from narrow to
# wide bit rates (``NAME@RATE`` names a PyAV codec at a bit rate, in b/s or with a ``k``).
VALIDATION_CHANNELS = (
    "clean", "g722", "mulaw", "alaw", "gsm", "amr-nb", "opus@8k", "opus@16k", "opus@24k",
)  # fmt: skip


def parse_channel(spec: str) -> tuple[str, int | None]:
    """A channel name and its bit rate: ``opus@8k`` -> (``opus``, 8000); ``mulaw`` -> (``mulaw``,
    None). Only the PyAV codecs take a bit rate."""
    name, at, rate = spec.partition("@")
    if name not in CHANNELS:
        raise ValueError(f"unknown channel {name!r}; use one of {list(CHANNELS)}")
    if not at:
        return name, None
    if name not in AV_CODECS:
        raise ValueError(f"channel {spec!r}: only {list(AV_CODECS)} take a bit rate")
    text = rate.lower().removesuffix("k")
    try:
        bit_rate = int(float(text) * (1000 if rate.lower().endswith("k") else 1))
    except ValueError:
        raise ValueError(f"channel {spec!r}: bit rate {rate!r} is not a number") from None
    if bit_rate <= 0:
        raise ValueError(f"channel {spec!r}: bit rate must be positive")
    return name, bit_rate


def channel_available(spec: str) -> bool:
    """Whether this machine can run channel ``spec`` (a PyAV codec needs FFmpeg's encoder)."""
    name, _ = parse_channel(spec)
    return name not in AV_CODECS or av_available(name)


def describe_channel(spec: str) -> dict[str, Any]:
    """What channel ``spec`` really runs here: codec implementation, rate and bit rate; raises
    RuntimeError when this machine does not have it (never a silent substitute)."""
    name, bit_rate = parse_channel(spec)
    if name in AV_CODECS:
        if not av_available(name):
            raise RuntimeError(
                f"channel {spec}: PyAV with FFmpeg's {AV_CODECS[name].encoder} is not available"
            )
        import av

        codec = AV_CODECS[name]
        if bit_rate is None and codec.bit_rates:
            bit_rate = codec.bit_rates[len(codec.bit_rates) // 2]
        avcodec = ".".join(str(v) for v in av.library_versions.get("libavcodec", ()))
        return {
            "codec": name,
            "implementation": f"FFmpeg {codec.encoder}/{codec.decoder} via PyAV {av.__version__}"
            + (f" (libavcodec {avcodec})" if avcodec else ""),
            "rate": codec.rate,
            "bit_rate": bit_rate,
        }
    what = {
        "clean": ("none", "unchanged", SAMPLE_RATE),
        "mulaw": ("G.711 mu-law", "voicescreen.stream.codecs tables", TELEPHONE_RATE),
        "alaw": ("G.711 A-law", "voicescreen.stream.codecs tables", TELEPHONE_RATE),
        "gsm": ("GSM 06.10", "libsndfile via soundfile", TELEPHONE_RATE),
        MOBILE: ("GSM 06.10 then G.711 mu-law", "libsndfile, then our tables", TELEPHONE_RATE),
    }[name]
    return {"codec": what[0], "implementation": what[1], "rate": what[2], "bit_rate": None}


def channel(
    x: np.ndarray, name: str, rng: np.random.Generator | None = None, bit_rate: int | None = None
) -> np.ndarray:
    """``x`` through the named channel: ``clean`` (unchanged), ``mulaw``/``alaw`` (8 kHz G.711
    telephone), a PyAV codec (``opus``, ``g722``, ``amr-nb``) at ``bit_rate`` (drawn from the
    codec's rates with ``rng`` when given, else its middle rate; ``opus@8k`` names one), ``gsm``
    (GSM 06.10 full rate at 8 kHz), or ``mobile`` (GSM 06.10, then the mu-law telephone
    channel)."""
    if "@" in name:
        name, bit_rate = parse_channel(name)
    if name == "clean":
        return np.asarray(x, dtype=np.float32)
    if name == "gsm":
        return gsm_round_trip(x)
    if name == MOBILE:
        return telephone(gsm_round_trip(x), "mulaw")
    if name in ("mulaw", "alaw"):
        return telephone(x, name)
    if name in AV_CODECS:
        spec = AV_CODECS[name]
        if bit_rate is None and rng is not None and spec.bit_rates:
            bit_rate = int(rng.choice(spec.bit_rates))
        return codec_round_trip(x, name, bit_rate)
    raise ValueError(f"unknown channel {name!r}; use one of {list(CHANNELS)}")


# --- the composable config ---------------------------------------------------------------------


@dataclass
class NoiseOptions:
    p: float = 0.0
    snr_db: tuple[float, float] = (10.0, 40.0)
    colours: tuple[str, ...] = ("white", "pink", "brown")  # one drawn per clip


@dataclass
class GainOptions:
    p: float = 0.0
    db: tuple[float, float] = (-12.0, 6.0)


@dataclass
class CodecOptions:
    p: float = 0.0
    codecs: tuple[str, ...] = ("mulaw",)  # one drawn per clip, from CHANNELS


def _build(cls: type, d: Mapping[str, Any] | Any) -> Any:
    if isinstance(d, cls):
        return d
    names = {f.name: f for f in fields(cls)}
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown option(s) {unknown}; known: {sorted(names)}")
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    return cls(**kw)


@dataclass
class Augment:
    """Which augmentations a training clip gets, in this order: RawBoost, noise, gain, codec.

    Each stage fires with its probability ``p``; with every ``p`` at 0 (the default) the clip is
    unchanged. ``Augment.preset(name)`` gives the ready-made ones in ``PRESETS``.
    """

    rawboost: RawBoostOptions = field(default_factory=RawBoostOptions)
    noise: NoiseOptions = field(default_factory=NoiseOptions)
    gain: GainOptions = field(default_factory=GainOptions)
    codec: CodecOptions = field(default_factory=CodecOptions)

    def __post_init__(self) -> None:
        unknown = [c for c in self.codec.codecs if c not in CHANNELS]
        if unknown:
            raise ValueError(f"unknown codec(s) {unknown}; use {list(CHANNELS)}")
        missing = [c for c in self.codec.codecs if c in AV_CODECS and not av_available(c)]
        if missing and self.codec.p > 0:
            raise RuntimeError(f"codec(s) {missing} need PyAV (pip install av) with FFmpeg support")

    @property
    def enabled(self) -> bool:
        return any(s.p > 0 for s in (self.rawboost, self.noise, self.gain, self.codec))

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Augment one 16 kHz clip; the same ``rng`` state gives the same output."""
        y = np.asarray(x, dtype=np.float32)
        # Draw every decision up front so that one stage's randomness never shifts another's.
        fire = rng.random(4) < np.array([self.rawboost.p, self.noise.p, self.gain.p, self.codec.p])
        seeds = rng.integers(0, 2**63, size=4)
        if fire[0]:
            y = rawboost(y, np.random.default_rng(seeds[0]), self.rawboost)
        if fire[1]:
            r = np.random.default_rng(seeds[1])
            colour = str(r.choice(self.noise.colours))
            y = add_noise(y, _uniform(r, self.noise.snr_db), r, colour)
        if fire[2]:
            y = apply_gain(y, _uniform(np.random.default_rng(seeds[2]), self.gain.db))
        if fire[3]:
            r = np.random.default_rng(seeds[3])
            y = channel(y, str(r.choice(self.codec.codecs)), r)
        return np.asarray(y, dtype=np.float32)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> Augment:
        """From a dict such as a TOML ``[augment]`` table; ``preset = "name"`` starts from a
        preset and the other keys override it."""
        d = dict(d or {})
        base = cls.preset(d.pop("preset")).to_dict() if "preset" in d else cls().to_dict()
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"augment: unknown section(s) {unknown}; known: {sorted(known)}")
        for k, v in d.items():
            base[k] = {**base[k], **v}
        return cls(
            rawboost=_build(RawBoostOptions, base["rawboost"]),
            noise=_build(NoiseOptions, base["noise"]),
            gain=_build(GainOptions, base["gain"]),
            codec=_build(CodecOptions, base["codec"]),
        )

    @classmethod
    def preset(cls, name: str) -> Augment:
        if name not in PRESETS:
            raise ValueError(f"unknown augmentation preset {name!r}; known: {list(PRESETS)}")
        return cls.from_dict(PRESETS[name])


PRESETS: dict[str, dict[str, Any]] = {
    "none": {},
    # RawBoost as the paper's best LA setting (series LnL + ISD) on every clip.
    "rawboost": {"rawboost": {"p": 1.0, "algo": 5}},
    # The product's channel: noise, level, and the telephone / VoIP codecs.
    "channel": {
        "rawboost": {"p": 0.3, "algo": 5},
        "noise": {"p": 0.3, "snr_db": (10.0, 40.0)},
        "gain": {"p": 0.3, "db": (-12.0, 6.0)},
        "codec": {"p": 0.6, "codecs": ("mulaw", "alaw", "opus", "g722", "amr-nb")},
    },
    "telephone": {"codec": {"p": 0.5, "codecs": ("mulaw",)}},
}


__all__ = [
    "AV_CODECS",
    "CHANNELS",
    "PRESETS",
    "VALIDATION_CHANNELS",
    "Augment",
    "CodecOptions",
    "GainOptions",
    "NoiseOptions",
    "RawBoostOptions",
    "add_noise",
    "apply_gain",
    "av_available",
    "channel",
    "channel_available",
    "codec_round_trip",
    "coloured_noise",
    "describe_channel",
    "g711_round_trip",
    "gsm_round_trip",
    "parse_channel",
    "rawboost",
    "rawboost_isd",
    "rawboost_lnl",
    "rawboost_ssi",
    "rng_for",
    "snr_db",
    "telephone",
]
