import io

import numpy as np
import pytest
import soundfile as sf

from voicescreen.audio import AudioError
from voicescreen.stream.codecs import (
    ALAW_TO_PCM16,
    MULAW_TO_PCM16,
    AudioFormat,
    DecodeError,
    check_samples,
    decode,
    downmix,
    encode_alaw,
    encode_mulaw,
)

ALL_PCM16 = np.arange(-32768, 32768, dtype=np.int16)


def _libsndfile_decode(subtype: str) -> np.ndarray:
    codes = np.arange(256, dtype=np.uint8).tobytes()
    x, _ = sf.read(
        io.BytesIO(codes), dtype="int16", format="RAW", subtype=subtype, samplerate=8000, channels=1
    )
    return x


def _libsndfile_encode(subtype: str, pcm: np.ndarray) -> np.ndarray:
    buf = io.BytesIO()
    sf.write(buf, pcm, 8000, format="RAW", subtype=subtype)
    return np.frombuffer(buf.getvalue(), dtype=np.uint8)


def test_g711_known_code_points():
    # ITU-T G.711: mu-law 0xFF and 0x7F are +0 and -0, 0x80/0x00 the extremes ±8031 (±32124 on
    # the 16-bit scale); A-law 0xD5/0x55 are the smallest steps ±1 (±8), 0xAA/0x2A ±4032 (±32256).
    assert MULAW_TO_PCM16[0xFF] == 0 and MULAW_TO_PCM16[0x7F] == 0
    assert MULAW_TO_PCM16[0x80] == 32124 and MULAW_TO_PCM16[0x00] == -32124
    assert MULAW_TO_PCM16[0xFE] == 8 and MULAW_TO_PCM16[0x7E] == -8
    assert ALAW_TO_PCM16[0xD5] == 8 and ALAW_TO_PCM16[0x55] == -8
    assert ALAW_TO_PCM16[0xAA] == 32256 and ALAW_TO_PCM16[0x2A] == -32256
    # both laws are odd-symmetric: flipping the sign bit negates the value
    codes = np.arange(128)
    np.testing.assert_array_equal(MULAW_TO_PCM16[codes], -MULAW_TO_PCM16[codes | 0x80])
    np.testing.assert_array_equal(ALAW_TO_PCM16[codes], -ALAW_TO_PCM16[codes | 0x80])


@pytest.mark.parametrize(
    "subtype,table,encode",
    [("ULAW", MULAW_TO_PCM16, encode_mulaw), ("ALAW", ALAW_TO_PCM16, encode_alaw)],
)
def test_g711_matches_libsndfile_on_every_code_and_sample(subtype, table, encode):
    np.testing.assert_array_equal(table, _libsndfile_decode(subtype))
    mine = np.frombuffer(encode(ALL_PCM16), dtype=np.uint8)
    np.testing.assert_array_equal(mine, _libsndfile_encode(subtype, ALL_PCM16))


def test_g711_round_trips():
    codes = np.arange(256)
    mu = np.frombuffer(encode_mulaw(MULAW_TO_PCM16), dtype=np.uint8)
    # every code decodes and re-encodes to itself, except negative zero (0x7F), which is +0
    assert np.nonzero(mu != codes)[0].tolist() == [0x7F] and mu[0x7F] == 0xFF
    al = np.frombuffer(encode_alaw(ALAW_TO_PCM16), dtype=np.uint8)
    np.testing.assert_array_equal(al, codes)
    # linear -> code -> linear stays within half a quantisation step of the segment
    back = MULAW_TO_PCM16[np.frombuffer(encode_mulaw(ALL_PCM16), dtype=np.uint8)].astype(int)
    err = np.abs(back - np.clip(ALL_PCM16.astype(int), -32124, 32124))
    assert err.max() <= 512  # half of the top segment's 1024 step


def test_decode_each_encoding():
    pcm = np.array([0, 16384, -32768, 32767], dtype="<i2")
    x = decode(pcm.tobytes(), AudioFormat("pcm16", 8000))
    np.testing.assert_array_equal(x, [0.0, 0.5, -1.0, 32767 / 32768])
    assert x.dtype == np.float32
    f = np.array([0.25, -0.5], dtype="<f4")
    np.testing.assert_array_equal(decode(f.tobytes(), AudioFormat("float32", 48000)), f)
    np.testing.assert_array_equal(
        decode(bytes([0xFF, 0x80, 0x00]), AudioFormat("mulaw", 8000)),
        np.array([0, 32124, -32124], dtype=np.float32) / 32768,
    )
    np.testing.assert_array_equal(
        decode(bytes([0xD5, 0x2A]), AudioFormat("alaw", 8000)),
        np.array([8, -32256], dtype=np.float32) / 32768,
    )


def test_decode_pcm16_matches_soundfile(speech_clips):
    pcm = np.clip(np.round(speech_clips["bonafide"] * 32768), -32768, 32767).astype("<i2")
    buf = io.BytesIO()
    sf.write(buf, pcm, 16000, format="WAV", subtype="PCM_16")
    want, _ = sf.read(io.BytesIO(buf.getvalue()), dtype="float32")
    np.testing.assert_array_equal(decode(pcm.tobytes(), AudioFormat("pcm16", 16000)), want)


def test_downmix_interleaved_channels():
    left = np.array([0.5, 0.25, -1.0], dtype=np.float32)
    right = np.array([-0.5, 0.75, -1.0], dtype=np.float32)
    frames = np.stack([left, right], axis=1).reshape(-1)  # L R L R ...
    np.testing.assert_array_equal(downmix(frames, 2), [0.0, 0.5, -1.0])
    pcm = (frames * 16384).astype("<i2")  # half scale
    np.testing.assert_array_equal(
        decode(pcm.tobytes(), AudioFormat("pcm16", 16000, channels=2)), [0.0, 0.25, -0.5]
    )
    np.testing.assert_array_equal(check_samples(np.stack([left, right], axis=1), 2), [0, 0.5, -1])


def test_impossible_input_is_rejected_clearly():
    with pytest.raises(DecodeError, match="sample rate"):
        AudioFormat("pcm16", 0)
    with pytest.raises(DecodeError, match="sample rate"):
        AudioFormat("pcm16", -8000)
    with pytest.raises(DecodeError, match="encoding"):
        AudioFormat("opus", 48000)
    with pytest.raises(DecodeError, match="channel"):
        AudioFormat("pcm16", 16000, channels=0)
    with pytest.raises(DecodeError, match="whole frames"):
        decode(b"\x00\x01\x02", AudioFormat("pcm16", 16000))
    with pytest.raises(DecodeError, match="whole frames"):
        decode(b"\x00" * 6, AudioFormat("pcm16", 16000, channels=2))
    with pytest.raises(DecodeError, match="whole frames"):
        decode(b"\x00" * 7, AudioFormat("float32", 16000))
    for bad in (np.nan, np.inf, -np.inf):
        data = np.array([0.1, bad], dtype="<f4").tobytes()
        with pytest.raises(DecodeError, match="NaN or infinite"):
            decode(data, AudioFormat("float32", 16000))
        with pytest.raises(DecodeError, match="NaN or infinite"):
            check_samples(np.array([0.1, bad]))
    for huge in (3e38, -3e38, 32767.0):  # finite, but not [-1, 1] audio (the mix would overflow)
        data = np.array([0.1, huge, huge, 0.0], dtype="<f4").tobytes()
        with pytest.raises(DecodeError, match="must be samples in"):
            decode(data, AudioFormat("float32", 16000, channels=2))
        with pytest.raises(DecodeError, match="must be samples in"):
            check_samples(np.array([[0.1, huge], [huge, 0.0]]), channels=2)
    assert decode(np.array([1.5, -2.0], "<f4").tobytes(), AudioFormat("float32", 16000)).size == 2
    with pytest.raises(DecodeError, match="floats"):
        check_samples(np.array([1, 2], dtype=np.int16))
    assert issubclass(DecodeError, AudioError) and issubclass(DecodeError, ValueError)
    assert decode(b"", AudioFormat("mulaw", 8000)).size == 0
