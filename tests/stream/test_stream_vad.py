import numpy as np
import pytest

from voicescreen.stream.vad import VadOptions, VoiceGate


def _flags_in_chunks(x: np.ndarray, options: VadOptions, seed: int = 0) -> np.ndarray:
    gate, rng, out, i = VoiceGate(options), np.random.default_rng(seed), [], 0
    while i < x.size:
        k = int(rng.integers(1, 2000))
        out.append(gate.process(x[i : i + k]))
        i += k
    return np.concatenate(out)


def test_speech_is_voiced_and_silence_is_not(speech_clips):
    speech = speech_clips["bonafide"]
    gate = VoiceGate(VadOptions(aggressiveness=2, frame_ms=30))
    flags = gate.process(speech)
    assert flags.size == speech.size // 480
    assert flags.mean() > 0.5  # a read prompt is mostly speech
    assert gate.voiced_ratio(0, speech.size) == pytest.approx(flags.mean())

    g = VoiceGate(VadOptions(aggressiveness=2, frame_ms=20))
    assert g.process(np.zeros(32000, np.float32)).sum() == 0
    assert g.voiced_ratio(0, 32000) == 0.0
    # faint noise: webrtcvad takes ~100 ms to learn the noise floor, then calls it unvoiced
    noise = (1e-3 * np.random.default_rng(0).standard_normal(32000)).astype(np.float32)
    g = VoiceGate(VadOptions(aggressiveness=2, frame_ms=20))
    flags = g.process(noise)
    assert flags[10:].sum() == 0 and g.voiced_ratio(0, 32000) < 0.1


def test_speech_between_silences_has_the_right_ratio(speech_clips):
    speech = speech_clips["bonafide"]
    silence = np.zeros(speech.size, np.float32)
    gate = VoiceGate(VadOptions(frame_ms=10))
    gate.process(np.concatenate([silence, speech, silence]))
    n = speech.size
    whole = gate.voiced_ratio(0, 3 * n)
    assert gate.voiced_ratio(0, n) == 0.0
    assert gate.voiced_ratio(n, 2 * n) > 0.5
    assert whole == pytest.approx(gate.voiced_ratio(n, 2 * n) / 3, abs=0.02)


def test_flags_do_not_depend_on_chunking(speech_clips):
    x = speech_clips["spoof"]
    options = VadOptions(aggressiveness=3, frame_ms=20)
    np.testing.assert_array_equal(_flags_in_chunks(x, options, 1), VoiceGate(options).process(x))


def test_ratio_counts_whole_frames_only():
    gate = VoiceGate(VadOptions(frame_ms=10))  # 160-sample frames
    gate._flags = np.array([1, 0, 1, 1, 0, 0, 1, 1], dtype=bool)  # as if 8 frames were classified
    assert gate.voiced_ratio(0, 1280) == 5 / 8
    assert gate.voiced_ratio(1, 1280) == 4 / 7  # frame 0 is not wholly inside
    assert gate.voiced_ratio(160, 640) == 2 / 3
    assert gate.voiced_ratio(0, 100) == 0.0  # no whole frame
    assert gate.voiced_ratio(960, 5000) == 1.0  # frames not classified yet do not count
    gate.forget_before(480)
    assert gate.voiced_ratio(480, 1280) == 3 / 5


def test_options_are_validated():
    with pytest.raises(ValueError, match="aggressiveness"):
        VadOptions(aggressiveness=4)
    with pytest.raises(ValueError, match="frame_ms"):
        VadOptions(frame_ms=25)
    with pytest.raises(ValueError, match="min_voiced"):
        VadOptions(min_voiced=1.5)
    assert VadOptions(frame_ms=20).frame_samples == 320
