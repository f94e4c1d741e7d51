"""The splice family: unit-selection-like spoofs cut from a clip's own speech."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import soundfile as sf

from voicescreen.audio import SAMPLE_RATE, load_audio
from voicescreen.train.data import load_split
from voicescreen.train.splice import (
    HOP,
    SpliceOptions,
    band_energies,
    speech_frames,
    speech_runs,
    splice,
)

FADE = int(0.005 * SAMPLE_RATE)  # the longest cross-fade, and the fades at a stretch's edges


def test_a_splice_keeps_the_pauses_and_is_made_of_the_clips_own_audio(data_dir):
    """Three real bona fide clips, 0.4 s of faint noise between them, as one recording."""
    clips = [load_audio(u.path) for u in load_split(data_dir, "train") if u.is_bonafide][:3]
    gap = 1e-4 * np.random.default_rng(0).standard_normal(int(0.4 * SAMPLE_RATE))
    x = np.concatenate([clips[0], gap, clips[1], gap, clips[2]]).astype(np.float32)
    options = SpliceOptions(seed=0)
    y, units = splice(x, np.random.default_rng(7), options)
    assert y.shape == x.shape and not np.array_equal(y, x)
    # The pauses (150 ms or longer) are the clip's own, sample for sample.
    runs = speech_runs(speech_frames(x, band_energies(x), options), bridge=15)
    assert len(runs) >= 2
    for (_, end), (first, _) in zip(runs, runs[1:], strict=False):
        pause = slice((end - 1) * HOP + 320 + FADE, first * HOP - FADE)
        np.testing.assert_array_equal(y[pause], x[pause])
    # Between the seams, every unit is a stretch of the clip, moved.
    assert len(units) >= 10
    for u in units:
        inner = slice(FADE, u.length - FADE)
        np.testing.assert_array_equal(
            y[u.at : u.at + u.length][inner], x[u.source : u.source + u.length][inner]
        )
    moved = sum(u.at != u.source for u in units)
    assert moved >= len(units) - 1
    again, _ = splice(x, np.random.default_rng(7), options)
    other, _ = splice(x, np.random.default_rng(8), options)
    np.testing.assert_array_equal(again, y)
    assert not np.array_equal(other, y)


def test_each_join_takes_the_candidate_that_matches_the_seam():
    """A clip of alternating 1 s stretches of a tone and of noise: weighing every candidate, the
    unit after a seam continues what the last unit's audio would have gone on with (tone after
    tone, noise after noise); weighing one, it is a coin toss."""
    rng = np.random.default_rng(0)
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    tone = 0.3 * np.sin(2 * np.pi * 300 * t)
    noise = 0.3 * rng.standard_normal(SAMPLE_RATE)
    x = np.concatenate([tone, noise] * 4).astype(np.float32)

    def kind(sample: int) -> int:
        return (sample // SAMPLE_RATE) % 2

    def agreement(candidates: int) -> float:
        o = SpliceOptions(candidates=candidates, follow=0.0, seed=0)
        _, units = splice(x, np.random.default_rng(1), o)
        pairs = [
            (kind(a.source + a.length - 1), kind(b.source))
            for a, b in zip(units, units[1:], strict=False)
            # seams away from the tone/noise boundaries, where the last frame is mixed
            if abs((a.source + a.length) % SAMPLE_RATE - SAMPLE_RATE // 2) < SAMPLE_RATE // 2 - 800
        ]
        assert len(pairs) >= 20
        return float(np.mean([p == q for p, q in pairs]))

    assert agreement(64) >= 0.95
    assert agreement(1) <= 0.75


def test_data_splice_writes_a_train_split_of_spoofs_by_the_sources_speakers(small_corpus, tmp_path):
    """The small corpus's train split plus one bona fide clip of faint noise, which has no speech
    to cut and is left out, said so."""
    source = tmp_path / "source"
    (source / "flac").mkdir(parents=True)
    (source / "protocols").mkdir()
    lines = []
    for u in load_split(small_corpus, "train"):
        (source / "flac" / u.path.name).symlink_to(u.path.resolve())
        lines.append(f"{u.speaker} {u.file} - {u.attack} {u.label}")
    hiss = 1e-4 * np.random.default_rng(0).standard_normal(2 * SAMPLE_RATE)
    sf.write(str(source / "flac" / "HISS.flac"), hiss, SAMPLE_RATE, subtype="PCM_16")
    lines.append("QUIET HISS - - bonafide")
    (source / "protocols" / "S.cm.train.trn.txt").write_text("\n".join(lines) + "\n")

    out = tmp_path / "splice"
    p = subprocess.run(
        [sys.executable, "-m", "voicescreen", "data", "splice", str(out), str(source)],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    sources = [u for u in load_split(small_corpus, "train") if u.is_bonafide]
    made = load_split(out, "train")
    assert len(made) == len(sources) and f"{len(made)} splice spoofs" in p.stdout
    assert "1 clips with too little speech left out" in p.stdout
    assert all(u.label == "spoof" and u.attack == "splice" for u in made)
    assert [u.speaker for u in made] == [u.speaker for u in sources]
    for u, source_clip in zip(made, sources, strict=True):
        info = sf.info(str(u.path))
        assert info.samplerate == SAMPLE_RATE
        assert info.frames == len(load_audio(source_clip.path))
    assert "splice" in (out / "README.md").read_text()
    assert len((out / "sources.tsv").read_text().splitlines()) == len(made) + 1

    # a corpus split without bona fide clips is refused, with the reason
    empty = tmp_path / "none"
    p = subprocess.run(
        [sys.executable, "-m", "voicescreen", "data", "splice", str(tmp_path / "x"), str(out)],
        capture_output=True,
        text=True,
    )
    assert p.returncode != 0 and "no bona fide clips" in p.stderr
    assert not empty.exists()
