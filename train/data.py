"""Anti-spoofing corpora in the ASVspoof 2019 LA layout, and seeded subsets of them.

Two layouts are found by ``load_split(root, split)``:

- ASVspoof 2019 LA as published: ``ASVspoof2019_LA_{train,dev,eval}/flac/*.flac`` and
  ``ASVspoof2019_LA_cm_protocols/ASVspoof2019.LA.cm.{train.trn,dev.trl,eval.trl}.txt``;
- a flat tree: ``flac/*.flac`` and ``protocols/*.cm.{train.trn,dev.trl,eval.trl}.txt`` (the
  corpus in ``../shared/data`` is one).

Any protocol file with lines ``SPEAKER FILE - ATTACK bonafide|spoof`` and a folder of audio works
through ``read_protocol(path, audio_dir)``.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

SPLITS = {"train": "train.trn", "dev": "dev.trl", "eval": "eval.trl"}
LABELS = ("bonafide", "spoof")
AUDIO_SUFFIXES = (".flac", ".wav")


class ProtocolError(ValueError):
    """A protocol file that cannot be used: malformed lines or missing audio, all listed."""


@dataclass(frozen=True)
class Utterance:
    speaker: str
    file: str
    attack: str  # "-" for bona fide, e.g. "A07" for a spoof
    label: str  # "bonafide" or "spoof"
    path: Path

    @property
    def is_bonafide(self) -> bool:
        return self.label == "bonafide"

    @property
    def target(self) -> int:
        """The class index the models use: 1 = bona fide, 0 = spoof."""
        return int(self.is_bonafide)


def find_split(root: str | Path, split: str) -> tuple[Path, Path]:
    """The protocol file and audio folder of ``split`` under ``root``, in either layout."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {list(SPLITS)}")
    root = Path(root)
    suffix = SPLITS[split]
    official = root / "ASVspoof2019_LA_cm_protocols" / f"ASVspoof2019.LA.cm.{suffix}.txt"
    if official.is_file():
        return official, root / f"ASVspoof2019_LA_{split}" / "flac"
    flat = sorted((root / "protocols").glob(f"*.cm.{suffix}.txt"))
    if len(flat) == 1:
        return flat[0], root / "flac"
    if len(flat) > 1:
        raise ProtocolError(
            f"{root}/protocols: several {split} protocols: {[p.name for p in flat]}"
        )
    raise ProtocolError(
        f"{root}: no {split} protocol (looked for {official.relative_to(root)} and "
        f"protocols/*.cm.{suffix}.txt)"
    )


def read_protocol(path: str | Path, audio_dir: str | Path) -> list[Utterance]:
    """Parse a protocol file; raise ProtocolError listing every bad line and missing file."""
    path, audio_dir = Path(path), Path(audio_dir)
    if not path.is_file():
        raise ProtocolError(f"{path}: no such protocol file")
    utts, bad, missing = [], [], []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 5 or parts[4] not in LABELS:
            bad.append(f"line {number}: {line.strip()!r}")
            continue
        speaker, file, _, attack, label = parts
        audio = next(
            (
                audio_dir / f"{file}{s}"
                for s in AUDIO_SUFFIXES
                if (audio_dir / f"{file}{s}").is_file()
            ),
            None,
        )
        if audio is None:
            missing.append(file)
            continue
        utts.append(Utterance(speaker, file, attack, label, audio))
    problems = []
    if bad:
        problems.append(
            f"{len(bad)} malformed line(s), expected 'SPEAKER FILE - ATTACK bonafide|spoof': "
            + "; ".join(bad[:10])
            + (" ..." if len(bad) > 10 else "")
        )
    if missing:
        problems.append(
            f"{len(missing)} file(s) missing from {audio_dir}: "
            + ", ".join(missing[:10])
            + (" ..." if len(missing) > 10 else "")
        )
    if problems:
        raise ProtocolError(f"{path}: " + " | ".join(problems))
    if not utts:
        raise ProtocolError(f"{path}: no utterances")
    return utts


def load_split(root: str | Path, split: str) -> list[Utterance]:
    return read_protocol(*find_split(root, split))


def balanced_subset(
    utts: list[Utterance], n: int | None, seed: int = 0, per_attack: bool = False
) -> list[Utterance]:
    """A seeded subset of ``n`` utterances, half bona fide and half spoof where the data allows.

    With ``per_attack`` the spoof half is spread evenly over the attacks. ``n=None`` or ``n``
    at least the size of the data returns all of it (shuffled with the seed).
    """
    rng = random.Random(seed)
    if n is None or n >= len(utts):
        out = list(utts)
        rng.shuffle(out)
        return out
    bona = [u for u in utts if u.is_bonafide]
    spoof = [u for u in utts if not u.is_bonafide]
    n_bona = min(len(bona), n // 2)
    n_spoof = min(len(spoof), n - n_bona)
    n_bona = min(len(bona), n - n_spoof)
    picked = rng.sample(bona, n_bona)
    if per_attack:
        by_attack: dict[str, list[Utterance]] = defaultdict(list)
        for u in spoof:
            by_attack[u.attack].append(u)
        pools = [rng.sample(v, len(v)) for _, v in sorted(by_attack.items())]
        chosen: list[Utterance] = []
        while len(chosen) < n_spoof:  # round-robin over attacks
            for pool in pools:
                if pool and len(chosen) < n_spoof:
                    chosen.append(pool.pop())
        picked += chosen
    else:
        picked += rng.sample(spoof, n_spoof)
    rng.shuffle(picked)
    return picked
