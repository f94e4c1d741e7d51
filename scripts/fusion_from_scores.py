#!/usr/bin/env python
"""What a score fusion of two bundles would do, from the windows ``voicescreen eval --screen``
already scored: no model runs again.

Each ``scores.csv`` of ``eval --bundle A --screen B`` holds, per window, A's raw score
(``score``) and B's (``screen_score``), the label, the channel and the kind of audio that judged
it. The fusion is ``voicescreen fuse``'s (``train.fusion``): a logistic regression of the labels
on the two raw scores, classes weighted equally, cross-fitted over folds of clips (a clip's
channels stay together; every score judged by weights fitted without it). Fitted on the windows
of all the files given together (so one regression has to serve every corpus), the EER is then
reported per file and per channel, next to each model alone. Files given with ``--apply`` (a test
split) are never fitted on: they get the regression fitted on all the others.

    python scripts/fusion_from_scores.py runs/casc-cv2-dev/scores.csv \
        runs/casc-shared-dev/scores.csv --apply runs/casc-shared-eval/scores.csv

More than two models: join ``scores.csv`` files of the same windows with ``+`` (each adds its
``score`` column), name the scores with ``--names`` and choose which to fuse with ``--fuse``:

    python scripts/fusion_from_scores.py runs/a-dev/scores.csv+runs/b-dev/scores.csv \
        --names default,whisper,candidate --fuse whisper,candidate ...
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from voicescreen.train.fusion import cross_fitted, regression
from voicescreen.train.metrics import eer


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "screen_score" not in rows[0]:
        raise SystemExit(f"{path}: no screen_score column (is it from eval --screen?)")
    return rows


def read(spec: str) -> dict[str, np.ndarray]:
    """A ``scores.csv``, or several joined window by window (``a.csv+b.csv``: the same clips
    and channels, scored by other models): ``scores`` (N, K) holds the first file's score and
    screen_score, then each joined file's score."""
    paths = [Path(p) for p in spec.split("+")]
    rows = _rows(paths[0])
    keys = [(r["file"], r.get("channel", "clean")) for r in rows]
    columns = [[float(r["score"]) for r in rows], [float(r["screen_score"]) for r in rows]]
    for path in paths[1:]:
        other = {(r["file"], r.get("channel", "clean")): r for r in _rows(path)}
        if set(other) != set(keys):
            raise SystemExit(f"{path}: not the same windows as {paths[0]}")
        if any(other[k]["label"] != r["label"] for k, r in zip(keys, rows, strict=True)):
            raise SystemExit(f"{path}: labels differ from {paths[0]}")
        columns.append([float(other[k]["score"]) for k in keys])
    return {
        "scores": np.array(columns).T,
        "label": np.array([r["label"] == "bonafide" for r in rows]),
        "attack": np.array([r["attack"] for r in rows]),
        "channel": np.array([k[1] for k in keys]),
        "clip": np.array([f"{spec}:{k[0]}" for k in keys]),
    }


def pct(scores: np.ndarray, labels: np.ndarray) -> str:
    return f"{100 * eer(scores[labels], scores[~labels])[0]:.1f} %"


def table(
    title: str,
    d: dict[str, np.ndarray],
    names: list[str],
    fused: np.ndarray,
    by_attack: bool = False,
) -> None:
    """EER of each score and the fusion, pooled and per channel; with ``by_attack``, then per
    attack (its spoofs against every bona fide window)."""
    rows = [(name, d["scores"][:, k]) for k, name in enumerate(names)] + [("fusion", fused)]
    groups = {c: d["channel"] == c for c in dict.fromkeys(d["channel"])}
    print(f"{title}\n")
    _grid(rows, d["label"], "pooled", groups)
    if by_attack:
        attacks = sorted(set(d["attack"][~d["label"]]))
        _grid(rows, d["label"], "", {a: d["label"] | (d["attack"] == a) for a in attacks})


def _grid(rows, labels: np.ndarray, first: str, groups: dict[str, np.ndarray]) -> None:
    print(f"| | {first + ' | ' if first else ''}" + " | ".join(groups) + " |")
    print("|---|" + "---|" * (len(groups) + bool(first)))
    for name, s in rows:
        per = [pct(s[m], labels[m]) for m in groups.values()]
        print(f"| {name} | {pct(s, labels) + ' | ' if first else ''}" + " | ".join(per) + " |")
    print()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("csv", nargs="+", help="scores.csv of eval --screen runs (a.csv+b.csv: joined)")
    p.add_argument("--apply", nargs="*", default=[], help="scores.csv to report only (test splits)")
    p.add_argument(
        "--names",
        default="expert,screen",
        help="names of the scores, in order: each file's score, its screen_score, then the "
        "score of each file joined to it with '+' (default: expert,screen)",
    )
    p.add_argument(
        "--fuse",
        default=None,
        help="comma-separated names of the scores to fuse (default: all of them)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--by-attack", action="store_true", help="EER per attack too")
    a = p.parse_args()
    data = [read(spec) for spec in a.csv]
    applied_data = [read(spec) for spec in a.apply]
    names = a.names.split(",")
    widths = {d["scores"].shape[1] for d in data + applied_data}
    if widths != {len(names)}:
        raise SystemExit(f"--names gives {len(names)} names for {sorted(widths)} scores per window")
    chosen = a.fuse.split(",") if a.fuse else names
    if unknown := set(chosen) - set(names):
        raise SystemExit(f"--fuse: unknown {sorted(unknown)} (the names: {names})")
    cols = [names.index(n) for n in chosen]
    parts = np.concatenate([d["scores"][:, cols] for d in data])
    labels = np.concatenate([d["label"] for d in data])
    clips = np.concatenate([d["clip"] for d in data])
    fused = cross_fitted(parts, labels, clips, seed=a.seed)
    weights, bias = regression(parts, labels)
    terms = " ".join(f"{w:+.3f} x {n}" for w, n in zip(weights, chosen, strict=True))
    print(f"fused = {bias:+.3f} {terms} (raw scores)")
    print(f"fitted on {len(labels)} windows of {len(a.csv)} file(s); EER on raw scores\n")
    start = 0
    for spec, d in zip(a.csv, data, strict=True):
        n = len(d["label"])
        title = f"{spec} ({n} windows; fusion cross-fitted)"
        table(title, d, names, fused[start : start + n], a.by_attack)
        start += n
    for spec, d in zip(a.apply, applied_data, strict=True):
        applied = bias + d["scores"][:, cols] @ weights
        title = f"{spec} ({len(d['label'])} windows; never fitted on)"
        table(title, d, names, applied, a.by_attack)


if __name__ == "__main__":
    main()
