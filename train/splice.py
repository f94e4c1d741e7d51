"""Splice: unit-selection-like spoofs cut from a corpus's own bona fide clips.

Corpus v2 trains on formant, diphone, HMM, neural and vocoder systems, but on no unit-selection
one, and its dev split's unseen Festival Russian voice (cluster unit selection) passes every
candidate at 26-36 % EER. A unit-selection synthesiser plays back stretches of natural recordings
(phone- to syllable-sized units) joined where a join cost says the seam will be least heard:
there is no vocoder to leave traces, and what gives it away is at the joins (steps of phase,
pitch, spectral envelope and level every 50-250 ms) and in prosody no speaker would produce.

This module makes such audio without a text front end. From each bona fide clip it keeps the
pauses where they are and re-makes each stretch of speech between them from units of that same
recording:
each unit is the cheapest of ``candidates`` random stretches of active speech by a spectral join
cost (the distance between the log band energies on either side of the seam), sometimes simply
the stretch that follows the last one (a unit-selection system also strings natural neighbours
together), joined at a zero crossing with a short cross-fade. One recording per clip keeps its
microphone, room and channel on every unit, as a unit database does. The speech is not words;
the cues the family adds are the seams and the prosody.

``build_splice_corpus`` writes an ASVspoof-layout corpus (train split only, system ``splice``)
to pass to ``voicescreen train --extra-train``. ``voicescreen data splice`` runs it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from voicescreen.audio import SAMPLE_RATE, load_audio

PREFIX = "SPL"
SYSTEM = "splice"
FRAME = 320  # 20 ms analysis frames
HOP = 160  # every 10 ms
BANDS = 20  # log-spaced from 200 Hz: every band holds an FFT bin


@dataclass(frozen=True)
class SpliceOptions:
    unit_ms: tuple[float, float] = (50.0, 250.0)  # a unit's length, drawn uniformly
    candidates: int = 16  # random units weighed at each join
    follow: float = 0.25  # chance that a unit is simply the stretch after the last one
    crossfade_ms: tuple[float, float] = (1.0, 5.0)
    active_db: float = 35.0  # frames within this of the loudest are speech,
    floor_dbfs: float = -70.0  # if they are louder than this (RMS)
    seed: int = 0

    def __post_init__(self) -> None:
        lo, hi = self.unit_ms
        if not 20 <= lo <= hi or self.candidates < 1 or not 0 <= self.follow < 1:
            raise ValueError(f"impossible splice options {self}")
        if not 0 <= self.crossfade_ms[0] <= self.crossfade_ms[1] < lo / 2:
            raise ValueError(f"cross-fades {self.crossfade_ms} ms must be under half a unit")


@dataclass(frozen=True)
class Unit:
    at: int  # output sample where the unit starts (its cross-fade included)
    source: int  # source sample it starts from
    length: int  # samples


def band_energies(x: np.ndarray) -> np.ndarray:
    """(frames, BANDS + 1) log energies of 20 ms Hann frames every 10 ms: BANDS log-spaced bands
    from 200 Hz to 8 kHz, then the whole frame."""
    power = np.abs(np.fft.rfft(_frames(x) * np.hanning(FRAME), axis=1)) ** 2
    freqs = np.fft.rfftfreq(FRAME, 1 / SAMPLE_RATE)
    edges = np.geomspace(200, SAMPLE_RATE / 2, BANDS + 1)
    bands = [power[:, (freqs >= a) & (freqs < b)].sum(axis=1) for a, b in itertools.pairwise(edges)]
    out = np.stack([*bands, power.sum(axis=1)], axis=1)
    return 10 * np.log10(out + 1e-10)


def _frames(x: np.ndarray) -> np.ndarray:
    """(frames, FRAME) views of ``x``, a frame every HOP samples, the last zero-padded."""
    n = max(1, 1 + (len(x) - FRAME) // HOP)
    padded = np.pad(x, (0, max(0, FRAME + (n - 1) * HOP - len(x))))
    return np.lib.stride_tricks.sliding_window_view(padded, FRAME)[::HOP][:n]


def zero_crossing_near(x: np.ndarray, at: int, reach: int = 80) -> int:
    """The upward zero crossing of ``x`` nearest ``at``, within ``reach`` samples (else ``at``)."""
    lo, hi = max(1, at - reach), min(len(x) - 1, at + reach)
    if hi <= lo:
        return at
    seg = x[lo - 1 : hi]
    ups = np.flatnonzero((seg[:-1] < 0) & (seg[1:] >= 0)) + lo
    return int(ups[np.argmin(np.abs(ups - at))]) if ups.size else at


def speech_frames(x: np.ndarray, feats: np.ndarray, o: SpliceOptions) -> np.ndarray:
    """Which frames of ``x`` (``band_energies(x)``) are speech: within ``o.active_db`` of the
    loudest frame and louder than ``o.floor_dbfs``."""
    level = feats[:, -1]
    rms_db = 20 * np.log10(np.sqrt(np.mean(_frames(x) ** 2, axis=1)) + 1e-10)
    return (level >= level.max() - o.active_db) & (rms_db >= o.floor_dbfs)


def speech_runs(active: np.ndarray, bridge: int) -> list[tuple[int, int]]:
    """Runs ``[first, end)`` of True frames in ``active``, gaps shorter than ``bridge`` frames
    bridged."""
    runs: list[tuple[int, int]] = []
    for f in np.flatnonzero(active):
        if runs and f - runs[-1][1] < bridge:
            runs[-1] = (runs[-1][0], int(f) + 1)
        else:
            runs.append((int(f), int(f) + 1))
    return runs


def splice(
    x: np.ndarray, rng: np.random.Generator, o: SpliceOptions
) -> tuple[np.ndarray, list[Unit]]:
    """A unit-selection-like rendering of ``x`` (16 kHz float): the same length, and the same
    pauses where ``x`` pauses (150 ms or longer); each stretch of speech between them re-made of
    units of ``x``'s own speech. Returns it and its units."""
    x = np.asarray(x, dtype=np.float32)
    feats = band_energies(x)
    active = speech_frames(x, feats, o)
    lo_f, hi_f = (round(ms / 10) for ms in o.unit_ms)
    frames_active = np.flatnonzero(active)
    starts = frames_active[frames_active + hi_f < len(feats)]  # a unit fits after each
    if starts.size < 2 * hi_f:
        raise ValueError(f"too little speech to splice ({frames_active.size * 10} ms active)")
    y = x.copy()
    units: list[Unit] = []
    edge = int(0.005 * SAMPLE_RATE)  # fades into and out of each stretch, over the pause's audio
    for first, end in speech_runs(active, bridge=15):
        head, tail = first * HOP, min(len(x), (end - 1) * HOP + FRAME)
        if tail - head < 2 * lo_f * HOP:
            continue  # too short to hold a seam: kept as spoken
        stretch, made = _fill(x, feats, starts, tail - head, rng, o)
        units += [Unit(head + u.at, u.source, u.length) for u in made]
        ramp = np.ones(tail - head, np.float32)
        ramp[:edge] = np.linspace(0, 1, edge, dtype=np.float32)
        ramp[-edge:] = np.linspace(1, 0, edge, dtype=np.float32)
        y[head:tail] = stretch * ramp + x[head:tail] * (1 - ramp)
    if not units:
        raise ValueError("no stretch of speech long enough to splice")
    return y, units


def _fill(
    x: np.ndarray,
    feats: np.ndarray,
    starts: np.ndarray,
    target: int,
    rng: np.random.Generator,
    o: SpliceOptions,
) -> tuple[np.ndarray, list[Unit]]:
    """``target`` samples of units of ``x``: each the cheapest join of ``o.candidates`` random
    ones starting on ``starts`` frames, or (chance ``o.follow``) the audio after the last."""
    lo_f, hi_f = (round(ms / 10) for ms in o.unit_ms)
    out = np.zeros(target + 2 * hi_f * HOP, np.float32)
    units: list[Unit] = []
    filled, last_end = 0, None  # output samples written; source frame after the last unit
    while filled < target:
        frames = int(rng.integers(lo_f, hi_f + 1))
        if last_end is not None and last_end + frames < len(feats) and rng.random() < o.follow:
            start = last_end
        else:
            picks = rng.choice(starts, size=min(o.candidates, starts.size), replace=False)
            if last_end is None:
                start = int(picks[0])
            else:
                seam = feats[min(last_end, len(feats) - 1)]  # what the next frame would have been
                cost = ((feats[picks] - seam) ** 2).mean(axis=1)
                start = int(picks[np.argmin(cost)])
        if start == last_end and units:  # the natural neighbour: no seam
            a = units[-1].source + units[-1].length
            b = min(len(x), a + frames * HOP)
            out[filled : filled + b - a] = x[a:b]
            units[-1] = Unit(units[-1].at, units[-1].source, units[-1].length + b - a)
            filled += b - a
        else:
            a = zero_crossing_near(x, start * HOP)
            b = min(len(x), a + frames * HOP)
            fade = int(rng.uniform(*o.crossfade_ms) * SAMPLE_RATE / 1000) if units else 0
            fade = min(fade, filled, b - a)
            at = filled - fade
            piece = x[a:b].copy()
            if fade:
                ramp = np.linspace(0, 1, fade + 2, dtype=np.float32)[1:-1]
                piece[:fade] = piece[:fade] * ramp + out[at:filled] * (1 - ramp)
            out[at : at + len(piece)] = piece
            units.append(Unit(at, a, b - a))
            filled = at + len(piece)
        last_end = -(-(units[-1].source + units[-1].length) // HOP)
    last = units[-1]  # the last unit runs past the stretch: it ends where the stretch does
    units[-1] = Unit(last.at, last.source, min(last.length, target - last.at))
    return out[:target], units


@dataclass(frozen=True)
class SpliceResult:
    out: Path
    clips: int
    units: int
    seconds: float
    skipped: int  # source clips with too little speech to splice


def build_splice_corpus(
    sources: Sequence[str | Path],
    out: str | Path,
    options: SpliceOptions | None = None,
    *,
    split: str = "train",
    limit: int | None = None,
    progress: bool | None = None,
) -> SpliceResult:
    """One splice spoof per bona fide clip of ``split`` in each corpus of ``sources`` (at most
    ``limit`` in all, drawn evenly), written to ``out`` as an ASVspoof-layout train split with the
    source clip's speaker; ``out/sources.tsv`` says which clip and how many units each came from.
    ``progress`` None: a bar when stderr is a terminal."""
    import soundfile as sf
    from tqdm import tqdm

    from voicescreen.train.data import load_split

    o = options or SpliceOptions()
    out = Path(out)
    bonafide = [u for root in sources for u in load_split(root, split) if u.is_bonafide]
    if not bonafide:
        raise ValueError(f"no bona fide clips in the {split} split of {list(map(str, sources))}")
    if limit is not None and limit < len(bonafide):
        keep = np.linspace(0, len(bonafide) - 1, limit).round().astype(int)
        bonafide = [bonafide[i] for i in keep]
    for sub in ("flac", "protocols"):
        shutil.rmtree(out / sub, ignore_errors=True)
        (out / sub).mkdir(parents=True)
    lines, rows = [], ["file\tsource\tspeaker\tunits\tseconds"]
    total_units, seconds, skipped = 0, 0.0, 0
    bar = tqdm(
        bonafide, desc="splice", unit="clip", disable=None if progress is None else not progress
    )
    for u in bar:
        seed = int.from_bytes(hashlib.sha256(f"{o.seed}/{u.path.name}".encode()).digest()[:8])
        x = load_audio(u.path)
        try:
            y, units = splice(x, np.random.default_rng(seed), o)
        except ValueError:
            skipped += 1  # a clip with too little speech
            continue
        name = f"{PREFIX}_T_{len(lines) + 1:05d}"
        sf.write(
            str(out / "flac" / f"{name}.flac"), np.clip(y, -1, 1), SAMPLE_RATE, subtype="PCM_16"
        )
        lines.append(f"{u.speaker} {name} - {SYSTEM} spoof")
        rows.append(f"{name}\t{u.path}\t{u.speaker}\t{len(units)}\t{len(y) / SAMPLE_RATE:.3f}")
        total_units += len(units)
        seconds += len(y) / SAMPLE_RATE
    if not lines:
        raise ValueError("no clip had enough speech to splice")
    (out / "protocols" / f"{PREFIX}.cm.train.trn.txt").write_text("\n".join(lines) + "\n")
    (out / "sources.tsv").write_text("\n".join(rows) + "\n")
    (out / "README.md").write_text(
        "# Splice: unit-selection-like spoofs\n\n"
        f"{len(lines)} spoofs (system `{SYSTEM}`, train split only), each cut from one bona fide "
        f"clip of the {split} split of {', '.join(map(str, sources))} by "
        "`voicescreen data splice` (`voicescreen.train.splice`): the clip's own pauses, each "
        "stretch of speech between them re-made of units of its own speech, "
        f"{total_units / len(lines):.1f} units per clip on average. "
        f"{skipped} source clips had too little speech and were left out. "
        "`sources.tsv` names each spoof's source clip. Options:\n\n"
        f"```json\n{json.dumps(asdict(o), indent=2)}\n```\n"
    )
    return SpliceResult(out, len(lines), total_units, seconds, skipped)
