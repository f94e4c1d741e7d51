"""Fitting a score fusion (``models/fusion.py``) of trained bundles on labelled validation data.

Each member scores every clip's first window through every channel (``train.calibrate``'s
windows, on the member's own ONNX graph); a logistic regression of the labels on those raw
scores (classes weighted equally) gives the fusion's weights and bias, so the fused score reads
as a log-odds of bona fide; the fused scores are then calibrated like any bundle's, pooled and
per kind of audio. The regression is also cross-fitted (``CROSS_FOLDS`` folds of clips, each
clip's channels kept together: every score judged by weights fitted without it), so the card
tells the in-sample figure from an honest one.

    voicescreen fuse BUNDLE BUNDLE [...] --data-root D --split dev --channels clean,mulaw --out F
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from voicescreen.models.bundle import ONNX_FILE, Bundle, export_bundle, load_bundle
from voicescreen.models.fusion import ARCHITECTURE, Member, combine, member_graph_file
from voicescreen.models.registry import get_architecture
from voicescreen.runtimes import open_runtime
from voicescreen.train.calibrate import Fitted, fit_channels, score_channels
from voicescreen.train.data import Utterance
from voicescreen.train.metrics import eer

log = logging.getLogger(__name__)

CROSS_FOLDS = 5
REGULARISATION = 1.0  # sklearn's C: the scores are few (one per member) and well scaled


@dataclass(frozen=True)
class FusionFit:
    """A fitted fusion: the regression (``weights``, ``bias`` on the members' raw scores), the
    calibration of the fused scores, and the figures (EER pooled and per kind of audio) of each
    member, of the fusion in-sample and of the fusion cross-fitted."""

    weights: tuple[float, ...]
    bias: float
    calibration: Fitted
    figures: dict[str, dict[str, float]]
    scores: int  # scores fitted on: clips x channels

    def to_dict(self) -> dict[str, Any]:
        return {
            "weights": list(self.weights),
            "bias": self.bias,
            "scores": self.scores,
            "cross_folds": CROSS_FOLDS,
            "figures": self.figures,
        }


def regression(parts: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, float]:
    """Weights (K,) and bias of a logistic regression of ``labels`` (True = bona fide) on
    ``parts`` (N, K), the two classes weighted equally."""
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=REGULARISATION, class_weight="balanced", max_iter=1000)
    lr.fit(np.asarray(parts, np.float64), np.asarray(labels, int))
    return lr.coef_[0].astype(np.float64), float(lr.intercept_[0])


def cross_fitted(
    parts: np.ndarray, labels: np.ndarray, clip: np.ndarray, *, seed: int = 0
) -> np.ndarray:
    """Fused scores, each from a regression fitted on the other folds of clips."""
    clips = np.unique(clip)
    order = np.random.default_rng(seed).permutation(len(clips)) % CROSS_FOLDS
    fold_of = dict(zip(clips, order, strict=True))
    fold = np.array([fold_of[c] for c in clip])
    fused = np.empty(len(labels))
    for k in range(CROSS_FOLDS):
        held = fold == k
        if not held.any():
            continue
        w, b = regression(parts[~held], labels[~held])
        fused[held] = b + parts[held] @ w
    return fused


def _eers(scores: np.ndarray, labels: np.ndarray, kinds: np.ndarray) -> dict[str, float]:
    out = {"pooled": eer(scores[labels], scores[~labels])[0]}
    for kind in sorted(set(kinds)):
        mine = kinds == kind
        if (labels & mine).any() and (~labels & mine).any():
            out[str(kind)] = eer(scores[mine & labels], scores[mine & ~labels])[0]
    return out


def fit_fusion(
    members: Sequence[Bundle],
    utts: Sequence[Utterance],
    channels: Sequence[str],
    *,
    threads: int | None = None,
    progress: bool = False,
    seed: int = 0,
) -> FusionFit:
    """Score ``utts`` through ``channels`` with every member and fit the fusion."""
    if len(members) < 2:
        raise ValueError("a fusion needs at least two bundles")
    samples = {m.input_samples for m in members}
    if len(samples) != 1:
        raise ValueError(f"the bundles take windows of different lengths: {sorted(samples)}")
    columns, kinds = [], None
    for bundle in members:
        runtime = open_runtime(bundle, "onnx", threads=threads)
        per_channel, measured = score_channels(
            lambda x, r=runtime: r(x)[1], utts, bundle.input_samples, channels, progress=progress
        )
        columns.append(np.concatenate([per_channel[ch] for ch in channels]))
        kinds = kinds or [k for ch in channels for k in measured[ch]]
    parts = np.stack(columns, axis=1).astype(np.float64)
    labels = np.array([u.is_bonafide for _ in channels for u in utts])
    clip = np.array([i for _ in channels for i in range(len(utts))])
    kinds = np.asarray(kinds)

    weights, bias = regression(parts, labels)
    fused = bias + parts @ weights
    figures = {m.name: _eers(parts[:, i], labels, kinds) for i, m in enumerate(members)}
    figures["fusion (in-sample)"] = _eers(fused, labels, kinds)
    figures["fusion (cross-fitted)"] = _eers(
        cross_fitted(parts, labels, clip, seed=seed), labels, kinds
    )
    calibration = fit_channels(fused, labels, kinds)
    return FusionFit(tuple(map(float, weights)), bias, calibration, figures, len(labels))


def fuse_bundles(
    paths: Sequence[str | Path],
    utts: Sequence[Utterance],
    channels: Sequence[str],
    out: str | Path,
    *,
    name: str = "fusion",
    data: Mapping[str, Any],
    threads: int | None = None,
    progress: bool = False,
    seed: int = 0,
    command: str | None = None,
) -> tuple[Bundle, FusionFit]:
    """Fit a fusion of the bundles at ``paths`` on ``utts`` through ``channels`` and write it as
    a bundle at ``out``; ``data`` (what the clips are) goes into its card."""
    members = [load_bundle(p) for p in paths]
    if any(m.architecture == ARCHITECTURE for m in members):
        raise ValueError("a fusion cannot hold another fusion: fuse its members instead")
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        names = [f"{n}-{i}" for i, n in enumerate(names)]
    fit = fit_fusion(members, utts, channels, threads=threads, progress=progress, seed=seed)
    model = combine(
        [m.build_torch() for m in members],
        [Member(n, m.architecture, m.config) for n, m in zip(names, members, strict=True)],
        fit.weights,
        fit.bias,
    )
    provenance = {
        "trained_by": "voicescreen fuse",
        "members": [
            {
                "name": n,
                "architecture": m.architecture,
                "source": str(m.source),
                "onnx_sha256": m.card["files"]["model.onnx"]["sha256"],
            }
            for n, m in zip(names, members, strict=True)
        ],
    }
    if command:
        provenance["command"] = command
    # A member without encoder reuse runs on its own graph when served member by member
    # (runtimes/members.py): keep its float graph (the same weights), so that serving exports
    # nothing.
    graphs = {
        member_graph_file(i): m.files[ONNX_FILE]
        for i, m in enumerate(members)
        if not get_architecture(m.architecture).reuse and not m.quantized
    }
    bundle = export_bundle(
        model,
        out,
        architecture=ARCHITECTURE,
        config=model.config.to_dict(),
        name=name,
        threshold=fit.calibration.pooled.threshold,
        scale=fit.calibration.pooled.scale,
        channels=fit.calibration.channels,
        provenance=provenance,
        training={
            "fusion": fit.to_dict(),
            "data": dict(data),
            "clips": len(utts),
            "channels": list(channels),
            "calibration": fit.calibration.to_dict(),
        },
        metrics={"validation": fit.figures},
        extra_files=graphs,
    )
    return bundle, fit
