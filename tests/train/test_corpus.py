"""Corpus v2 (``voicescreen data build``): its pieces, and one real small build end to end.

The end-to-end test renders every clip of ``--size small`` into a fresh clip cache (the Debian
packages are shared with the user's cache, ``~/.cache/voicescreen/corpus/{debs,pkgs}``, so they
are downloaded once per machine), then builds again with the same seed from that cache.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from voicescreen.audio import SAMPLE_RATE
from voicescreen.train import corpus, synth
from voicescreen.train.corpus import (
    BONAFIDE,
    SPLITS,
    SYSTEMS,
    ChainOptions,
    Item,
    Recipe,
    UtteranceOptions,
    apply_channel,
    assign_splits,
    clip_features,
    final_chain,
    group_items,
    tts_voices,
)
from voicescreen.train.data import load_split
from voicescreen.train.metrics import eer
from voicescreen.train.vocoders import pitch_track

# --- pieces ------------------------------------------------------------------------------------


def _tone(freq: float, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _pulses(f0: float, seconds: float) -> np.ndarray:
    """A voiced-speech-like signal: a pulse train at ``f0`` through one resonance."""
    from scipy.signal import lfilter

    n = int(seconds * SAMPLE_RATE)
    x = np.zeros(n)
    x[:: int(SAMPLE_RATE / f0)] = 1.0
    r = np.exp(-np.pi * 100 / SAMPLE_RATE)
    y = lfilter([1.0], [1, -2 * r * np.cos(2 * np.pi * 700 / SAMPLE_RATE), r * r], x)
    return (0.3 * y / np.abs(y).max()).astype(np.float32)


def test_group_items_keeps_one_channel_and_the_length_bounds():
    items = [Item(f"p:{k}", 0.3 + 0.1 * (k % 7), "gsm" if k % 3 else "pcm8k") for k in range(90)]
    o = UtteranceOptions()
    groups = group_items(items, np.random.default_rng(1), o)
    assert groups
    for g in groups:
        assert len({i.channel for i in g}) == 1
        assert o.seconds[0] <= sum(i.seconds for i in g) + 0.5 * (len(g) - 1) <= o.max_seconds + 1
    refs = [i.ref for g in groups for i in g]
    assert len(refs) == len(set(refs))
    again = group_items(items, np.random.default_rng(1), o)
    assert [[i.ref for i in g] for g in again] == [[i.ref for i in g] for g in groups]


def test_final_chain_trims_levels_and_dithers_both_classes_alike():
    o = ChainOptions()
    speech = _pulses(120, 1.0)
    x = np.concatenate([np.zeros(SAMPLE_RATE, np.float32), speech, np.zeros(8000, np.float32)])
    draws = {"margin_before": 0.1, "margin_after": 0.2, "level_dbfs": -26.0, "dither_dbfs": -68.0}
    y = final_chain(x, draws | {"seed": 3}, o)
    assert abs(y.size / SAMPLE_RATE - (1.0 + 0.3)) < 0.05  # 1 s leading silence gone
    assert abs(10 * np.log10(np.mean(y.astype(np.float64) ** 2)) + 26.0) < 0.5
    assert np.count_nonzero(y == 0) < y.size * 0.01  # no digital silence left
    head = y[: int(0.08 * SAMPLE_RATE)]
    assert abs(10 * np.log10(np.mean(head.astype(np.float64) ** 2)) + 68.0) < 1.5
    assert np.array_equal(y, final_chain(x, draws | {"seed": 3}, o))


def test_channels_keep_length_and_narrow_the_band():
    noise = np.random.default_rng(0).standard_normal(SAMPLE_RATE).astype(np.float32) * 0.1
    for name in ("pcm", "pcm8k", "gsm", "g722", "vorbis"):
        y = apply_channel(noise, name, seed=1)
        assert y.shape == noise.shape, name
        assert np.isfinite(y).all()
    for name in ("pcm8k", "gsm"):
        f = clip_features(apply_channel(noise, name, seed=1))
        assert f["above_4k"] < -25, name
    assert clip_features(noise)["above_4k"] > -4
    with pytest.raises(ValueError, match="unknown channel"):
        apply_channel(noise, "carrier-pigeon", 0)


def test_clip_features_measure_what_they_say():
    f = clip_features(_tone(1000, 2.0, amplitude=0.1))
    assert f["duration"] == pytest.approx(2.0)
    assert f["level"] == pytest.approx(20 * np.log10(0.1 / np.sqrt(2)), abs=0.05)
    assert f["centroid"] == pytest.approx(1000, rel=0.01)
    assert f["above_4k"] < -60
    assert clip_features(_tone(6000, 1.0))["above_4k"] > -0.1
    half = np.concatenate([_tone(500, 1.0), np.zeros(SAMPLE_RATE, np.float32)])
    assert clip_features(half)["silence"] == pytest.approx(0.5, abs=0.02)


def test_recipe_key_is_what_decides_the_audio():
    r = Recipe("spoof", "espeak", "ESP_DE_M1", "de", "espeak-ng", "pcm", {"text": "a"}, {"x": 1})
    same = Recipe("spoof", "espeak", "OTHER", "de", "espeak-ng", "pcm", {"text": "a"}, {"x": 1})
    same.split = "eval"
    assert r.key == same.key
    assert r.key != Recipe("spoof", "espeak", "ESP", "de", "e", "gsm", {"text": "a"}, {"x": 1}).key
    assert r.key != Recipe("spoof", "espeak", "ESP", "de", "e", "pcm", {"text": "b"}, {"x": 1}).key
    assert r.family == "formant"


def test_splits_are_speaker_disjoint_and_seeded():
    speakers = [f"V{k:02d}" for k in range(40)]
    a = assign_splits(speakers, 0)
    assert a == assign_splits(list(reversed(speakers)), 0)
    assert Counter(a.values()) == {"train": 28, "dev": 6, "eval": 6}
    assert a != assign_splits(speakers, 1)
    per_split = {s: {"en", "ca", "cs", "it", "fi", "ru", "de"} for s in SPLITS}
    voices = tts_voices(per_split, 0)
    split_of: dict[str, set[str]] = {}
    for v in voices:
        split_of.setdefault(v.speaker, set()).add(v.split)
    assert all(len(s) == 1 for s in split_of.values())
    assert {v.split for v in voices if v.language in ("ja", "hi", "mr", "te")} == {"eval"}
    assert {v.system for v in voices} == set(SYSTEMS) - set(corpus.VOCODERS)


def test_missing_package_names_it_and_how_to_install(tmp_path):
    with pytest.raises(synth.MissingTool, match="apt-get install voicescreen-no-such-package"):
        corpus.package_root("voicescreen-no-such-package", tmp_path)


def test_engines_speak_offline():
    x, rate = synth.espeak("Guten Morgen, eins zwei drei.", "de+m3")
    assert rate == 22050 and x.size > rate // 2 and np.abs(x).max() > 0.05
    voice = synth.FESTIVAL_VOICES["kal16k"]
    folder = Path("/usr/share/festival/voices") / voice.folder
    x, rate = synth.festival("Hello, one two three.", voice, folder)
    assert rate == 16000 and x.size > rate // 2 and np.abs(x).max() > 0.05
    x, rate = synth.hibari("Hello there.", seed=0)
    assert rate == 24000 and x.size > rate // 4 and np.abs(x).max() > 0.05


def test_world_vocoders_keep_length_and_convert_pitch():
    x = _pulses(120, 1.0)
    y = synth.world_resynthesis(x)
    assert y.shape == x.shape and abs(np.corrcoef(x, y)[0, 1]) > 0.5  # polarity may flip
    z = synth.world_conversion(x, pitch=1.5, formant=1.1)
    assert z.shape == x.shape
    f0 = pitch_track(z)
    assert np.median(f0[f0 > 0]) == pytest.approx(180, rel=0.08)


# --- one small build, end to end ---------------------------------------------------------------


def _build(out: Path, cache: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "voicescreen", "data", "build", str(out), "--size", "small"]
    cmd += ["--seed", "0", "--cache", str(cache), "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    cache = tmp_path_factory.mktemp("cache")
    for shared in ("debs", "pkgs"):  # packages once per machine, clips fresh per test run
        (corpus.DEFAULT_CACHE / shared).mkdir(parents=True, exist_ok=True)
        (cache / shared).symlink_to(corpus.DEFAULT_CACHE / shared)
    out = tmp_path_factory.mktemp("corpus") / "cv2"
    return out, cache, _build(out, cache)


def _rows(out: Path) -> list[dict[str, str]]:
    lines = (out / "sources.tsv").read_text().splitlines()
    head = lines[0].split("\t")
    return [dict(zip(head, line.split("\t"), strict=True)) for line in lines[1:]]


def test_small_build_layout_and_sources(small):
    out, _, done = small
    assert (out / "README.md").is_file() and "Single-feature EER" in (out / "README.md").read_text()
    utts = {split: load_split(out, split) for split in SPLITS}
    rows = {r["file"]: r for r in _rows(out)}
    files = {u.file for us in utts.values() for u in us}
    assert files == set(rows) and len(files) == len(list((out / "flac").iterdir()))
    assert 200 <= len(files) <= 400
    for split, us in utts.items():
        assert {u.label for u in us} == {"bonafide", "spoof"}, split
        for u in us:
            row = rows[u.file]
            assert (row["split"], row["label"], row["speaker"]) == (split, u.label, u.speaker)
            assert row["system"] == u.attack and row["package"] and row["channel"]
            assert (u.attack == BONAFIDE) == (row["family"] == "human")
    spoofs = [r for r in rows.values() if r["label"] == "spoof"]
    bona = [r for r in rows.values() if r["label"] == "bonafide"]
    assert len({r["family"] for r in spoofs}) >= 5
    assert len({r["system"] for r in spoofs}) >= 15
    assert len({r["speaker"] for r in bona}) >= 40
    assert len({r["language"] for r in bona}) >= 15
    assert {r["package"] for r in bona} >= {"ktuberling-data", "klettres-data", "hedgewars-data"}
    assert not any("Robot" in r["speaker"].title() for r in bona)
    # every language with a human voice has as many spoofs as bona fide clips; the others
    # (no human source) are only in eval
    per_language = Counter((r["language"], r["label"]) for r in rows.values())
    for lang in {r["language"] for r in rows.values()}:
        if per_language[lang, "bonafide"]:
            assert per_language[lang, "spoof"] == per_language[lang, "bonafide"], lang
        else:
            assert {r["split"] for r in rows.values() if r["language"] == lang} == {"eval"}
    # narrow-band and codec channels in both classes
    channels = {label: Counter(r["channel"] for r in rows.values() if r["label"] == label)
                for label in ("bonafide", "spoof")}  # fmt: skip
    for ch in ("pcm8k", "gsm", "g722", "vorbis"):
        assert channels["bonafide"][ch] and channels["spoof"][ch], ch
    assert "clips" in done.stdout


def test_small_build_splits_are_speaker_disjoint(small):
    out = small[0]
    speakers = {split: {u.speaker for u in load_split(out, split)} for split in SPLITS}
    assert not speakers["train"] & speakers["dev"]
    assert not speakers["train"] & speakers["eval"]
    assert not speakers["dev"] & speakers["eval"]
    unseen = {r["system"] for r in _rows(out) if r["split"] == "eval"} - {
        r["system"] for r in _rows(out) if r["split"] == "train"
    }
    assert {"kokoro_ja", "fest_nsk"} <= unseen


def test_small_build_single_features_do_not_give_the_class_away(small):
    from voicescreen.audio import load_audio

    stats = [
        (u.is_bonafide, clip_features(load_audio(u.path)))
        for split in SPLITS
        for u in load_split(small[0], split)
    ]
    for name in ("duration", "level", "centroid", "above_4k", "silence"):
        bona = np.array([s[name] for b, s in stats if b])
        spoof = np.array([s[name] for b, s in stats if not b])
        worst = min(eer(bona, spoof)[0], eer(-bona, -spoof)[0])
        assert worst >= 0.20, f"{name} alone separates the classes: EER {100 * worst:.1f} %"


def test_small_build_is_deterministic_and_cached(small, tmp_path):
    out, cache, _ = small
    again = _build(tmp_path / "again", cache)
    assert " 0 rendered" in again.stdout
    for split in SPLITS:
        name = f"protocols/CV2.cm.{corpus.PROTOCOL_SUFFIX[split]}.txt"
        assert (tmp_path / "again" / name).read_text() == (out / name).read_text()
    assert (tmp_path / "again" / "sources.tsv").read_text() == (out / "sources.tsv").read_text()
    first = sorted((out / "flac").iterdir())
    assert [p.read_bytes() for p in first[:20]] == [
        (tmp_path / "again" / "flac" / p.name).read_bytes() for p in first[:20]
    ]


def test_a_clip_its_engine_cannot_say_is_left_out_and_recorded(small, tmp_path, monkeypatch):
    """An engine that makes no audio for a planned text (espeak-ng's Hebrew Klatt voice did) does
    not stop the build: that clip is left out, the README says so, and a rerun does not retry."""
    out, cache, _ = small
    row = next(r for r in _rows(out) if r["system"].startswith("espeak"))
    mine = tmp_path / "cache"
    mine.mkdir()
    subprocess.run(["cp", "-al", str(cache / "clips"), str(mine / "clips")], check=True)
    for shared in ("debs", "pkgs"):
        (mine / shared).symlink_to((cache / shared).resolve())
    corpus.clip_path(mine, row["key"]).unlink()
    real = corpus.render

    def render(recipe, roots, o):
        if recipe.key == row["key"]:
            raise corpus.SilentRender("no audio left after trimming")
        return real(recipe, roots, o)

    monkeypatch.setattr(corpus, "render", render)
    opts = corpus.BuildOptions(size="small", seed=0, cache=mine, jobs=1, progress=False)
    result = corpus.build(tmp_path / "cv2", opts)
    assert result.rendered == 1 and result.silent == {row["system"]: 1}
    keys = {r["key"] for r in _rows(tmp_path / "cv2")}
    assert row["key"] not in keys and len(keys) == len(_rows(out)) - 1
    assert (
        f"Left out: 1 {row['system']} clip whose engine made no audio"
        in (tmp_path / "cv2" / "README.md").read_text()
    )
    again = corpus.build(tmp_path / "again", opts)  # the marker holds: nothing to render
    assert again.rendered == 0 and again.silent == result.silent
