import numpy as np
import pytest

from voicescreen.train.metrics import (
    AsvScores,
    asv_error_rates,
    det_curve,
    eer,
    min_tdcf,
    rates_at,
    read_asv_scores,
    tdcf_curve,
)


def test_eer_hand_computed_cases():
    assert eer([2.0, 3.0], [0.0, 1.0])[0] == 0.0
    # sorted: s0 b1 s2 b3 -> best point rejects {s0, b1}: miss 1/2, fa 1/2
    assert eer([1.0, 3.0], [0.0, 2.0])[0] == 0.5
    # 4 bona fide, 4 spoof, one of each on the wrong side: miss = fa = 1/4
    value, threshold = eer([0.5, 2, 3, 4], [-1, 0, 1, 2.5])
    assert value == 0.25
    assert rates_at([0.5, 2, 3, 4], [-1, 0, 1, 2.5], threshold) == {
        "bonafide_accepted": 0.75,
        "spoof_rejected": 0.75,
    }


def test_det_curve_end_points_and_monotonicity():
    rng = np.random.default_rng(0)
    bona, spoof = rng.normal(1, 1, 300), rng.normal(-1, 1, 500)
    miss, fa, thr = det_curve(bona, spoof)
    assert (miss[0], fa[0], miss[-1], fa[-1]) == (0, 1, 1, 0)
    assert np.all(np.diff(miss) >= 0) and np.all(np.diff(fa) <= 0)
    # each point's threshold reproduces its rates
    for k in (1, 100, 400, 799):
        r = rates_at(bona, spoof, thr[k])
        assert r["bonafide_accepted"] == pytest.approx(1 - miss[k])
        assert r["spoof_rejected"] == pytest.approx(1 - fa[k])
    # Gaussian classes 2 sigma apart: EER = Phi(-1) = 15.9 %, within sampling error
    assert eer(bona, spoof)[0] == pytest.approx(0.159, abs=0.03)


def test_min_tdcf_bounds():
    asv = AsvScores(np.array([3.0, 4, 5, 6]), np.array([0.0, 1, 2, 3.5]), np.array([1.0, 2, 4]))
    p_fa, p_miss, p_miss_spoof = asv_error_rates(asv)
    assert (p_fa, p_miss) == (0.25, 0.25)
    assert p_miss_spoof == pytest.approx(2 / 3)
    # a perfect countermeasure costs nothing; a useless one costs 1 (the better trivial CM)
    assert min_tdcf([5.0, 6, 7], [0.0, 1, 2], asv) == 0.0
    assert min_tdcf([0.0, 1, 2], [5.0, 6, 7], asv) == pytest.approx(1.0)
    curve, _ = tdcf_curve([1.0, 2, 5], [0.0, 3, 4], asv)
    assert curve.min() <= 1.0 + 1e-12


def test_organisers_asv_scores_give_the_published_asv_eer(reference_dir):
    """The ASVspoof 2019 LA evaluation plan reports the organisers' ASV system at 2.43 % EER on
    dev and 2.48 % on eval (target vs zero-effort impostors)."""
    for split, published in (("dev", 0.0243), ("eval", 0.0248)):
        path = reference_dir / "asvspoof2019" / f"ASVspoof2019.LA.asv.{split}.gi.trl.scores.txt"
        asv = read_asv_scores(path)
        assert eer(asv.target, asv.nontarget)[0] == pytest.approx(published, abs=0.0006)
