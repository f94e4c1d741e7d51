#!/usr/bin/env python
"""Which of the frozen Whisper encoder's hidden states separate bona fide from spoof on voices
and systems the probe never saw: a linear probe per hidden state, trained on one corpus's train
split and measured on a dev split (never eval).

Each clip's first 4 s window (train: through one channel drawn per clip from ``--train-channels``;
dev: through every one of ``--channels``) runs through the encoder once; each hidden state
(0 = the conv stem with positions, i = block i, 4 = the encoder's output after its final
LayerNorm) is layer-normalised per frame, as ``WhisperPool`` does, and pooled over frames into
its mean and standard deviation (768 numbers). A logistic regression on those (standardised,
L2 with C from ``--c``) is fitted per state, and on all states side by side; the table gives
the dev EER pooled over channels and per channel. A probe sees the same statistics the
back-end's pooling starts from, without the learned attention.

    python scripts/probe_whisper_layers.py --train ROOT [--train ROOT2] --dev ROOT [--dev ROOT2]
        [--channels clean,g722,mulaw,amr-nb,opus@8k] [--subset N] [--threads 2] [--cache DIR]

Needs the whisper extra. Prints a markdown table. Features are cached in ``--cache`` (one
``.npy`` per corpus, split and channel plan), so reruns with other probes take seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from voicescreen.audio import WINDOW_SAMPLES, load_audio
from voicescreen.models import whisper as W
from voicescreen.train.augment import channel as through_channel
from voicescreen.train.data import balanced_subset, load_split
from voicescreen.train.evaluate import first_window
from voicescreen.train.metrics import eer

BATCH = 16


def pooled_states(model: W.WhisperEncoder, mel: W.LogMel, windows: np.ndarray) -> np.ndarray:
    """(B, samples) -> (B, n_layer + 1, 2 * d_model): per hidden state, the mean and standard
    deviation over frames of its layer-normalised frames."""
    with torch.inference_mode():
        states = model.hidden_states(mel(torch.from_numpy(windows)))
        out = []
        for h in states:
            h = F.layer_norm(h, (h.shape[-1],))
            out.append(torch.cat([h.mean(dim=1), h.std(dim=1)], dim=1))
    return torch.stack(out, dim=1).numpy()


def features(
    root: str, split: str, plan: list[str], subset: int | None, cache: Path, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, states, 768) pooled features, (N,) targets (1 = bona fide), (N,) channel names.
    ``plan``: one channel -> every clip through it; several with ``draw`` first -> one drawn
    per clip; several -> every clip through each."""
    utts = load_split(root, split)
    if subset:
        utts = balanced_subset(utts, subset, seed=seed, per_attack=True)
    draw = plan[0] == "draw"
    channels = plan[1:] if draw else plan
    key = json.dumps(
        [str(Path(root).resolve()), split, plan, subset, seed, [u.file for u in utts]]
    ).encode()
    stem = cache / f"{Path(root).name}-{split}-{hashlib.sha256(key).hexdigest()[:12]}"
    if stem.with_suffix(".npz").is_file():
        z = np.load(stem.with_suffix(".npz"))
        return z["x"], z["y"], z["ch"]
    encoder, _ = W.pretrained_encoder()
    mel = W.LogMel()
    rng = np.random.default_rng(seed)
    rows, ys, chs = [], [], []
    jobs = (
        [(u, str(rng.choice(channels))) for u in utts]
        if draw
        else [(u, c) for c in channels for u in utts]
    )
    t0 = time.perf_counter()
    for i in range(0, len(jobs), BATCH):
        part = jobs[i : i + BATCH]
        windows = []
        for u, c in part:
            x = load_audio(u.path)
            if draw and c != "clean":
                windows.append(
                    first_window(through_channel(x[:WINDOW_SAMPLES], c, rng), WINDOW_SAMPLES)
                )
            else:
                windows.append(first_window(x, WINDOW_SAMPLES, c))
        rows.append(pooled_states(encoder, mel, np.stack(windows).astype(np.float32)))
        ys += [u.target for u, _ in part]
        chs += [c for _, c in part]
        if i // BATCH % 50 == 0:
            print(
                f"  {root} {split}: {i + len(part)}/{len(jobs)} ({time.perf_counter() - t0:.0f} s)"
            )
    x, y, ch = np.concatenate(rows), np.asarray(ys), np.asarray(chs)
    stem.parent.mkdir(parents=True, exist_ok=True)
    np.savez(stem.with_suffix(".npz"), x=x, y=y, ch=ch)
    return x, y, ch


def probe_scores(xtr, ytr, xdev, ydev, c: float) -> np.ndarray:
    """Dev scores of a standardised L2 logistic regression fitted on train."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
    clf.fit(xtr, ytr)
    return clf.decision_function(xdev)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", action="append", required=True, help="corpus root (repeatable)")
    p.add_argument("--dev", action="append", required=True, help="corpus root (repeatable)")
    p.add_argument("--channels", default="clean,g722,mulaw,amr-nb,opus@8k")
    p.add_argument("--train-channels", default="clean,g722,mulaw,amr-nb,opus,gsm,mobile")
    p.add_argument("--subset", type=int, default=None, help="clips per train split")
    p.add_argument("--c", type=float, default=0.01, help="inverse L2 strength")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default="runs/probe-cache")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    cache = Path(a.cache)
    train = [
        features(r, "train", ["draw", *a.train_channels.split(",")], a.subset, cache, a.seed)
        for r in a.train
    ]
    xtr = np.concatenate([t[0] for t in train])
    ytr = np.concatenate([t[1] for t in train])
    channels = a.channels.split(",")
    n_states = xtr.shape[1]
    names = [f"state {i}" for i in range(n_states)] + ["all states"]
    print(f"\ntrain: {' + '.join(a.train)} ({len(ytr)} windows), C = {a.c}\n")
    for root in a.dev:
        xdev, ydev, chdev = features(root, "dev", channels, None, cache, a.seed)
        print(f"dev: {root} ({len(ydev) // len(channels)} clips x {len(channels)} channels)\n")
        print("| hidden state | EER pooled | " + " | ".join(channels) + " |")
        print("|---|---|" + "---|" * len(channels))
        for j, name in enumerate(names):
            sel = slice(None) if j == n_states else j
            s = probe_scores(
                xtr[:, sel].reshape(len(xtr), -1),
                ytr,
                xdev[:, sel].reshape(len(xdev), -1),
                ydev,
                a.c,
            )
            pooled = eer(s[ydev == 1], s[ydev == 0])[0]
            per = [
                eer(s[(ydev == 1) & (chdev == c)], s[(ydev == 0) & (chdev == c)])[0]
                for c in channels
            ]
            print(
                f"| {name} | {100 * pooled:.1f} % | "
                + " | ".join(f"{100 * e:.1f}" for e in per)
                + " |"
            )
        print()


if __name__ == "__main__":
    main()
