"""Figures per group of clips (fold, family, language, channel, ...) with bootstrap intervals.

A scored *row* is one clip through one channel. A group is a set of rows; its figures are the EER
and the rates at the card's threshold (each row judged at its own calibration's threshold), each
with a percentile bootstrap interval: clips are resampled with replacement within the group,
bona fide and spoof apart (so that both classes stay), a clip bringing all its rows (its
channels) with it; seeded per group, so a group's interval does not depend on which other groups
are reported.

A group that holds one class only (a spoof family, a spoof-only package) is measured against all
the scored rows of the other class, as per-attack EERs are; its figures say so (``reference``).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from voicescreen.train.metrics import eer

FIGURES = ("eer", "bonafide_accepted", "spoof_rejected")


@dataclass(frozen=True)
class BootstrapOptions:
    """How intervals are drawn: ``resamples`` percentile bootstrap draws at ``confidence``, from
    ``seed`` (0 resamples: point figures only)."""

    resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0


@dataclass(frozen=True)
class Interval:
    value: float
    low: float | None = None
    high: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self)


def _point(scores: np.ndarray, labels: np.ndarray, cuts: np.ndarray) -> tuple[float, float, float]:
    accept = scores >= cuts
    return (
        eer(scores[labels], scores[~labels])[0],
        float(np.mean(accept[labels])),
        float(np.mean(~accept[~labels])),
    )


def bootstrap(
    scores: np.ndarray,
    labels: np.ndarray,
    cuts: np.ndarray | float,
    clips: np.ndarray | None = None,
    options: BootstrapOptions = BootstrapOptions(),
    key: str = "",
) -> dict[str, Interval]:
    """EER, bona fide accepted and spoofs rejected (at ``cuts``: one threshold, or one per row)
    of rows with ``scores`` and ``labels`` (True = bona fide), each with its bootstrap interval.

    ``clips`` (one id per row; default: each row its own clip) are what is resampled, within each
    class; ``key`` names the group, seeding its draws together with ``options.seed``."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    cuts = np.broadcast_to(np.asarray(cuts, dtype=np.float64), scores.shape)
    clips = np.arange(scores.size) if clips is None else np.asarray(clips)
    point = _point(scores, labels, cuts)
    if options.resamples <= 0:
        return {name: Interval(v) for name, v in zip(FIGURES, point, strict=True)}
    rng = np.random.default_rng([options.seed, zlib.crc32(key.encode())])
    # each class's clips as a (clips, most rows of a clip) table of row indices, -1 padded
    tables = []
    for cls in (True, False):
        rows = np.flatnonzero(labels == cls)
        _, inverse, counts = np.unique(clips[rows], return_inverse=True, return_counts=True)
        table = np.full((counts.size, counts.max()), -1, dtype=np.int64)
        order = np.argsort(inverse, kind="stable")
        slot = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)
        table[inverse[order], slot] = rows[order]
        tables.append(table)
    draws = np.empty((options.resamples, len(FIGURES)))
    for b in range(options.resamples):
        picked = np.concatenate([t[rng.integers(0, len(t), len(t))].ravel() for t in tables])
        picked = picked[picked >= 0]
        draws[b] = _point(scores[picked], labels[picked], cuts[picked])
    tail = 100 * (1 - options.confidence) / 2
    low, high = np.percentile(draws, [tail, 100 - tail], axis=0)
    return {
        name: Interval(v, float(lo), float(hi))
        for name, v, lo, hi in zip(FIGURES, point, low, high, strict=True)
    }


def group_figures(
    scores: np.ndarray,
    labels: np.ndarray,
    cuts: np.ndarray,
    clips: np.ndarray,
    groups: Mapping[str, np.ndarray],
    options: BootstrapOptions = BootstrapOptions(),
    kind: str = "",
) -> dict[str, dict[str, Any]]:
    """Figures of each group (row indices), in the order given; a one-class group is completed
    by all rows of the other class. Groups with no rows are left out."""
    labels = np.asarray(labels, dtype=bool)
    out: dict[str, dict[str, Any]] = {}
    for value, rows in groups.items():
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            continue
        n_bona, n_spoof = int(labels[rows].sum()), int((~labels[rows]).sum())
        reference = None
        if n_bona == 0:
            reference = "bonafide"
            rows = np.concatenate([rows, np.flatnonzero(labels)])
        elif n_spoof == 0:
            reference = "spoof"
            rows = np.concatenate([rows, np.flatnonzero(~labels)])
        if not labels[rows].any() or labels[rows].all():
            continue  # nothing of the other class was scored at all
        figures = bootstrap(
            scores[rows], labels[rows], cuts[rows], clips[rows], options, f"{kind}={value}"
        )
        out[value] = {
            "n_bonafide": int(labels[rows].sum()),
            "n_spoof": int((~labels[rows]).sum()),
            "clips": int(np.unique(clips[rows]).size),
            "reference": reference,
            **{name: iv.to_dict() for name, iv in figures.items()},
        }
    return out


def _cell(iv: Mapping[str, float | None]) -> str:
    text = f"{100 * iv['value']:.1f} %"
    if iv.get("low") is not None and iv.get("high") is not None:
        text += f" ({100 * iv['low']:.1f}–{100 * iv['high']:.1f})"
    return text


def markdown_table(kind: str, groups: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """A Markdown table of ``group_figures`` output, one row per group."""
    lines = [
        f"| {kind} | bona fide | spoof | EER | bona fide accepted | spoofs rejected |",
        "|---|---|---|---|---|---|",
    ]
    for value, g in groups.items():
        bona = f"{g['n_bonafide']}" + (" (all)" if g["reference"] == "bonafide" else "")
        spoof = f"{g['n_spoof']}" + (" (all)" if g["reference"] == "spoof" else "")
        lines.append(
            f"| {value} | {bona} | {spoof} | {_cell(g['eer'])} | "
            f"{_cell(g['bonafide_accepted'])} | {_cell(g['spoof_rejected'])} |"
        )
    return lines


def rows_by_value(values: Sequence[str]) -> dict[str, np.ndarray]:
    """Row indices per value, values sorted."""
    arr = np.asarray(values, dtype=object)
    return {v: np.flatnonzero(arr == v) for v in sorted(set(values))}


__all__ = [
    "FIGURES",
    "BootstrapOptions",
    "Interval",
    "bootstrap",
    "group_figures",
    "markdown_table",
    "rows_by_value",
]
