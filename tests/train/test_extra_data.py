"""``train.extra_data`` (``scripts/make_extra_data.py``) on a small fake ktuberling tree cut from
real corpus speech: the output loads as a train split, is balanced and matched, sits at the
corpus's level, rate and band, is reproducible, no simple statistic tells bona fide from spoof,
and held-out languages go to a dev split."""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from voicescreen.audio import SAMPLE_RATE, load_audio, resample
from voicescreen.train import extra_data as extra
from voicescreen.train.data import load_split

WORD_S = 0.75  # the fake "words": real speech cut into pieces this long


def cut_words(clips: list[np.ndarray]) -> list[np.ndarray]:
    n = int(WORD_S * SAMPLE_RATE)
    return [c[i : i + n] for c in clips for i in range(0, c.size - n + 1, n)]


@pytest.fixture(scope="module")
def ktuberling(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """A root with usr/share/ktuberling/sounds/{xx,yy}: English speech as 22 kHz .ogg words (plus
    a byte-identical copy and a noise burst), Spanish speech as 8 kHz .wav words."""
    utts = [u for u in load_split(data_dir, "train") if u.is_bonafide]
    english = [load_audio(u.path) for u in utts if u.speaker.endswith("EN")][:6]
    spanish = [load_audio(u.path) for u in utts if u.speaker.endswith("ES")][:5]
    root = tmp_path_factory.mktemp("ktuberling")
    xx = root / extra.SOUNDS / "xx"
    yy = root / extra.SOUNDS / "yy"
    xx.mkdir(parents=True)
    yy.mkdir()
    rng = np.random.default_rng(0)
    for i, w in enumerate(cut_words(english)):
        # The corpus's speech stops at 7 kHz; a little hiss makes these words full band.
        w = resample(w, SAMPLE_RATE, 22050)
        w = w + rng.standard_normal(w.size) * 1e-3
        sf.write(xx / f"word{i:02d}.ogg", w, 22050, format="OGG", subtype="VORBIS")
    shutil.copy(xx / "word00.ogg", xx / "word00_copy.ogg")
    noise = rng.standard_normal(SAMPLE_RATE // 2) * 0.1
    sf.write(xx / "noise.ogg", noise, SAMPLE_RATE, format="OGG", subtype="VORBIS")
    (xx / "notes.txt").write_text("not audio")
    for i, w in enumerate(cut_words(spanish)):
        sf.write(yy / f"palabra{i:02d}.wav", resample(w, SAMPLE_RATE, 8000), 8000)
    return root


def band_db(x: np.ndarray, lo: float, hi: float) -> float:
    """Energy between ``lo`` and ``hi`` Hz, in dB relative to the whole signal's."""
    power = np.abs(np.fft.rfft(np.asarray(x, np.float64))) ** 2
    f = np.fft.rfftfreq(x.size, 1 / SAMPLE_RATE)
    return float(10 * np.log10(power[(f > lo) & (f <= hi)].sum() / power.sum()))


def run(*args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert extra.main(list(args)) == 0
    return out.getvalue()


@pytest.fixture(scope="module")
def built(ktuberling: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("extra") / "data"
    return out, run("--ktuberling-root", str(ktuberling), "--out", str(out), "--seed", "0")


def test_output_loads_as_a_train_split_with_unique_names(built, data_dir):
    out, _ = built
    utts = load_split(out, "train")
    names = [u.file for u in utts]
    assert len(utts) >= 8 and len(set(names)) == len(names)
    assert all(n.startswith(f"{extra.PREFIX}_") for n in names)
    corpus = {u.file for split in ("train", "dev", "eval") for u in load_split(data_dir, split)}
    assert not corpus & set(names)
    assert sorted(p.stem for p in (out / "flac").iterdir()) == sorted(names)


def test_labels_are_balanced_per_speaker_and_attacks_rotate(built):
    utts = load_split(built[0], "train")
    for speaker in ("KTU_XX", "KTU_YY"):
        mine = [u for u in utts if u.speaker == speaker]
        bona = [u for u in mine if u.is_bonafide]
        assert bona and len(bona) * 2 == len(mine), speaker
        assert all(u.attack == "-" for u in bona)
    spoofs = [u.attack for u in utts if not u.is_bonafide]
    assert set(spoofs) == set(extra.ATTACKS)
    assert abs(spoofs.count("XGL") - spoofs.count("XLP")) <= 2


def test_every_clip_is_16k_mono_pcm16_at_minus_23_dbfs_and_band_limited(built):
    for u in load_split(built[0], "train"):
        info = sf.info(str(u.path))
        assert (info.samplerate, info.channels, info.subtype) == (SAMPLE_RATE, 1, "PCM_16")
        x = load_audio(u.path)
        stats = extra.clip_statistics(x)
        assert stats["rms_dbfs"] == pytest.approx(extra.TARGET_DBFS, abs=0.1), u.file
        assert stats["peak_dbfs"] < 0.0
        assert stats["above_7k_db"] < -35.0, u.file
        assert band_db(x, 7300, 8000) < -70.0, u.file  # the low-pass's stop band: empty
        assert 3.0 < stats["seconds"] < 7.0


def test_a_spoof_matches_its_bona_fide_clip(built):
    utts = load_split(built[0], "train")
    for bona, spoof in zip(utts[::2], utts[1::2], strict=True):
        assert bona.is_bonafide and not spoof.is_bonafide and bona.speaker == spoof.speaker
        assert sf.info(str(bona.path)).frames == sf.info(str(spoof.path)).frames
    # A spoof of 8 kHz speech is narrow band like its source: next to nothing above 4 kHz.
    for u in (u for u in utts if u.speaker == "KTU_YY"):
        assert band_db(load_audio(u.path), 4200, 8000) < -40.0, u.file


def test_no_simple_statistic_gives_the_label_away(built):
    eers = extra.separability(load_split(built[0], "train"))
    for key in ("rms_dbfs", "above_7k_db", "seconds", "peak_dbfs"):
        assert eers[key] > 0.25, (key, eers)


def test_the_statistic_check_catches_a_level_leak(built, tmp_path):
    """The check above can fail: spoofs 8 dB quieter are found by their RMS alone."""
    leaky = tmp_path / "leaky"
    shutil.copytree(built[0], leaky)
    for u in load_split(leaky, "train"):
        if not u.is_bonafide:
            x, rate = sf.read(str(u.path))
            sf.write(str(u.path), x * 10 ** (-8 / 20), rate, subtype="PCM_16")
    assert extra.separability(load_split(leaky, "train"))["rms_dbfs"] == 0.0


def test_duplicates_and_non_speech_are_left_out_and_reported(built):
    out, printed = built
    readme = (out / "README.md").read_text()
    for text in (printed, readme):
        assert "1 files identical to one already used" in text
        assert "not speech: xx: noise.ogg" in text
    assert "GPL-2+" in readme and "--ktuberling-root" in readme and "KTU_YY" in readme
    assert "| **all** |" in printed and "single-statistic EER" in printed


def test_the_same_seed_gives_the_same_corpus(ktuberling, tmp_path):
    def build(name: str, seed: int) -> tuple[str, list[np.ndarray]]:
        out = tmp_path / name
        args = ["--languages", "yy", "--max-clips-per-language", "1", "--seed", str(seed)]
        run("--ktuberling-root", str(ktuberling), "--out", str(out), *args)
        utts = load_split(out, "train")
        protocol = (out / "protocols" / extra.PROTOCOL).read_text()
        return protocol, [sf.read(str(u.path))[0] for u in utts]

    p1, a1 = build("a", 0)
    p2, a2 = build("b", 0)
    _, a3 = build("c", 1)
    assert p1 == p2 and len(a1) == 2
    for x, y in zip(a1, a2, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a1[0][: a3[0].size], a3[0][: a1[0].size])


def test_held_out_languages_go_to_the_dev_split_unchanged(built, ktuberling, tmp_path):
    """``--dev-languages`` moves a language's clips (bona fide and spoofs) to the dev protocol;
    the clips are the ones an all-train build makes, and the train split no longer holds them."""
    out = tmp_path / "held"
    printed = run("--ktuberling-root", str(ktuberling), "--out", str(out), "--dev-languages", "yy")
    train, dev = load_split(out, "train"), load_split(out, "dev")
    assert {u.speaker for u in train} == {"KTU_XX"} and {u.speaker for u in dev} == {"KTU_YY"}
    assert len({u.file for u in train + dev}) == len(train + dev)
    assert sorted(p.stem for p in (out / "flac").iterdir()) == sorted(u.file for u in train + dev)
    assert (out / "protocols" / extra.DEV_PROTOCOL).is_file()
    everything = load_split(built[0], "train")
    assert len(train) + len(dev) == len(everything)
    for mine, all_train in (
        (train, [u for u in everything if u.speaker == "KTU_XX"]),
        (dev, [u for u in everything if u.speaker == "KTU_YY"]),
    ):
        assert [u.attack for u in mine] == [u.attack for u in all_train]
        for a, b in zip(mine, all_train, strict=True):
            np.testing.assert_array_equal(sf.read(str(a.path))[0], sf.read(str(b.path))[0])
    assert "yy: " in printed and "(dev)" in printed
    assert "held out of training" in (out / "README.md").read_text()


def test_the_default_held_out_languages_are_fixed_and_absent_ones_ignored(built):
    assert extra.DEV_LANGUAGES == ("de", "el", "en", "gl", "sl", "wa")
    assert extra.parse_args([]).dev_languages == "de,el,en,gl,sl,wa"
    # The fake tree has none of them: everything is in the train split, as before.
    assert not (built[0] / "protocols" / extra.DEV_PROTOCOL).exists()


def test_bad_arguments_are_refused(ktuberling, tmp_path):
    root = str(ktuberling)
    with pytest.raises(SystemExit, match="no such language"):
        run("--ktuberling-root", root, "--out", str(tmp_path / "o"), "--languages", "qq")
    with pytest.raises(SystemExit, match="unknown attack"):
        run("--ktuberling-root", root, "--out", str(tmp_path / "o"), "--attacks", "A04")
    with pytest.raises(SystemExit, match="none to train"):
        run("--ktuberling-root", root, "--out", str(tmp_path / "o"), "--dev-languages", "xx,yy")
    keep = tmp_path / "precious"
    keep.mkdir()
    (keep / "thesis.tex").write_text("x")
    with pytest.raises(SystemExit, match="not replacing"):
        run("--ktuberling-root", root, "--out", str(keep), "--languages", "yy")
    assert (keep / "thesis.tex").is_file()


def test_words_become_clips_of_the_stated_length():
    opts = extra.ClipOptions()
    rng = np.random.default_rng(0)
    words = [
        extra.Word("xx", str(i), SAMPLE_RATE, np.zeros(int(rng.uniform(0.4, 1.6) * SAMPLE_RATE)))
        for i in range(200)
    ]
    clips = extra.group_words(words, np.random.default_rng(1), opts)
    used = [w.name for c in clips for w in c]
    assert used == [w.name for w in words[: len(used)]] and len(words) - len(used) < 8
    gap = sum(opts.gap_ms) / 2000
    for c in clips:
        seconds = gap + sum(w.audio.size / SAMPLE_RATE + gap for w in c)
        assert opts.seconds[0] <= seconds <= opts.seconds[1] + 1.6 + gap
        assert len(c) <= opts.words[1]


def test_trim_keeps_the_word_and_drops_a_distant_click():
    x = np.zeros(2 * SAMPLE_RATE, np.float32)
    x[1600] = 0.9  # a click at 0.1 s
    t = np.arange(8000) / SAMPLE_RATE
    x[16000:24000] = 0.3 * np.sin(2 * np.pi * 200 * t)  # the "word", 1.0-1.5 s
    y = extra.trim(x)
    assert 0.5 <= y.size / SAMPLE_RATE <= 0.62 and np.abs(y).max() == pytest.approx(0.3, rel=0.01)


def test_the_limiter_brings_peaks_down_smoothly_and_leaves_quiet_audio_alone():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(SAMPLE_RATE) * 0.05).astype(np.float32)
    np.testing.assert_array_equal(extra.limit_peaks(x), x)
    x[8000] = 1.5
    y = extra.limit_peaks(x)
    ceiling = 10 ** (extra.CEILING_DBFS / 20)
    assert np.abs(y).max() <= ceiling + 1e-6
    np.testing.assert_array_equal(y[:7000], x[:7000])  # only the peak's surroundings change
    gain = y[7800:8200].astype(np.float64) / x[7800:8200]
    assert gain.min() == pytest.approx(ceiling / 1.5, rel=1e-3)
    assert np.abs(np.diff(gain)).max() < 0.05  # a smooth gain, not a clipped sample


def test_band_limit_keeps_a_narrow_band_source_narrow():
    x = np.random.default_rng(0).standard_normal(SAMPLE_RATE).astype(np.float32)
    assert extra.band_limit(x, 44100) is x
    y = extra.band_limit(x, 8000)
    assert y.shape == x.shape
    assert band_db(y, 4200, 8000) < -50.0 < band_db(x, 4200, 8000) + 10
