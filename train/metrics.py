"""Detection metrics of a countermeasure (CM): EER, DET curve, and the ASVspoof 2019 min t-DCF.

Scores: higher means more bona fide. Rates are fractions, not percentages.

The tandem detection cost function follows Kinnunen et al., "t-DCF: a Detection Cost Function for
the Tandem Assessment of Spoofing Countermeasures and Automatic Speaker Verification" (Odyssey
2018) with the ASVspoof 2019 cost model; the ASV system is the organisers', fixed at its own EER
threshold, read from their score file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class CostModel:
    """The ASVspoof 2019 t-DCF parameters."""

    p_spoof: float = 0.05
    p_target: float = 0.95 * 0.99
    p_nontarget: float = 0.95 * 0.01
    c_miss_asv: float = 1.0
    c_fa_asv: float = 10.0
    c_miss_cm: float = 1.0
    c_fa_cm: float = 10.0


def det_curve(bonafide: np.ndarray, spoof: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Miss (bona fide rejected) and false-alarm (spoof accepted) rates at every threshold.

    A trial is accepted when its score is >= the threshold. Point 0 accepts everything (miss 0,
    false alarm 1); point k rejects the k lowest-scoring trials.
    """
    bonafide = np.asarray(bonafide, dtype=np.float64)
    spoof = np.asarray(spoof, dtype=np.float64)
    if bonafide.size == 0 or spoof.size == 0:
        raise ValueError("need at least one bona fide and one spoof score")
    scores = np.concatenate([bonafide, spoof])
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf")
    is_bona = np.concatenate([np.ones(bonafide.size), np.zeros(spoof.size)])
    order = np.argsort(scores, kind="mergesort")
    is_bona = is_bona[order]
    # Moving the threshold just above the k-th lowest score rejects the k lowest trials.
    bona_rejected = np.cumsum(is_bona)
    spoof_rejected = np.arange(1, scores.size + 1) - bona_rejected
    miss = np.concatenate([[0.0], bona_rejected / bonafide.size])
    false_alarm = np.concatenate([[1.0], (spoof.size - spoof_rejected) / spoof.size])
    # The threshold of point k lies between the k-th and (k+1)-th lowest scores, so that
    # accepting scores >= it gives exactly those rates (ties aside).
    s = scores[order]
    thresholds = np.concatenate([[s[0] - 1e-3], (s[:-1] + s[1:]) / 2, [s[-1] + 1e-3]])
    return miss, false_alarm, thresholds


def eer(bonafide: np.ndarray, spoof: np.ndarray) -> tuple[float, float]:
    """Equal error rate and its threshold: where miss and false-alarm rates are closest
    (their mean there), as the ASVspoof evaluation scripts compute it."""
    miss, fa, thresholds = det_curve(bonafide, spoof)
    i = int(np.argmin(np.abs(miss - fa)))
    return float((miss[i] + fa[i]) / 2), float(thresholds[i])


def rates_at(bonafide: np.ndarray, spoof: np.ndarray, threshold: float) -> dict[str, float]:
    """Acceptance rates at a fixed threshold (accept = score >= threshold)."""
    bonafide, spoof = np.asarray(bonafide), np.asarray(spoof)
    return {
        "bonafide_accepted": float(np.mean(bonafide >= threshold)),
        "spoof_rejected": float(np.mean(spoof < threshold)),
    }


@dataclass(frozen=True)
class AsvScores:
    target: np.ndarray
    nontarget: np.ndarray
    spoof: np.ndarray


def read_asv_scores(path: str | Path) -> AsvScores:
    """The organisers' ASV score file: lines ``SOURCE KEY SCORE``, KEY target|nontarget|spoof."""
    keys, scores = [], []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3 or parts[1] not in ("target", "nontarget", "spoof"):
            raise ValueError(f"{path}:{number}: expected 'SOURCE target|nontarget|spoof SCORE'")
        keys.append(parts[1])
        scores.append(float(parts[2]))
    k, s = np.array(keys), np.array(scores)
    return AsvScores(s[k == "target"], s[k == "nontarget"], s[k == "spoof"])


def asv_error_rates(asv: AsvScores) -> tuple[float, float, float]:
    """ASV false-alarm, miss, and spoof-miss rates at the ASV system's own EER threshold."""
    _, threshold = eer(asv.target, asv.nontarget)
    p_fa = float(np.mean(asv.nontarget >= threshold))
    p_miss = float(np.mean(asv.target < threshold))
    p_miss_spoof = float(np.mean(asv.spoof < threshold))
    return p_fa, p_miss, p_miss_spoof


def tdcf_curve(
    bonafide: np.ndarray, spoof: np.ndarray, asv: AsvScores, cost: CostModel = CostModel()
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised t-DCF at every CM threshold, and the thresholds.

    t-DCF(s) = C1 · P_miss_cm(s) + C2 · P_fa_cm(s), normalised by min(C1, C2), where
    C1 = P_tar (C_miss_cm − C_miss_asv · P_miss_asv) − P_non · C_fa_asv · P_fa_asv and
    C2 = C_fa_cm · P_spoof · (1 − P_miss_spoof_asv). Values above 1 mean a useless CM.
    """
    p_fa_asv, p_miss_asv, p_miss_spoof_asv = asv_error_rates(asv)
    c1 = (
        cost.p_target * (cost.c_miss_cm - cost.c_miss_asv * p_miss_asv)
        - cost.p_nontarget * cost.c_fa_asv * p_fa_asv
    )
    c2 = cost.c_fa_cm * cost.p_spoof * (1 - p_miss_spoof_asv)
    if c1 <= 0 or c2 <= 0:
        raise ValueError(f"t-DCF weights must be positive (C1={c1:.4g}, C2={c2:.4g})")
    miss, fa, thresholds = det_curve(bonafide, spoof)
    return (c1 * miss + c2 * fa) / min(c1, c2), thresholds


def min_tdcf(
    bonafide: np.ndarray, spoof: np.ndarray, asv: AsvScores, cost: CostModel = CostModel()
) -> float:
    """The ASVspoof 2019 minimum normalised t-DCF."""
    curve, _ = tdcf_curve(bonafide, spoof, asv, cost)
    return float(curve.min())
