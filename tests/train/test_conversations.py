"""``train/conversations.py``: the synthetic conversations the stream benchmark and the load test
share, built from real clips of ../shared/data."""

from __future__ import annotations

import numpy as np
import pytest

from voicescreen.audio import SAMPLE_RATE, load_audio
from voicescreen.train.conversations import clip_names, conversation


def test_clips_then_gaps_in_the_stated_proportion(data_dir):
    x = conversation(20.0, speech=0.5, seed=3, data=data_dir)
    assert x.dtype == np.float32 and x.size == 20 * SAMPLE_RATE
    names = clip_names("dev", data_dir)
    rng = np.random.default_rng(3)
    first = load_audio(data_dir / "flac" / f"{names[rng.integers(len(names))]}.flac")
    np.testing.assert_array_equal(x[: first.size], first)  # the seed's first clip ...
    gap = x[first.size : 2 * first.size]
    assert not gap.any()  # ... then as much digital silence
    assert np.array_equal(x, conversation(20.0, speech=0.5, seed=3, data=data_dir))


def test_all_speech_has_no_gaps(data_dir):
    x = conversation(8.0, speech=1.0, seed=0, data=data_dir)
    names = clip_names("dev", data_dir)
    rng = np.random.default_rng(0)
    a, b = (load_audio(data_dir / "flac" / f"{names[rng.integers(len(names))]}.flac") for _ in "ab")
    want = np.concatenate([a, b])[: x.size]
    np.testing.assert_array_equal(x[: want.size], want)  # clip after clip


def test_noisy_gaps_keep_the_speech_and_sit_at_the_stated_level(data_dir):
    quiet = conversation(20.0, seed=1, data=data_dir)
    noisy = conversation(20.0, seed=1, noise_dbfs=-60.0, data=data_dir)
    gaps = quiet == 0
    assert gaps.mean() > 0.3
    np.testing.assert_array_equal(noisy[~gaps], quiet[~gaps])  # same clips, same places
    rms = np.sqrt(np.mean(noisy[gaps].astype(np.float64) ** 2))
    assert 20 * np.log10(rms) == pytest.approx(-60.0, abs=0.5)


def test_speech_fraction_is_checked(data_dir):
    with pytest.raises(ValueError, match="speech"):
        conversation(5.0, speech=0.0, data=data_dir)
