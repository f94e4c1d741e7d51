"""Augmentation: exact SNR, reproducible seeds, lossy-but-close codecs, RawBoost, the config."""

from __future__ import annotations

import numpy as np
import pytest

from voicescreen.audio import resample
from voicescreen.train.augment import (
    AV_CODECS,
    Augment,
    RawBoostOptions,
    add_noise,
    apply_gain,
    channel,
    codec_round_trip,
    g711_round_trip,
    rawboost,
    rng_for,
    snr_db,
    telephone,
)


@pytest.fixture(scope="module")
def speech(speech_clips: dict[str, np.ndarray]) -> np.ndarray:
    return speech_clips["bonafide"][:40000]


@pytest.mark.parametrize("colour", ["white", "pink", "brown"])
@pytest.mark.parametrize("target", [0.0, 12.5, 30.0])
def test_noise_is_added_at_the_requested_snr(speech, colour, target):
    y = add_noise(speech, target, rng_for(0, 1), colour)
    assert y.dtype == np.float32 and y.shape == speech.shape
    assert snr_db(speech, y) == pytest.approx(target, abs=0.01)


def test_noise_colours_differ_in_spectral_tilt():
    x = np.zeros(32000, np.float32)
    x[::50] = 0.5  # any non-silent carrier; we look at the noise itself
    low_share = {}
    for colour in ("white", "pink", "brown"):
        noise = add_noise(x, 0.0, rng_for(3), colour) - x
        spectrum = np.abs(np.fft.rfft(noise)) ** 2
        low_share[colour] = spectrum[: spectrum.size // 8].sum() / spectrum.sum()
    assert low_share["white"] < low_share["pink"] < low_share["brown"]


def test_silence_gets_no_noise():
    x = np.zeros(1000, np.float32)
    assert np.array_equal(add_noise(x, 10.0, rng_for(0)), x)


def test_gain_scales_and_clips(speech):
    assert np.allclose(apply_gain(speech, -6.0), speech * 10 ** (-6 / 20), atol=1e-7)
    loud = apply_gain(speech, 40.0)
    assert loud.max() == 1.0 and loud.min() == -1.0


def test_same_seed_same_augmentation_other_seed_other(speech):
    aug = Augment.preset("channel")
    a = aug(speech, rng_for(7, 2, 11))
    b = aug(speech, rng_for(7, 2, 11))
    assert np.array_equal(a, b)
    others = [aug(speech, rng_for(7, 2, i)) for i in range(4)]
    assert any(not np.array_equal(a, o) for o in others)
    assert all(o.shape == speech.shape and np.isfinite(o).all() for o in others)


def test_everything_off_is_identity(speech):
    aug = Augment()
    assert not aug.enabled
    assert np.array_equal(aug(speech, rng_for(0)), speech)


def test_g711_round_trip_is_lossy_but_close(speech):
    for law in ("mulaw", "alaw"):
        y = g711_round_trip(speech, law)
        assert not np.array_equal(y, speech)
        assert snr_db(speech, y) > 25  # 8-bit logarithmic PCM: ~35-38 dB on speech


def test_telephone_channel_is_band_limited_and_close(speech):
    y = telephone(speech, "mulaw")
    assert y.shape == speech.shape and y.dtype == np.float32
    narrow = resample(resample(speech, 16000, 8000), 8000, 16000)[: speech.size]
    # close to the band-limited signal (only G.711 quantisation between them), time-aligned
    assert snr_db(narrow, y) > 25
    # and nothing left above the 4 kHz band edge
    spectrum = np.abs(np.fft.rfft(y)) ** 2
    assert spectrum[int(spectrum.size * 4200 / 8000) :].sum() < 1e-4 * spectrum.sum()


@pytest.mark.parametrize("codec,min_snr", [("g722", 15.0), ("opus", 5.0), ("amr-nb", 0.5)])
def test_pyav_codec_round_trips_are_aligned(speech, codec, min_snr):
    assert codec in AV_CODECS
    y = codec_round_trip(speech, codec)
    assert y.shape == speech.shape and np.isfinite(y).all()
    assert not np.array_equal(y, speech)
    band = speech if AV_CODECS[codec].rate == 16000 else telephone(speech, "mulaw")
    assert snr_db(band, y) > min_snr  # a misaligned round trip would be ~0 dB or below


def test_gsm_and_mobile_channels(speech):
    y = channel(speech, "gsm")
    assert y.shape == speech.shape and y.dtype == np.float32 and not np.array_equal(y, speech)
    narrow = resample(resample(speech, 16000, 8000), 8000, 16000)[: speech.size]
    assert snr_db(narrow, y) > 8  # GSM full rate is crude (~16 dB here), but time-aligned
    assert snr_db(narrow, np.roll(y, 40)) < snr_db(narrow, y) - 2
    mobile = channel(speech, "mobile")
    np.testing.assert_array_equal(mobile, telephone(y, "mulaw"))
    spectrum = np.abs(np.fft.rfft(mobile)) ** 2
    assert spectrum[int(spectrum.size * 4200 / 8000) :].sum() < 1e-4 * spectrum.sum()


def test_channel_names(speech):
    assert np.array_equal(channel(speech, "clean"), speech)
    with pytest.raises(ValueError, match="unknown channel"):
        channel(speech, "carrier-pigeon")


@pytest.mark.parametrize("algo", range(1, 9))
def test_rawboost_algorithms(speech, algo):
    o = RawBoostOptions(p=1.0, algo=algo)
    y = rawboost(speech, rng_for(0, algo), o)
    assert y.shape == speech.shape and np.isfinite(y).all()
    assert np.abs(y).max() <= 1.0 + 1e-6
    assert not np.allclose(y, speech)
    assert np.array_equal(y, rawboost(speech, rng_for(0, algo), o))


def test_rawboost_linear_filter_keeps_the_signal_recognisable(speech):
    o = RawBoostOptions(p=1.0, algo=1, n_f=1)  # linear only, 0 dB peak gain
    y = rawboost(speech, rng_for(5), o)
    assert np.corrcoef(y, speech)[0, 1] > 0.3


def test_augment_config_round_trip_and_errors():
    aug = Augment.from_dict({"preset": "channel", "noise": {"p": 1.0, "snr_db": [5, 5]}})
    assert aug.noise.p == 1.0 and aug.noise.snr_db == (5, 5)
    assert aug.codec.p == Augment.preset("channel").codec.p  # the preset's other values stay
    assert Augment.from_dict(aug.to_dict()) == aug
    with pytest.raises(ValueError, match="unknown"):
        Augment.from_dict({"noise": {"level": 3}})
    with pytest.raises(ValueError, match="unknown"):
        Augment.from_dict({"reverb": {"p": 1}})
    with pytest.raises(ValueError, match="unknown codec"):
        Augment.from_dict({"codec": {"p": 1, "codecs": ["smoke-signals"]}})
