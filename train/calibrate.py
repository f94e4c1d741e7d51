"""Calibration: raw scores -> ``scale * (score - threshold)``, over all audio and per channel.

The threshold is the equal-error-rate threshold of labelled scores, the scale the slope of a
logistic regression of the labels on the centred scores, so that the calibrated score reads as a
log-odds and 0 is the decision threshold. A model scores telephone audio differently from
wideband audio, so one threshold for both leaves one of them badly placed: a bundle also carries
a calibration per channel (``audio.CHANNELS``: ``wideband``, ``narrowband``), fitted on the
scores of that kind of audio alone, and the server, the monitor and ``score`` pick the one that
matches a stream's declared format or a file's measured bandwidth.

Calibration data: each clip's first window through each calibration channel of ``train.augment``
(``clean``, ``mulaw``, ``mobile``, ...), counted as the kind of audio that window is measured to
be (``audio.measure_channel``: a G.711 round trip is narrowband; a clean window is what its
recording is). A kind gets its own calibration only with at least ``MIN_SCORES`` bona fide and
``MIN_SCORES`` spoof scores.

    voicescreen calibrate --bundle B --data-root D --extra-dev E --channels clean,mulaw,mobile \\
        --out B2
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from voicescreen.audio import CHANNELS
from voicescreen.models.bundle import Calibration
from voicescreen.runtimes import open_runtime
from voicescreen.train.data import Utterance
from voicescreen.train.metrics import eer, rates_at

log = logging.getLogger(__name__)

MIN_SCORES = 10  # bona fide and spoof scores each, for a kind of audio to get its own calibration


def fit_scale(centred: np.ndarray, labels: np.ndarray) -> float:
    """The slope of a logistic regression of the labels on the centred scores (1.0 if the fit
    gives no positive slope)."""
    from sklearn.linear_model import LogisticRegression

    if centred.std() == 0:
        return 1.0
    lr = LogisticRegression(C=1e4, fit_intercept=False)
    lr.fit(centred.reshape(-1, 1), labels.astype(int))
    slope = float(lr.coef_[0, 0])
    return slope if math.isfinite(slope) and slope > 0 else 1.0


def fit(scores: np.ndarray, labels: np.ndarray) -> Calibration:
    """The EER threshold of ``scores`` (labels: True = bona fide) and the logistic scale."""
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels, bool)
    _, threshold = eer(scores[labels], scores[~labels])
    return Calibration(float(threshold), fit_scale(scores - threshold, labels))


@dataclass(frozen=True)
class Fitted:
    """The calibrations fitted on one set of scores: ``pooled`` over everything, one per kind
    of audio that had enough scores, the counts (bona fide, spoof) of every kind seen, and per
    kind its EER and the rates at the pooled threshold and at its own (in-sample: on the scores
    the thresholds were fitted on)."""

    pooled: Calibration
    channels: dict[str, Calibration]
    counts: dict[str, tuple[int, int]]
    figures: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pooled": self.pooled.to_dict(),
            "channels": {k: c.to_dict() for k, c in self.channels.items()},
            "counts": {k: {"bonafide": b, "spoof": s} for k, (b, s) in self.counts.items()},
            "figures": self.figures,
            "min_scores": MIN_SCORES,
        }


def fit_channels(scores: np.ndarray, labels: np.ndarray, kinds: Sequence[str]) -> Fitted:
    """Fit the pooled calibration and, for each kind of audio in ``kinds`` (one per score) with
    at least ``MIN_SCORES`` scores of each class, its own."""
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels, bool)
    kinds = np.asarray(kinds)
    if not (scores.shape == labels.shape == kinds.shape):
        raise ValueError(
            f"scores, labels and kinds differ in shape: {scores.shape}, "
            f"{labels.shape}, {kinds.shape}"
        )
    pooled = fit(scores, labels)
    channels, counts, figures = {}, {}, {}
    for kind in CHANNELS:
        mine = kinds == kind
        if not mine.any():
            continue
        bona, spoof = int((labels & mine).sum()), int((~labels & mine).sum())
        counts[kind] = (bona, spoof)
        if min(bona, spoof) >= MIN_SCORES:
            channels[kind] = own = fit(scores[mine], labels[mine])
            b, s = scores[mine & labels], scores[mine & ~labels]
            figures[kind] = {
                "eer": eer(b, s)[0],
                **{f"{k}_at_pooled": v for k, v in rates_at(b, s, pooled.threshold).items()},
                **{f"{k}_at_own": v for k, v in rates_at(b, s, own.threshold).items()},
            }
        else:
            log.warning(
                "%s audio: %d bona fide and %d spoof scores, under %d each: no calibration of "
                "its own (the pooled one stands in)",
                kind,
                bona,
                spoof,
                MIN_SCORES,
            )
    return Fitted(pooled, channels, counts, figures)


def score_channels(
    score_fn: Callable[[np.ndarray], np.ndarray],
    utts: Sequence[Utterance],
    samples: int,
    channels: Sequence[str],
    *,
    progress: bool = False,
) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """Raw scores of each utterance's first window through each channel (``train.evaluate``'s
    windows), and the kind of audio each of those windows is measured to be."""
    from voicescreen.train.evaluate import score_utterances

    scores, kinds = {}, {}
    for ch in channels:
        kinds[ch] = []
        scores[ch] = score_utterances(
            score_fn,
            utts,
            samples,
            ch,
            progress=progress,
            desc=f"calibrate ({ch})",
            kinds=kinds[ch],
        )
    return scores, kinds


def fit_scored(
    utts: Sequence[Utterance],
    scores: Mapping[str, np.ndarray],
    kinds: Mapping[str, Sequence[str]],
) -> Fitted:
    """``fit_channels`` over the scores of every channel of ``score_channels``."""
    names = list(scores)
    labels = np.array([u.is_bonafide for u in utts] * len(names))
    return fit_channels(
        np.concatenate([scores[ch] for ch in names]),
        labels,
        [k for ch in names for k in kinds[ch]],
    )


def recalibrate(
    bundle_path: str | Path,
    utts: Sequence[Utterance],
    channels: Sequence[str],
    out: str | Path,
    *,
    data: Mapping[str, Any],
    threads: int | None = None,
    progress: bool = False,
) -> tuple[Path, Fitted]:
    """A copy of the bundle at ``out`` calibrated on ``utts`` through ``channels``: pooled (the
    card's ``threshold``/``scale``) and per kind of audio (``score.channels``), the rest of the
    card and every other file unchanged; ``data`` (what the clips are) goes into the card's
    ``calibration`` record. Scored by the bundle's own ONNX graph."""
    from voicescreen.models.bundle import CARD_FILE, load_bundle, write_bundle

    bundle = load_bundle(bundle_path)
    runtime = open_runtime(bundle, "onnx", threads=threads)
    scores, kinds = score_channels(
        lambda x: runtime(x)[1], utts, bundle.input_samples, channels, progress=progress
    )
    fitted = fit_scored(utts, scores, kinds)
    card = dict(bundle.card)
    spec = bundle.score
    card["score"] = {
        **card["score"],
        "threshold": fitted.pooled.threshold,
        "scale": fitted.pooled.scale,
        "channels": {k: c.to_dict() for k, c in fitted.channels.items()},
    }
    card["calibration"] = {
        "data": dict(data),
        "clips": len(utts),
        "channels": list(channels),
        "fitted": fitted.to_dict(),
        "was": spec.to_dict(),
    }
    card.pop("files", None)
    files = {k: v for k, v in bundle.files.items() if k != CARD_FILE}
    write_bundle(out, card, files)
    return Path(out), fitted
