"""Folds that leave whole sources out, for choosing and calibrating models on what they never heard.

A fold holds out one group of clips: a spoof family (``family=hmm``: train without HMM
synthesis, validate on it), a spoof system, a human source package, a language or one voice (a
hedgewars voice pack is one). Folds are drawn from the ``train`` and ``dev`` splits only (the
*pool*); the ``eval`` split is never in a fold: it is reported, never chosen on.

For a fold holding out group ``G``:

- **held-out part**: the pool's clips in ``G``; where ``G`` holds one class only (a spoof
  family), the dev split's clips of the other class that are not in ``G`` join it, so that it has
  both classes;
- **train part**: the pool's other clips, less every clip of a human voice that speaks in the
  held-out part (its other recordings and the vocoded copies of them that carry its name).

Groups come from the corpus's ``sources.tsv`` (corpus v2: split, label, system, family, speaker,
language, package, channel) where it has one; on any other ASVspoof-layout corpus the protocol's
fields stand in: ``family`` and ``system`` are the attack field, ``speaker`` the speaker field,
and ``language`` and ``package`` are not known.

    folds = list_folds("runs/cv2", ("family", "language"))
    train, held_out = fold_utterances("runs/cv2", folds[0])
    write_fold_corpus("runs/cv2", folds[0], "runs/cv2-family-diphone")  # train + dev to train on
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from voicescreen.train.data import Utterance, load_split

log = logging.getLogger(__name__)

SOURCES = "sources.tsv"
POOL_SPLITS = ("train", "dev")  # folds never touch eval
# Group kinds: what each holds out. "family" and "system" group spoofs; the others humans (with
# whatever spoofs share their value: a language's TTS voices, a package's vocoded copies).
SPOOF_KINDS = ("family", "system")
HUMAN_KINDS = ("package", "language", "speaker")
KINDS = (*SPOOF_KINDS, *HUMAN_KINDS)
DEFAULT_KINDS = ("family", "package", "language")
HUMAN = "human"  # the family of bona fide clips in sources.tsv


@dataclass(frozen=True)
class FoldOptions:
    """Which folds ``list_folds`` makes."""

    kinds: tuple[str, ...] = DEFAULT_KINDS
    min_per_class: int = 1  # a fold whose held-out part has fewer clips of a class is left out


@dataclass(frozen=True)
class Fold:
    """One fold: the group it holds out and the clip names (protocol ``FILE`` fields) of its two
    parts, each sorted."""

    kind: str
    value: str
    train: tuple[str, ...]
    held_out: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.kind}={self.value}"


# --- what group a clip is in -------------------------------------------------------------------


def read_sources(root: str | Path) -> dict[str, dict[str, str]] | None:
    """``sources.tsv`` of a corpus v2 root, by clip name; None when the corpus has none."""
    path = Path(root) / SOURCES
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        return {row["file"]: row for row in csv.DictReader(f, delimiter="\t")}


def known_kinds(sources: Mapping[str, Mapping[str, str]] | None) -> tuple[str, ...]:
    """The group kinds a corpus can be split by: all of ``KINDS`` with a ``sources.tsv``, else
    those the protocol gives (``family``, ``system``, ``speaker``)."""
    if sources is None:
        return ("family", "system", "speaker")
    columns = set(next(iter(sources.values()), {}))
    return tuple(k for k in KINDS if k in columns)


def group_of(u: Utterance, kind: str, sources: Mapping[str, Mapping[str, str]] | None) -> str:
    """The value of ``kind`` for clip ``u``: from ``sources`` where given, else the protocol's
    attack (``family``, ``system``; ``human`` for bona fide) or speaker field."""
    if sources is not None:
        row = sources.get(u.file)
        if row is None:
            raise ValueError(f"{u.file} has no row in {SOURCES}")
        if kind not in row:
            raise ValueError(f"{SOURCES} has no {kind!r} column")
        return row[kind]
    if kind in SPOOF_KINDS:
        return HUMAN if u.is_bonafide else u.attack
    if kind == "speaker":
        return u.speaker
    raise ValueError(f"{kind!r} needs a {SOURCES} (this corpus has only its protocol)")


def _check_kinds(kinds: Iterable[str], sources: Mapping[str, Mapping[str, str]] | None) -> None:
    have = known_kinds(sources)
    bad = [k for k in kinds if k not in have]
    if bad:
        where = SOURCES if sources is not None else "the protocol (no sources.tsv)"
        raise ValueError(f"unknown group kind(s) {bad}; {where} gives {list(have)}")


# --- folds -------------------------------------------------------------------------------------


def pool(root: str | Path) -> dict[str, list[Utterance]]:
    """The clips folds are made from: the train and dev splits, by split."""
    return {split: load_split(root, split) for split in POOL_SPLITS}


def make_fold(
    kind: str,
    value: str,
    splits: Mapping[str, Sequence[Utterance]],
    sources: Mapping[str, Mapping[str, str]] | None,
) -> Fold:
    """The fold that holds out the clips whose ``kind`` is ``value`` (see the module's rules)."""
    everything = [u for split in POOL_SPLITS for u in splits.get(split, ())]
    held = [u for u in everything if group_of(u, kind, sources) == value]
    for label in ("bonafide", "spoof"):
        if not any(u.label == label for u in held):
            held += [u for u in splits.get("dev", ()) if u.label == label]
    held_names = {u.file for u in held}
    voices = {u.speaker for u in held if u.is_bonafide}
    train = [u.file for u in everything if u.file not in held_names and u.speaker not in voices]
    return Fold(kind, value, tuple(sorted(train)), tuple(sorted(held_names)))


def list_folds(root: str | Path, options: FoldOptions | Sequence[str] | None = None) -> list[Fold]:
    """Every fold of the corpus at ``root`` for the kinds asked (``FoldOptions`` or a list of
    kinds), in kind order then value order; deterministic. ``family``/``system`` folds hold out
    each spoof group, the others each group that has bona fide clips. A fold whose held-out part
    lacks a class (fewer than ``min_per_class`` clips) or whose train part does is left out,
    logged."""
    if isinstance(options, str):
        options = [options]
    if options is None or not isinstance(options, FoldOptions):
        options = FoldOptions(tuple(options) if options is not None else DEFAULT_KINDS)
    sources = read_sources(root)
    _check_kinds(options.kinds, sources)
    splits = pool(root)
    everything = [u for split in POOL_SPLITS for u in splits[split]]
    folds = []
    for kind in options.kinds:
        wanted = (lambda u: not u.is_bonafide) if kind in SPOOF_KINDS else (lambda u: u.is_bonafide)
        values = sorted({group_of(u, kind, sources) for u in everything if wanted(u)})
        for value in values:
            fold = make_fold(kind, value, splits, sources)
            short = _short_classes(fold, everything, options.min_per_class)
            if short:
                log.info("fold %s left out: too few %s", fold.name, " and ".join(short))
                continue
            folds.append(fold)
    return folds


def _short_classes(fold: Fold, utts: Sequence[Utterance], least: int) -> list[str]:
    label = {u.file: u.label for u in utts}
    short = []
    for part, names in (("held-out", fold.held_out), ("train", fold.train)):
        for cls in ("bonafide", "spoof"):
            if sum(label[n] == cls for n in names) < least:
                short.append(f"{part} {cls}")
    return short


def find_fold(root: str | Path, name: str) -> Fold:
    """The fold named ``KIND=VALUE``."""
    kind, _, value = name.partition("=")
    if not value:
        raise ValueError(f"fold {name!r}: name it KIND=VALUE, e.g. family=hmm")
    sources = read_sources(root)
    _check_kinds([kind], sources)
    splits = pool(root)
    everything = [u for split in POOL_SPLITS for u in splits[split]]
    if not any(group_of(u, kind, sources) == value for u in everything):
        raise ValueError(f"fold {name!r}: no clip of the train or dev split has {kind} {value!r}")
    return make_fold(kind, value, splits, sources)


def fold_utterances(root: str | Path, fold: Fold) -> tuple[list[Utterance], list[Utterance]]:
    """The train and held-out parts of ``fold`` as utterances, in the fold's (sorted) order."""
    by_name = {u.file: u for split in POOL_SPLITS for u in load_split(root, split)}
    return [by_name[n] for n in fold.train], [by_name[n] for n in fold.held_out]


def iter_folds(
    root: str | Path, options: FoldOptions | Sequence[str] | None = None
) -> Iterator[tuple[Fold, list[Utterance], list[Utterance]]]:
    """Each fold with its train and held-out utterances, lazily."""
    for fold in list_folds(root, options):
        yield (fold, *fold_utterances(root, fold))


def write_fold_corpus(root: str | Path, fold: Fold, out: str | Path) -> Path:
    """A corpus in the flat layout whose train split is ``fold``'s train part and whose dev split
    is its held-out part (links to the audio, and the rows of ``sources.tsv``), so that
    ``voicescreen train --data-root OUT`` trains and calibrates on the fold; it has no eval
    split. Returns ``out``."""
    root, out = Path(root), Path(out)
    (out / "flac").mkdir(parents=True, exist_ok=True)
    (out / "protocols").mkdir(exist_ok=True)
    train, held = fold_utterances(root, fold)
    tag = "".join(c if c.isalnum() else "_" for c in fold.name)
    for suffix, utts in (("train.trn", train), ("dev.trl", held)):
        lines = [f"{u.speaker} {u.file} - {u.attack} {u.label}" for u in utts]
        (out / "protocols" / f"{tag}.cm.{suffix}.txt").write_text("\n".join(lines) + "\n")
        for u in utts:
            link = out / "flac" / u.path.name
            if not link.exists():
                link.symlink_to(u.path.resolve())
    sources = read_sources(root)
    if sources is not None:
        names = {u.file: split for split, us in (("train", train), ("dev", held)) for u in us}
        header = list(next(iter(sources.values())))
        rows = ["\t".join(header)]
        for name, split in sorted(names.items()):
            rows.append("\t".join({**sources[name], "split": split}[k] for k in header))
        (out / SOURCES).write_text("\n".join(rows) + "\n")
    return out


def parse_folds(root: str | Path, spec: str) -> list[Fold]:
    """Folds from a command-line list: kinds (``family,language``) and fold names
    (``family=hmm``), in the order given, each fold once."""
    out: dict[str, Fold] = {}
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        for fold in [find_fold(root, item)] if "=" in item else list_folds(root, [item]):
            out.setdefault(fold.name, fold)
    if not out:
        raise ValueError(f"no folds in {spec!r} for {root}")
    return list(out.values())


__all__ = [
    "DEFAULT_KINDS",
    "KINDS",
    "POOL_SPLITS",
    "Fold",
    "FoldOptions",
    "find_fold",
    "fold_utterances",
    "group_of",
    "iter_folds",
    "known_kinds",
    "list_folds",
    "make_fold",
    "parse_folds",
    "read_sources",
    "write_fold_corpus",
]
