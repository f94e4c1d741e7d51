import numpy as np
import pytest
import soundfile as sf

from voicescreen.audio import (
    SAMPLE_RATE,
    WINDOW_SAMPLES,
    AudioError,
    load_audio,
    pad_repeat,
    sliding_windows,
)


def test_pad_repeat_tiles_from_the_start_like_the_reference_loader():
    x = np.arange(5, dtype=np.float32)
    y = pad_repeat(x, 12)
    # reference: np.tile(x, (1, int(max_len / x_len) + 1))[:, :max_len][0]
    ref = np.tile(x, (1, int(12 / 5) + 1))[:, :12][0]
    np.testing.assert_array_equal(y, ref)
    assert pad_repeat(np.arange(20, dtype=np.float32), 12).tolist() == list(range(12))
    with pytest.raises(AudioError):
        pad_repeat(np.zeros(0, np.float32), 12)


def test_sliding_windows_cover_the_signal_and_align_the_tail():
    x = np.arange(WINDOW_SAMPLES + 2 * SAMPLE_RATE + 500, dtype=np.float32)
    wins = list(sliding_windows(x, WINDOW_SAMPLES, SAMPLE_RATE))
    assert [w.start for w in wins] == [0, SAMPLE_RATE, 2 * SAMPLE_RATE, len(x) - WINDOW_SAMPLES]
    assert all(len(w.samples) == WINDOW_SAMPLES for w in wins)
    assert wins[-1].end == len(x)
    np.testing.assert_array_equal(wins[1].samples, x[SAMPLE_RATE : SAMPLE_RATE + WINDOW_SAMPLES])


def test_short_signal_gives_one_padded_window():
    x = np.linspace(-1, 1, 1000, dtype=np.float32)
    (w,) = sliding_windows(x, WINDOW_SAMPLES, SAMPLE_RATE)
    assert (w.start, w.end) == (0, 1000)
    np.testing.assert_array_equal(w.samples, pad_repeat(x, WINDOW_SAMPLES))


def test_load_audio_downmixes_and_resamples(tmp_path):
    t = np.arange(44100) / 44100
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    stereo = np.stack([tone, tone], axis=1)
    sf.write(tmp_path / "a.wav", stereo, 44100, subtype="PCM_16")
    x = load_audio(tmp_path / "a.wav")
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) - SAMPLE_RATE) <= 1
    # the tone survives: its dominant frequency is still 440 Hz
    spectrum = np.abs(np.fft.rfft(x))
    assert abs(np.argmax(spectrum) * SAMPLE_RATE / len(x) - 440) < 2


def test_load_audio_errors_are_clear(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really a wav")
    with pytest.raises(AudioError, match="cannot read audio") as e:
        load_audio(bad)
    assert str(e.value).count(str(bad)) == 1  # the path once
    with pytest.raises(AudioError, match="missing.flac: no such file$"):
        load_audio(tmp_path / "missing.flac")
    with pytest.raises(AudioError, match="a directory, not an audio file"):
        load_audio(tmp_path)
    sf.write(tmp_path / "empty.wav", np.zeros((0, 1)), 16000)
    with pytest.raises(AudioError, match="no audio"):
        load_audio(tmp_path / "empty.wav")
