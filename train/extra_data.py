"""Build an extra training corpus: many more bona fide voices, each with matched spoofs.

The shared corpus's train split has one bona fide voice (Allison), so a new human voice looks
"unlike bona fide" to a model trained on it. This adds the recorded words of ktuberling-data
(KDE's "potato guy" game: one spoken word per file, one folder per language, 20-odd languages and
speakers) as bona fide, and for every bona fide clip one spoof made from that very clip by a vocoder
the project implements (``voicescreen.train.vocoders``): Griffin-Lim (``XGL``) or LPC (``XLP``).
Language, speaker, words and duration are therefore shared by the two classes, and nothing but
"human vs vocoded" separates them.

A bona fide clip is 4-7 words of one language (seeded order), each high-passed at 70 Hz, trimmed
to its loudest stretch and levelled, joined by 150-400 ms gaps of low pink noise, 3.5-6 s in all.
Every clip, bona fide and spoof, then goes through the shared corpus's train channel: -23 dBFS RMS,
a G.722 round trip at 16 kHz, a steep low-pass at 7 kHz (and -23 dBFS again), 16-bit FLAC.

The output has the corpus's flat layout (``flac/XT_NNNNN.flac``,
``protocols/VS.cm.train.trn.txt``, a README.md), so ``load_split(out, "train")`` reads it. The
clips of a few held-out languages (``--dev-languages``, default ``DEV_LANGUAGES``: six voices
the training never hears) go to ``protocols/VS.cm.dev.trl.txt`` instead, for validation on new
voices (``load_split(out, "dev")``, ``train.validate``); ``--extra-train`` reads only the
train split. A clip does not depend on the split it goes to. No text-to-speech is
used: the eval split's unseen attacks (Festival ``ked``, espeak-ng German, Italian, Portuguese,
Dutch) and the dev split's voice (Asterisk French) stay out.

    python scripts/make_extra_data.py                          # all languages, default --out
    python scripts/make_extra_data.py --languages en,fr --max-clips-per-language 5 --out /tmp/x
    python scripts/make_extra_data.py --dev-languages ""       # everything in the train split

``scripts/make_extra_data.py`` runs ``main``. ktuberling's sounds come from
``/usr/share/ktuberling/sounds`` when the package is installed (or under ``--ktuberling-root``),
else from ``--ktuberling-deb PATH``, else from ``apt-get download ktuberling-data``; a .deb is
unpacked with ``dpkg-deb -x`` into ``--cache`` (no root needed).
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shlex
import shutil
import subprocess
import sys
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from voicescreen.audio import SAMPLE_RATE, AudioError, resample, to_mono
from voicescreen.train.augment import codec_round_trip, coloured_noise, fir_same
from voicescreen.train.data import Utterance, load_split
from voicescreen.train.metrics import eer
from voicescreen.train.vocoders import griffin_lim, lpc_vocoder, pitch_track

DEFAULT_OUT = Path.home() / ".cache" / "voicescreen" / "extra-data"
DEFAULT_CACHE = Path.home() / ".cache" / "voicescreen" / "ktuberling-data"
PACKAGE = "ktuberling-data"
SOUNDS = Path("usr/share/ktuberling/sounds")
AUDIO_SUFFIXES = (".ogg", ".wav", ".opus", ".flac")

PREFIX = "XT"  # file names XT_00001...; the shared corpus's are VS_{T,D,E}_...
PROTOCOL = "VS.cm.train.trn.txt"
DEV_PROTOCOL = "VS.cm.dev.trl.txt"
# Held out of training for validation (six voices, 13-15 clips each in ktuberling-data
# 4:22.12.3; the folders with two or three clips would say little, the largest are kept for
# training). A language missing from the sounds folder is simply not held out.
DEV_LANGUAGES = ("de", "el", "en", "gl", "sl", "wa")
TARGET_DBFS = -23.0
CODEC = "g722"
BAND_EDGE_HZ = 7000.0
CEILING_DBFS = -3.0  # peaks above this are limited before the codec, in both classes
HIGH_PASS_HZ = 70.0  # removes the rumble and mains hum some recordings carry
WORD_DBFS = -20.0  # each word's level before a clip is assembled (a clip is relevelled later)
NARROW_RATE = SAMPLE_RATE  # a source below this rate is narrow band; its clips are kept apart

ATTACKS: dict[str, str] = {
    "XGL": "Griffin-Lim resynthesis (STFT magnitude kept, phase re-estimated)",
    "XLP": "LPC vocoder (all-pole envelope, pulse-train or noise excitation)",
}


@dataclass(frozen=True)
class ClipOptions:
    """How words become a clip."""

    words: tuple[int, int] = (4, 7)  # words per clip (fewer when long words fill it)
    seconds: tuple[float, float] = (3.5, 6.0)  # clip length; a shorter leftover is not used
    gap_ms: tuple[float, float] = (150.0, 400.0)  # between words, and before and after them
    gap_below_db: tuple[float, float] = (40.0, 50.0)  # gap noise level below the words'
    word_jitter_db: float = 3.0  # each word's level varies by up to this much
    min_word_s: float = 0.15  # a shorter sound after trimming is not a word
    max_word_s: float = 3.0
    min_voiced_frames: int = 3  # 10 ms frames with a pitch: fewer and it is not speech


@dataclass
class Word:
    """One recorded word, ready to be joined: 16 kHz, high-passed, trimmed, at ``WORD_DBFS``."""

    language: str
    name: str
    rate: int  # the file's own sample rate
    audio: np.ndarray


@dataclass
class Report:
    """What was found, used and left out, for the summary and the README."""

    files: Counter = field(default_factory=Counter)  # per language
    duplicates: Counter = field(default_factory=Counter)
    not_speech: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    unreadable: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    unused_words: Counter = field(default_factory=Counter)
    clips: Counter = field(default_factory=Counter)  # (language, attack) -> clips
    seconds: Counter = field(default_factory=Counter)  # (language, attack) -> seconds
    clipped: int = 0


# --- finding ktuberling's sounds ----------------------------------------------------------------


def unpack_deb(deb: Path, cache: Path) -> Path:
    """Unpack a .deb with ``dpkg-deb -x`` into ``cache/<name>`` (once); returns that root."""
    root = cache / deb.name.removesuffix(".deb")
    if not (root / SOUNDS).is_dir():
        tmp = root.with_name(root.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True)
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
    return root


def download_deb(cache: Path) -> Path:
    """``apt-get download ktuberling-data`` into ``cache`` (once); returns the .deb."""
    cache.mkdir(parents=True, exist_ok=True)
    debs = sorted(cache.glob(f"{PACKAGE}_*.deb"))
    if not debs:
        subprocess.run(["apt-get", "download", PACKAGE], cwd=cache, check=True)
        debs = sorted(cache.glob(f"{PACKAGE}_*.deb"))
    if not debs:
        raise SystemExit(f"apt-get download {PACKAGE} left no .deb in {cache}")
    return debs[-1]


def package_version(deb: Path | None) -> str:
    """The ktuberling-data version of ``deb``, or of the installed package, or "unknown"."""
    cmd = (
        ["dpkg-deb", "-f", str(deb), "Version"]
        if deb
        else ["dpkg-query", "-W", "-f", "${Version}", PACKAGE]
    )
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out or "unknown"


def find_sounds(root: Path | None, deb: Path | None, cache: Path) -> tuple[Path, str]:
    """ktuberling's ``sounds`` folder and the package version it comes from."""
    if deb is not None:
        return unpack_deb(deb, cache) / SOUNDS, package_version(deb)
    if (Path(root or "/") / SOUNDS).is_dir():
        version = package_version(None) if root is None else "unknown"
        return Path(root or "/") / SOUNDS, version
    if root is not None:
        raise SystemExit(f"{root / SOUNDS}: no such folder")
    deb = download_deb(cache)
    return unpack_deb(deb, cache) / SOUNDS, package_version(deb)


def language_files(sounds: Path, languages: list[str] | None) -> dict[str, list[Path]]:
    """Audio files per language folder (sorted), restricted to ``languages`` when given."""
    folders = sorted(p for p in sounds.iterdir() if p.is_dir())
    if languages:
        unknown = sorted(set(languages) - {p.name for p in folders})
        if unknown:
            raise SystemExit(f"no such language folder(s) in {sounds}: {unknown}")
        folders = [p for p in folders if p.name in languages]
    return {
        p.name: sorted(f for f in p.iterdir() if f.suffix.lower() in AUDIO_SUFFIXES)
        for p in folders
    }


def speaker_id(language: str) -> str:
    """``KTU_<LANG>``: the language folder upper-cased, other characters as underscores."""
    return "KTU_" + re.sub(r"[^A-Z0-9]+", "_", language.upper())


# --- signal steps -------------------------------------------------------------------------------


def dbfs(x: np.ndarray) -> float:
    """RMS level in dB full scale (-inf for silence)."""
    p = float(np.mean(np.square(x, dtype=np.float64))) if x.size else 0.0
    return 10 * np.log10(p) if p > 0 else -np.inf


def set_level(x: np.ndarray, level_dbfs: float) -> np.ndarray:
    """``x`` scaled to an RMS of ``level_dbfs``."""
    current = dbfs(x)
    if not np.isfinite(current):
        return np.asarray(x, dtype=np.float32)
    return (x * 10 ** ((level_dbfs - current) / 20)).astype(np.float32)


def high_pass(x: np.ndarray, cutoff: float = HIGH_PASS_HZ) -> np.ndarray:
    """Zero-phase 4th-order Butterworth high-pass."""
    from scipy.signal import butter, sosfiltfilt

    sos = butter(4, cutoff, "highpass", fs=SAMPLE_RATE, output="sos")
    return sosfiltfilt(sos, x).astype(np.float32)


def _low_pass_taps(edge: float = BAND_EDGE_HZ) -> np.ndarray:
    """A linear-phase FIR low-pass: flat to ``edge``, ~100 dB down 200 Hz above it."""
    from scipy.signal import firwin

    return firwin(511, edge + 100.0, window=("kaiser", 10.0), fs=SAMPLE_RATE)


LOW_PASS = _low_pass_taps()


def limit_peaks(x: np.ndarray, ceiling_dbfs: float = CEILING_DBFS, radius_s: float = 0.005):
    """A look-ahead peak limiter: the gain each peak above ``ceiling_dbfs`` needs, spread over
    ``radius_s`` either side (a running minimum, then a Hann smoothing of the same width), so the
    waveform is scaled smoothly rather than clipped. Quieter signals pass unchanged."""
    from scipy.ndimage import minimum_filter1d

    ceiling = 10 ** (ceiling_dbfs / 20)
    magnitude = np.abs(x).astype(np.float64)
    if magnitude.max() <= ceiling:
        return np.asarray(x, dtype=np.float32)
    radius = int(radius_s * SAMPLE_RATE)
    gain = minimum_filter1d(np.minimum(1.0, ceiling / np.maximum(magnitude, 1e-12)), 2 * radius + 1)
    kernel = np.hanning(2 * radius + 3)[1:-1]
    gain = np.convolve(np.pad(gain, radius, mode="edge"), kernel / kernel.sum(), mode="valid")
    return (x * gain).astype(np.float32)


def corpus_channel(x: np.ndarray) -> np.ndarray:
    """The shared corpus's train channel: -23 dBFS, G.722 round trip at 16 kHz, steep low-pass
    at 7 kHz, then -23 dBFS again (the low-pass moves the level by a fraction of a dB). Peaks
    that -23 dBFS would push near full scale are limited before the codec."""
    y = codec_round_trip(limit_peaks(set_level(x, TARGET_DBFS)), CODEC)
    return set_level(fir_same(y, LOW_PASS), TARGET_DBFS)


def trim(x: np.ndarray, below_db: float = 30.0, bridge_s: float = 0.2) -> np.ndarray:
    """The loudest stretch of ``x``: 10 ms frames within ``below_db`` of the loudest frame, gaps
    under ``bridge_s`` bridged, the run holding the loudest frame kept with 50 ms either side.
    Drops the clicks and room noise some files carry before and after the word."""
    hop = SAMPLE_RATE // 100
    n = x.size // hop
    if n == 0:
        return x
    energy = np.mean(x[: n * hop].reshape(n, hop).astype(np.float64) ** 2, axis=1)
    loud = energy > energy.max() * 10 ** (-below_db / 10)
    frames = np.flatnonzero(loud)
    breaks = np.flatnonzero(np.diff(frames) > bridge_s * 100)  # quiet for longer than bridge_s
    starts = np.r_[frames[0], frames[breaks + 1]]
    ends = np.r_[frames[breaks], frames[-1]]
    run = int(np.searchsorted(starts, int(np.argmax(energy)), side="right")) - 1
    start, end = int(starts[run]), int(ends[run])
    margin = 5 * hop
    return x[max(0, start * hop - margin) : min(x.size, (end + 1) * hop + margin)]


def fade(x: np.ndarray, seconds: float = 0.01) -> np.ndarray:
    """Raised-cosine fade in and out, so that a cut never clicks."""
    n = min(int(seconds * SAMPLE_RATE), x.size // 2)
    if n == 0:
        return x
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(n) / n)
    y = x.astype(np.float32).copy()
    y[:n] *= ramp
    y[-n:] *= ramp[::-1]
    return y


def read_word(path: Path, language: str, opts: ClipOptions) -> Word | None:
    """A word file as a ``Word``, or None when it does not sound like one word of speech (too
    short or long once trimmed, or almost no voiced frames). Raises AudioError if unreadable."""
    import soundfile as sf

    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise AudioError(f"{path}: {e}") from e
    if data.shape[0] == 0 or not np.isfinite(data).all():
        raise AudioError(f"{path}: empty or not finite")
    x = trim(high_pass(resample(to_mono(data), rate, SAMPLE_RATE)))
    seconds = x.size / SAMPLE_RATE
    if not opts.min_word_s <= seconds <= opts.max_word_s:
        return None
    if int(np.count_nonzero(pitch_track(x))) < opts.min_voiced_frames:
        return None
    return Word(language, path.stem, int(rate), set_level(fade(x), WORD_DBFS))


# --- clips --------------------------------------------------------------------------------------


def language_rng(seed: int, language: str, *keys: int) -> np.random.Generator:
    """A generator for one language that does not depend on which other languages are built."""
    return np.random.default_rng([seed, zlib.crc32(language.encode()), *keys])


def group_words(words: list[Word], rng: np.random.Generator, opts: ClipOptions) -> list[list[Word]]:
    """Cut a (shuffled) word list into clips, keeping the order: a clip takes words until it
    holds a drawn number of them (``opts.words``) and reaches a drawn length (``opts.seconds``),
    or holds the most words, or the next word would take it past the longest length. Lengths
    count a mean gap per word. A leftover shorter than the shortest length is not used."""
    gap = sum(opts.gap_ms) / 2000  # mean gap, seconds
    shortest, longest = opts.seconds
    clips: list[list[Word]] = []
    current: list[Word] = []
    length = gap

    def draw() -> tuple[int, float]:
        n = int(rng.integers(opts.words[0], opts.words[1] + 1))
        return n, float(rng.uniform(*opts.seconds))

    want_words, want_s = draw()
    for w in words:
        s = w.audio.size / SAMPLE_RATE + gap
        if current and length >= shortest and length + s > longest:
            clips.append(current)
            current, length = [], gap
            want_words, want_s = draw()
        current.append(w)
        length += s
        enough = len(current) >= want_words and length >= want_s
        if (enough or len(current) >= opts.words[1]) and length >= shortest:
            clips.append(current)
            current, length = [], gap
            want_words, want_s = draw()
    if current and length >= shortest:
        clips.append(current)
    return clips


def join_words(words: list[Word], rng: np.random.Generator, opts: ClipOptions) -> np.ndarray:
    """Words with a random level each, joined by (and framed with) gaps of low pink noise."""
    parts: list[np.ndarray] = []
    below = float(rng.uniform(*opts.gap_below_db))
    noise_rms = 10 ** ((WORD_DBFS - below) / 20)

    def gap() -> np.ndarray:
        n = int(rng.uniform(*opts.gap_ms) / 1000 * SAMPLE_RATE)
        return (coloured_noise(n, rng, "pink") * noise_rms).astype(np.float32)

    for w in words:
        gain = 10 ** (rng.uniform(-opts.word_jitter_db, opts.word_jitter_db) / 20)
        parts += [gap(), w.audio * np.float32(gain)]
    parts.append(gap())
    return np.concatenate(parts)


def vocode(x: np.ndarray, attack: str, rng: np.random.Generator) -> np.ndarray:
    """The spoof of bona fide ``x`` by ``attack``, with a few settings drawn from ``rng``."""
    seed = int(rng.integers(2**31))
    if attack == "XGL":
        return griffin_lim(x, n_fft=int(rng.choice([512, 1024])), n_iter=32, seed=seed)
    if attack == "XLP":
        return lpc_vocoder(x, order=int(rng.choice([16, 18, 20])), seed=seed)
    raise ValueError(f"unknown attack {attack!r}; use {list(ATTACKS)}")


def band_limit(x: np.ndarray, rate: int) -> np.ndarray:
    """``x`` through the band of a ``rate`` source (a resampling round trip) when ``rate`` is
    below 16 kHz, so that a spoof of narrow-band speech is narrow band too."""
    if rate >= SAMPLE_RATE:
        return x
    return resample(resample(x, SAMPLE_RATE, rate), rate, SAMPLE_RATE)[: x.size]


@dataclass(frozen=True)
class Clip:
    speaker: str
    attack: str  # "-" for bona fide
    language: str
    audio: np.ndarray

    @property
    def label(self) -> str:
        return "bonafide" if self.attack == "-" else "spoof"


def language_clips(
    language: str,
    files: list[Path],
    seed: int,
    attacks: list[str],
    opts: ClipOptions,
    report: Report,
    max_clips: int | None = None,
    seen: set[str] | None = None,
) -> Iterator[Clip]:
    """Bona fide clips of one language, each followed by its spoof (attacks in rotation).

    Files identical to one already ``seen`` (by content) are skipped; words of narrow-band files
    (below 16 kHz) and wide-band files make separate clips.
    """
    seen = set() if seen is None else seen
    rng = language_rng(seed, language)
    order = [files[i] for i in rng.permutation(len(files))]
    by_band: dict[bool, list[Word]] = {False: [], True: []}
    for path in order:
        report.files[language] += 1
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest in seen:
            report.duplicates[language] += 1
            continue
        seen.add(digest)
        try:
            word = read_word(path, language, opts)
        except AudioError:
            report.unreadable[language].append(path.name)
            continue
        if word is None:
            report.not_speech[language].append(path.name)
            continue
        by_band[word.rate < NARROW_RATE].append(word)
    made = 0
    offset = int(rng.integers(len(attacks)))
    for narrow in (False, True):
        groups = group_words(by_band[narrow], rng, opts)
        report.unused_words[language] += len(by_band[narrow]) - sum(len(g) for g in groups)
        for group in groups:
            if max_clips is not None and made >= max_clips:
                report.unused_words[language] += len(group)
                continue
            clip_rng = language_rng(seed, language, made, 1)
            bona = join_words(group, clip_rng, opts)
            attack = attacks[(offset + made) % len(attacks)]
            spoof = band_limit(vocode(bona, attack, clip_rng), min(w.rate for w in group))
            speaker = speaker_id(language)
            yield Clip(speaker, "-", language, bona)
            yield Clip(speaker, attack, language, spoof)
            made += 1


# --- writing ------------------------------------------------------------------------------------


def write_clip(out: Path, name: str, clip: Clip, report: Report) -> str:
    """Pass ``clip`` through the corpus channel, write ``out/flac/<name>.flac`` (16-bit), and
    return its protocol line."""
    import soundfile as sf

    y = corpus_channel(clip.audio)
    if np.abs(y).max() >= 1.0:
        report.clipped += 1
        y = np.clip(y, -1.0, 32767 / 32768)
    sf.write(str(out / "flac" / f"{name}.flac"), y, SAMPLE_RATE, subtype="PCM_16")
    report.clips[clip.language, clip.attack] += 1
    report.seconds[clip.language, clip.attack] += y.size / SAMPLE_RATE
    return f"{clip.speaker} {name} - {clip.attack} {clip.label}"


# --- the label-leak check -----------------------------------------------------------------------


def clip_statistics(x: np.ndarray) -> dict[str, float]:
    """Simple per-clip statistics a classifier could cheat with: RMS level (dBFS), peak level
    (dBFS), energy above the band edge (dB relative to the total), spectral centroid (Hz),
    share of 20 ms frames 30 dB below the loudest, and duration (s)."""
    x = np.asarray(x, dtype=np.float64)
    power = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(x.size, 1 / SAMPLE_RATE)
    total = max(float(power.sum()), 1e-30)
    hop = SAMPLE_RATE // 50
    n = max(x.size // hop, 1)
    frames = np.mean(x[: n * hop].reshape(n, -1) ** 2, axis=1) if x.size >= hop else power[:1]
    return {
        "rms_dbfs": dbfs(x),
        "peak_dbfs": 20 * np.log10(max(float(np.abs(x).max()), 1e-12)),
        "above_7k_db": 10 * np.log10(max(float(power[freqs > BAND_EDGE_HZ].sum()), 1e-30) / total),
        "centroid_hz": float((power * freqs).sum() / total),
        "silence_ratio": float(np.mean(frames < frames.max() * 1e-3)),
        "seconds": x.size / SAMPLE_RATE,
    }


def separability(utts: list[Utterance]) -> dict[str, float]:
    """For each of ``clip_statistics``, the EER of that statistic alone as a bona fide score,
    taken in the better of its two directions: 0.5 means useless, 0 a perfect giveaway."""
    from voicescreen.audio import load_audio

    stats = [(u.is_bonafide, clip_statistics(load_audio(u.path))) for u in utts]
    out = {}
    for key in stats[0][1]:
        bona = np.array([s[key] for b, s in stats if b])
        spoof = np.array([s[key] for b, s in stats if not b])
        out[key] = min(eer(bona, spoof)[0], eer(-bona, -spoof)[0], 0.5)
    return out


# --- README and summary -------------------------------------------------------------------------


def summary_table(
    report: Report, attacks: list[str], dev_languages: Sequence[str] = ()
) -> list[str]:
    """A Markdown table: clips per language and attack, and seconds; held-out (dev) languages
    are marked."""
    languages = sorted({lang for lang, _ in report.clips})
    cols = ["-", *attacks]
    head = "| language | speaker | bona fide | " + " | ".join(attacks) + " | seconds |"
    rows = [head, "|" + "---|" * (len(cols) + 3)]
    for lang in languages:
        counts = [report.clips[lang, a] for a in cols]
        secs = sum(report.seconds[lang, a] for a in cols)
        rows.append(
            f"| {lang}{' (dev)' if lang in dev_languages else ''} | {speaker_id(lang)} | "
            + " | ".join(map(str, counts))
            + f" | {secs:.0f} |"
        )
    totals = [sum(report.clips[lang, a] for lang in languages) for a in cols]
    secs = sum(report.seconds.values())
    rows.append("| **all** | | " + " | ".join(map(str, totals)) + f" | {secs:.0f} |")
    return rows


def exclusions(report: Report) -> list[str]:
    """One line per kind of file left out, naming the files."""
    lines = []
    dup = sum(report.duplicates.values())
    if dup:
        per = ", ".join(f"{k} {v}" for k, v in sorted(report.duplicates.items()))
        lines.append(f"- {dup} files identical to one already used (by content): {per}")
    for what, found in (("not speech", report.not_speech), ("unreadable", report.unreadable)):
        n = sum(len(v) for v in found.values())
        if n:
            per = "; ".join(f"{k}: {', '.join(v)}" for k, v in sorted(found.items()))
            lines.append(f"- {n} files {what}: {per}")
    unused = sum(report.unused_words.values())
    if unused:
        per = ", ".join(f"{k} {v}" for k, v in sorted(report.unused_words.items()) if v)
        lines.append(f"- {unused} words not placed in a clip (leftovers, or the clip cap): {per}")
    return lines or ["- nothing"]


def write_readme(
    out: Path,
    report: Report,
    attacks: list[str],
    version: str,
    command: str,
    stats: dict[str, float],
    dev_languages: Sequence[str] = (),
) -> None:
    """``out/README.md``: what the corpus holds, how it was made, its sources and licences."""
    n = sum(report.clips.values())
    seconds = sum(report.seconds.values())
    attack_lines = [f"- {a}: {ATTACKS[a]} of the bona fide clips." for a in attacks]
    if dev_languages:
        held_out = (
            f"The languages {', '.join(dev_languages)} (speakers "
            f"{', '.join(speaker_id(lang) for lang in dev_languages)}) are held out of training:\n"
            f"their clips form a dev split (`protocols/{DEV_PROTOCOL}`, `load_split(this_folder, "
            '"dev")`), to validate on voices the training never heard.'
        )
    else:
        held_out = "A train split only (no language held out)."
    stat_line = ", ".join(f"{k} {100 * v:.0f} %" for k, v in stats.items())
    text = f"""# Extra training data: ktuberling's recorded words, with matched vocoder spoofs

{n} clips ({seconds / 60:.1f} min), 16 kHz mono 16-bit FLAC, in the ASVspoof 2019 LA flat layout of
`../shared/data` (`flac/{PREFIX}_NNNNN.flac`, `protocols/{PROTOCOL}`), read with
`voicescreen.train.data.load_split(this_folder, "train")`. {held_out}
Made by `scripts/make_extra_data.py`.

## What is in it
Bona fide: the recorded words of ktuberling-data, one folder per language (speaker id
`KTU_<LANG>`); 4-7 words of one language per clip in a seeded order, each
high-passed at {HIGH_PASS_HZ:.0f} Hz, trimmed to its loudest stretch and levelled, joined by
150-400 ms gaps of low pink noise, 3.5-6 s per clip. Words recorded below 16 kHz (8 kHz files) make
clips of their own.

Spoof: exactly one per bona fide clip, made from that clip (so language, speaker, words and
duration are shared by the two classes; spoof lines carry the speaker they imitate, as in ASVspoof):
{chr(10).join(attack_lines)}

A spoof of a narrow-band (8 kHz) source is band-limited as its source was. Every clip then went
through the shared corpus's train channel: {TARGET_DBFS:.0f} dBFS RMS (peaks above
{CEILING_DBFS:.0f} dBFS brought down by a 5 ms look-ahead limiter, in both classes alike), a G.722
round trip at 16 kHz, a steep low-pass at {BAND_EDGE_HZ / 1000:.0f} kHz, {TARGET_DBFS:.0f} dBFS
again.

A language folder is taken to be one speaker; by the pitch of their words some folders (ca, da, gl,
ru in ktuberling-data 4:22.12.3) seem to hold a man's and a woman's voice.

{chr(10).join(summary_table(report, attacks, dev_languages))}

Single-statistic EER, bona fide vs spoof (50 % = no information): {stat_line}.

Left out:
{chr(10).join(exclusions(report))}

No text-to-speech was used, so the eval split's unseen attacks (Festival `ked`, espeak-ng German,
Italian, Portuguese, Dutch) and the dev split's voice (Asterisk French prompts) are not in it.

## Sources and licences
- ktuberling-data {version} (Debian; KDE's KTuberling): the recorded words, `usr/share/ktuberling/
  sounds/<lang>/`. GPL-2+ (Debian's copyright file, `Files: *`); the derived clips are under it too.
- The vocoders are the project's own (`voicescreen/train/vocoders.py`).

## Command
```
{command}
```
"""
    (out / "README.md").write_text(text)


def print_summary(
    report: Report,
    attacks: list[str],
    stats: dict[str, float],
    took: float,
    dev_languages: Sequence[str] = (),
) -> None:
    print("\n".join(summary_table(report, attacks, dev_languages)))
    print("left out:\n" + "\n".join(exclusions(report)))
    if report.clipped:
        print(f"{report.clipped} clips clipped at full scale")
    print("single-statistic EER: " + ", ".join(f"{k} {100 * v:.0f} %" for k, v in stats.items()))
    print(f"took {took:.0f} s")


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (replaced)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--languages", help="comma-separated language folders (default: all)")
    p.add_argument(
        "--dev-languages",
        default=",".join(DEV_LANGUAGES),
        help="comma-separated language folders whose clips go to the dev split (held out of "
        'training); "" for none (default: %(default)s)',
    )
    p.add_argument("--max-clips-per-language", type=int, help="bona fide clips per language")
    p.add_argument("--attacks", default=",".join(ATTACKS), help=f"from {list(ATTACKS)}")
    p.add_argument("--ktuberling-root", type=Path, help=f"a root holding {SOUNDS} (default /)")
    p.add_argument("--ktuberling-deb", type=Path, help=f"a {PACKAGE} .deb to unpack")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where .debs are unpacked")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown or not attacks:
        raise SystemExit(f"unknown attack(s) {unknown}; use some of {list(ATTACKS)}")
    languages = args.languages.split(",") if args.languages else None
    sounds, version = find_sounds(args.ktuberling_root, args.ktuberling_deb, args.cache)
    files = language_files(sounds, languages)
    held = {lang.strip() for lang in args.dev_languages.split(",") if lang.strip()}
    dev_languages = [lang for lang in files if lang in held]
    if dev_languages and len(dev_languages) == len(files):
        raise SystemExit(f"every language is in --dev-languages ({dev_languages}): none to train")

    out: Path = args.out
    if out.exists():
        if not (out / "protocols" / PROTOCOL).is_file() and any(out.iterdir()):
            raise SystemExit(
                f"{out} exists and does not look like an earlier output; not replacing"
            )
        shutil.rmtree(out)
    (out / "flac").mkdir(parents=True)
    (out / "protocols").mkdir()

    report, seen = Report(), set()
    lines: dict[str, list[str]] = {PROTOCOL: [], DEV_PROTOCOL: []}
    opts = ClipOptions()
    for language, paths in files.items():
        clips = language_clips(
            language, paths, args.seed, attacks, opts, report, args.max_clips_per_language, seen
        )
        protocol = DEV_PROTOCOL if language in dev_languages else PROTOCOL
        for clip in clips:
            number = sum(map(len, lines.values())) + 1
            lines[protocol].append(write_clip(out, f"{PREFIX}_{number:05d}", clip, report))
        n = report.clips[language, "-"]
        split = "dev" if protocol == DEV_PROTOCOL else "train"
        print(f"{language}: {report.files[language]} files, {n} bona fide + {n} spoof ({split})")
    if not lines[PROTOCOL]:
        raise SystemExit("no clips made: too few usable words")
    for name, made in lines.items():
        if made:
            (out / "protocols" / name).write_text("\n".join(made) + "\n")

    utts = load_split(out, "train") + (load_split(out, "dev") if lines[DEV_PROTOCOL] else [])
    stats = separability(utts)
    command = shlex.join(["python", "scripts/make_extra_data.py", *(argv or sys.argv[1:])])
    write_readme(out, report, attacks, version, command, stats, dev_languages)
    print_summary(report, attacks, stats, time.monotonic() - started, dev_languages)
    return 0
