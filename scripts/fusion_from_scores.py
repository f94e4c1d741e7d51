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
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from voicescreen.train.fusion import cross_fitted, regression
from voicescreen.train.metrics import eer


def read(path: Path) -> dict[str, np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "screen_score" not in rows[0]:
        raise SystemExit(f"{path}: no screen_score column (is it from eval --screen?)")
    return {
        "expert": np.array([float(r["score"]) for r in rows]),
        "screen": np.array([float(r["screen_score"]) for r in rows]),
        "label": np.array([r["label"] == "bonafide" for r in rows]),
        "channel": np.array([r.get("channel", "clean") for r in rows]),
        "clip": np.array([f"{path}:{r['file']}" for r in rows]),
    }


def pct(scores: np.ndarray, labels: np.ndarray) -> str:
    return f"{100 * eer(scores[labels], scores[~labels])[0]:.1f} %"


def table(title: str, d: dict[str, np.ndarray], fused: np.ndarray) -> None:
    channels = list(dict.fromkeys(d["channel"]))
    print(f"{title}\n")
    print("| | pooled | " + " | ".join(channels) + " |")
    print("|---|---|" + "---|" * len(channels))
    for name, s in (("expert", d["expert"]), ("screen", d["screen"]), ("fusion", fused)):
        per = [pct(s[d["channel"] == c], d["label"][d["channel"] == c]) for c in channels]
        print(f"| {name} | {pct(s, d['label'])} | " + " | ".join(per) + " |")
    print()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("csv", nargs="+", type=Path, help="scores.csv of eval --screen runs")
    p.add_argument(
        "--apply", nargs="*", type=Path, default=[], help="scores.csv to report only (test splits)"
    )
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    data = [read(path) for path in a.csv]
    parts = np.concatenate([np.stack([d["expert"], d["screen"]], axis=1) for d in data])
    labels = np.concatenate([d["label"] for d in data])
    clips = np.concatenate([d["clip"] for d in data])
    fused = cross_fitted(parts, labels, clips, seed=a.seed)
    weights, bias = regression(parts, labels)
    print(f"fused = {bias:+.3f} {weights[0]:+.3f} x expert {weights[1]:+.3f} x screen (raw scores)")
    print(f"fitted on {len(labels)} windows of {len(a.csv)} file(s); EER on raw scores\n")
    start = 0
    for path, d in zip(a.csv, data, strict=True):
        n = len(d["label"])
        table(f"{path} ({n} windows; fusion cross-fitted)", d, fused[start : start + n])
        start += n
    for path in a.apply:
        d = read(path)
        applied = bias + np.stack([d["expert"], d["screen"]], axis=1) @ weights
        table(f"{path} ({len(d['label'])} windows; never fitted on)", d, applied)


if __name__ == "__main__":
    main()
