"""Decode the raw audio that transports send into float32 samples in [-1, 1].

Formats: PCM16 little-endian, float32 little-endian, and G.711 mu-law and A-law (8-bit codes,
the telephone formats; Twilio Media Streams send 8 kHz mu-law). Interleaved channels are averaged
to mono. A chunk must hold whole frames (``channels`` samples each): transports deliver whole
frames per message, so a ragged chunk means a malformed stream and is rejected, never guessed at.

The G.711 tables follow ITU-T G.711 (1988), tables 1a/1b and 2a/2b: mu-law decodes to ±8031 steps
(±32124 on the 16-bit scale), A-law to ±4032 (±32256); codes are transmitted with their bits
inverted (mu-law) or even bits inverted (A-law, XOR 0x55).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from voicescreen.audio import NARROWBAND, SAMPLE_RATE, AudioError, channel_of_rate

ENCODINGS = {"pcm16": 2, "float32": 4, "mulaw": 1, "alaw": 1}  # encoding -> bytes per sample
TELEPHONE_ENCODINGS = ("mulaw", "alaw")  # G.711: narrowband whatever rate is declared
PCM16_SCALE = 32768.0  # int16 -> [-1, 1), as soundfile reads PCM16
# Float audio is [-1, 1]; a little over (a filter's overshoot) is audio, but samples past this are
# not: PCM values sent as floats, or garbage that would overflow to infinity in the mix-down.
FLOAT_LIMIT = 64.0


class DecodeError(AudioError):
    """Input bytes that cannot be audio in the declared format."""


@dataclass(frozen=True)
class AudioFormat:
    """What a transport says its bytes are: encoding, sample rate (Hz) and interleaved channels."""

    encoding: str = "pcm16"
    sample_rate: int = SAMPLE_RATE
    channels: int = 1

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise DecodeError(f"unknown encoding {self.encoding!r}; use one of {list(ENCODINGS)}")
        if not isinstance(self.sample_rate, int) or self.sample_rate <= 0:
            raise DecodeError(
                f"impossible sample rate {self.sample_rate!r}: must be a positive int"
            )
        if not isinstance(self.channels, int) or self.channels <= 0:
            raise DecodeError(f"impossible channel count {self.channels!r}")

    @property
    def sample_width(self) -> int:
        return ENCODINGS[self.encoding]

    @property
    def channel(self) -> str:
        """The kind of audio this format carries (``audio.CHANNELS``): telephone codecs and rates
        of 8 kHz or less are narrowband, the rest wideband."""
        if self.encoding in TELEPHONE_ENCODINGS:
            return NARROWBAND
        return channel_of_rate(self.sample_rate)

    @property
    def frame_bytes(self) -> int:
        return self.sample_width * self.channels


# --- G.711 -------------------------------------------------------------------------------------

MULAW_BIAS = 0x84  # 33 on the 14-bit scale, shifted into 16 bits
MULAW_CLIP = 32635


def _mulaw_table() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + MULAW_BIAS) << exponent) - MULAW_BIAS
    return np.where(u & 0x80, -magnitude, magnitude).astype(np.int16)


def _alaw_table() -> np.ndarray:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    exponent = (a >> 4) & 0x07
    mantissa = a & 0x0F
    magnitude = np.where(
        exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0)
    )
    return np.where(a & 0x80, magnitude, -magnitude).astype(np.int16)


MULAW_TO_PCM16 = _mulaw_table()  # code -> linear value on the 16-bit scale
ALAW_TO_PCM16 = _alaw_table()


def encode_mulaw(pcm: np.ndarray) -> bytes:
    """Linear int16 samples -> G.711 mu-law codes (the encoder of ITU-T G.711 / Sun g711.c)."""
    x = np.asarray(pcm, dtype=np.int32)
    sign = np.where(x < 0, 0x80, 0x00)
    magnitude = np.minimum(np.abs(x), MULAW_CLIP) + MULAW_BIAS
    exponent = np.clip(np.floor(np.log2(magnitude)).astype(np.int32) - 7, 0, 7)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes()


def encode_alaw(pcm: np.ndarray) -> bytes:
    """Linear int16 samples -> G.711 A-law codes (the encoder of ITU-T G.711 / Sun g711.c)."""
    x = np.asarray(pcm, dtype=np.int32)
    sign = np.where(x >= 0, 0x80, 0x00)
    magnitude = np.minimum(np.abs(x) >> 3, 0x0FFF)  # 13-bit, quantised symmetrically
    exponent = np.clip(np.floor(np.log2(np.maximum(magnitude, 1))).astype(np.int32) - 4, 0, 7)
    shift = np.maximum(exponent, 1)
    mantissa = (magnitude >> shift) & 0x0F
    return ((sign | (exponent << 4) | mantissa) ^ 0x55).astype(np.uint8).tobytes()


# --- decoding ----------------------------------------------------------------------------------


def downmix(frames: np.ndarray, channels: int) -> np.ndarray:
    """Interleaved samples (n * channels,) -> mono (n,) float32, the mean of the channels."""
    x = np.asarray(frames, dtype=np.float32)
    if channels == 1:
        return x
    if x.size % channels:
        raise DecodeError(f"{x.size} samples are not whole frames of {channels} channels")
    return x.reshape(-1, channels).mean(axis=1, dtype=np.float32)


def _samples(data: bytes | bytearray | memoryview, fmt: AudioFormat) -> np.ndarray:
    buf = memoryview(data).cast("B")
    if len(buf) % fmt.frame_bytes:
        raise DecodeError(
            f"{len(buf)} bytes are not whole frames of {fmt.encoding} x {fmt.channels} channel(s) "
            f"({fmt.frame_bytes} bytes per frame)"
        )
    if fmt.encoding == "pcm16":
        return np.frombuffer(buf, dtype="<i2").astype(np.float32) / np.float32(PCM16_SCALE)
    if fmt.encoding == "float32":
        return _check_floats(np.frombuffer(buf, dtype="<f4").astype(np.float32), "float32 audio")
    codes = np.frombuffer(buf, dtype=np.uint8)
    table = MULAW_TO_PCM16 if fmt.encoding == "mulaw" else ALAW_TO_PCM16
    return table[codes].astype(np.float32) / np.float32(PCM16_SCALE)


def decode(data: bytes | bytearray | memoryview, fmt: AudioFormat) -> np.ndarray:
    """Bytes in ``fmt`` -> mono float32 samples at ``fmt.sample_rate``, shape (frames,)."""
    return downmix(_samples(data, fmt), fmt.channels)


def check_samples(x: np.ndarray, channels: int = 1) -> np.ndarray:
    """Float samples given directly (not as bytes): (n,) or (n, channels) -> mono float32 (n,)."""
    a = np.asarray(x)
    if a.dtype.kind != "f":
        raise DecodeError(f"audio samples must be floats in [-1, 1], got dtype {a.dtype}")
    a = _check_floats(a.astype(np.float32, copy=False), "audio")
    if a.ndim == 2:
        if a.shape[1] != channels:
            raise DecodeError(f"expected {channels} channel(s), got an array of shape {a.shape}")
        a = a.mean(axis=1, dtype=np.float32)
    elif a.ndim == 1:
        a = downmix(a, channels)
    else:
        raise DecodeError(f"expected (samples,) or (samples, channels) audio, got {a.shape}")
    return _check_floats(a, "audio")


def _check_floats(x: np.ndarray, what: str) -> np.ndarray:
    """``x`` when every sample is finite and within ``FLOAT_LIMIT``, else ``DecodeError``."""
    if not np.isfinite(x).all():
        raise DecodeError(f"{what} contains NaN or infinite samples")
    peak = float(np.abs(x).max()) if x.size else 0.0
    if peak > FLOAT_LIMIT:
        raise DecodeError(
            f"{what} must be samples in [-1, 1]; got a sample of magnitude {peak:.3g} "
            "(PCM16 values sent as float32? declare encoding pcm16)"
        )
    return x
