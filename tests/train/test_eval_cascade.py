"""``voicescreen eval --screen``: what a cascade (``serve --screen SCREEN --band B``) would decide
on a corpus, band by band, next to each model alone: the rule by hand, then the real command on
two real bundles."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from voicescreen.models.bundle import load_bundle
from voicescreen.runtimes import open_runtime
from voicescreen.train.calibrate import score_channels
from voicescreen.train.data import Utterance, load_split
from voicescreen.train.evaluate import cascade_figures
from voicescreen.train.fusion import cross_fitted
from voicescreen.train.metrics import eer

CHANNELS = ("clean", "mulaw")
REPO = Path(__file__).resolve().parents[2]


def _utts(labels: list[bool]) -> list[Utterance]:
    return [
        Utterance("S", f"c{i}", "-" if bona else "A01", "bonafide" if bona else "spoof", None)
        for i, bona in enumerate(labels)
    ]


def test_the_cascade_takes_the_screen_outside_the_band_and_the_expert_inside():
    labels = [True, True, True, False, False, False]
    expert = np.array([2.0, 1.5, -0.5, -2.0, -1.0, -3.0])  # one human rejected
    screen = np.array([3.0, 0.2, 0.4, -0.3, 5.0, -4.0])  # a spoof accepted with confidence
    utts = _utts(labels)
    got = cascade_figures(utts, expert, screen, [0.0, 0.5, 10.0], ["a", "b", "a", "b", "a", "b"])

    # Band 0: the screen alone (no screen score is exactly 0); band 10: the expert alone.
    assert got["bands"][0]["escalated"] == 0.0
    assert got["bands"][0]["eer"] == got["screen_alone"]["eer"]
    assert got["bands"][2]["escalated"] == 1.0
    assert got["bands"][2]["eer"] == got["expert_alone"]["eer"]
    # Band 0.5: rows 1, 2 and 3 (|0.2|, |0.4|, |-0.3|) go to the expert.
    mixed = np.array([3.0, 1.5, -0.5, -2.0, 5.0, -4.0])
    middle = got["bands"][1]
    assert middle["escalated"] == pytest.approx(3 / 6)
    assert middle["eer"] == eer(mixed[:3], mixed[3:])[0]
    assert middle["bonafide_accepted"] == pytest.approx(2 / 3)  # row 2: the expert's -0.5
    assert middle["spoof_rejected"] == pytest.approx(2 / 3)  # row 4: the screen's 5.0
    per = middle["eer_per_channel"]
    assert per["a"] == eer(mixed[[0, 2]], mixed[[4]])[0]
    assert per["b"] == eer(mixed[[1]], mixed[[3, 5]])[0]
    assert got["screen_alone"]["spoof_rejected"] == pytest.approx(2 / 3)
    assert got["expert_alone"]["bonafide_accepted"] == pytest.approx(2 / 3)


def test_eval_with_a_screen_reports_each_band_from_the_command_line(
    export_aasist_l, gmm_bundle, small_corpus, tmp_path
):
    expert_path = export_aasist_l(name="aasist-l").source
    # The windows scored independently, each model judged at its own calibration; the middle
    # band sends about half of them to the expert.
    utts = load_split(small_corpus, "eval")
    calibrated = {}
    for path in (expert_path, gmm_bundle):
        bundle = load_bundle(path)
        runtime = open_runtime(bundle, "onnx")
        per_channel, kinds = score_channels(
            lambda x, r=runtime: r(x)[1], utts, bundle.input_samples, CHANNELS
        )
        raw = np.concatenate([per_channel[c] for c in CHANNELS])
        kind = [k for c in CHANNELS for k in kinds[c]]
        calibrated[path] = np.array(
            [bundle.score.for_channel(k)[0].calibrate(x) for k, x in zip(kind, raw, strict=True)]
        )
    expert, screen = calibrated[expert_path], calibrated[gmm_bundle]
    labels = np.array([u.is_bonafide for u in utts] * len(CHANNELS))
    near = np.sort(np.abs(screen))  # a band halfway between two scores: no window on its edge
    band = float((near[len(near) // 2 - 1] + near[len(near) // 2]) / 2)

    out = tmp_path / "eval"
    proc = subprocess.run(
        [sys.executable, "-m", "voicescreen", "eval", "--bundle", str(expert_path),
         "--screen", str(gmm_bundle), "--bands", f"0,{band!r},1e12",
         "--data-root", str(small_corpus), "--split", "eval", "--channels", ",".join(CHANNELS),
         "--out", str(out), "--no-progress"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = [x for x in proc.stdout.splitlines() if x.startswith("cascade ")]
    assert len(lines) == 3 and "expert on" in lines[1]

    cascade = json.loads((out / "metrics.json").read_text())["cascade"]
    assert cascade["screen"]["architecture"] == "lfcc-gmm"
    assert cascade["expert_alone"]["eer"] == pytest.approx(eer(expert[labels], expert[~labels])[0])
    assert cascade["screen_alone"]["eer"] == pytest.approx(eer(screen[labels], screen[~labels])[0])
    by_band = {b["band"]: b for b in cascade["bands"]}
    assert by_band[1e12]["escalated"] == 1.0
    assert by_band[0.0]["escalated"] == 0.0
    mixed = np.where(np.abs(screen) <= band, expert, screen)
    middle = by_band[band]
    assert 0.3 < middle["escalated"] < 0.7
    assert middle["escalated"] == pytest.approx(np.mean(np.abs(screen) <= band))
    assert middle["eer"] == pytest.approx(eer(mixed[labels], mixed[~labels])[0])
    assert middle["bonafide_accepted"] == pytest.approx(np.mean(mixed[labels] >= 0))
    assert middle["spoof_rejected"] == pytest.approx(np.mean(mixed[~labels] < 0))
    assert set(middle["eer_per_channel"]) == set(CHANNELS)
    report = (out / "report.md").read_text()
    assert "## Cascade" in report and f"cascade, band {band:g}" in report
    with open(out / "scores.csv", newline="") as f:  # both models' scores, window by window
        table = list(csv.DictReader(f))
    assert [r["channel"] for r in table] == [c for c in CHANNELS for _ in utts]
    got = np.array([float(r["screen_calibrated"]) for r in table])
    np.testing.assert_allclose(got, screen, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        [float(r["calibrated"]) for r in table], expert, rtol=1e-6, atol=1e-6
    )

    # scripts/fusion_from_scores.py fits voicescreen fuse's regression on those columns
    raw = np.array([[float(r["score"]), float(r["screen_score"])] for r in table])
    fused = cross_fitted(
        raw, labels, np.array([f"{out / 'scores.csv'}:{r['file']}" for r in table])
    )
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "fusion_from_scores.py"), str(out / "scores.csv")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (row,) = [x for x in proc.stdout.splitlines() if x.startswith("| fusion |")]
    assert row.split("|")[2].strip() == f"{100 * eer(fused[labels], fused[~labels])[0]:.1f} %"

    # a third model's scores of the same windows, joined with '+' and fused with a chosen pair
    third = np.random.default_rng(1).normal(size=len(table)) + labels
    rows = [{**r, "score": repr(float(x))} for r, x in zip(table, third, strict=True)]
    joined = tmp_path / "third.csv"
    with open(joined, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(rows[::-1])  # in another order: joined by file and channel
    spec = f"{out / 'scores.csv'}+{joined}"
    pair = cross_fitted(
        np.stack([raw[:, 1], third], axis=1), labels,
        np.array([f"{spec}:{r['file']}" for r in table]),
    )  # fmt: skip
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "fusion_from_scores.py"), spec,
         "--names", "aasist,gmm,third", "--fuse", "gmm,third"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "x gmm" in proc.stdout and "x third" in proc.stdout and "x aasist" not in proc.stdout
    got = {x.split("|")[1].strip(): x.split("|")[2].strip() for x in proc.stdout.splitlines()[3:]
           if x.startswith("| ") and not x.startswith("| |")}  # fmt: skip
    assert got["third"] == f"{100 * eer(third[labels], third[~labels])[0]:.1f} %"
    assert got["fusion"] == f"{100 * eer(pair[labels], pair[~labels])[0]:.1f} %"
    proc = subprocess.run(  # and per attack: each attack's spoofs against every bona fide window
        [sys.executable, str(REPO / "scripts" / "fusion_from_scores.py"), spec,
         "--names", "aasist,gmm,third", "--fuse", "gmm,third", "--by-attack"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    attack = np.array([r["attack"] for r in table])
    attacks = sorted(set(attack[~labels]))
    assert len(attacks) >= 2
    lines = proc.stdout.splitlines()
    assert "| | " + " | ".join(attacks) + " |" in lines
    per_attack = [x for x in lines if x.startswith("| fusion |")][1].split("|")[2:-1]
    for a, got_a in zip(attacks, per_attack, strict=True):
        m = labels | (attack == a)
        assert got_a.strip() == f"{100 * eer(pair[m & labels], pair[m & ~labels])[0]:.1f} %"
    with open(joined, "w", newline="") as f:  # a window missing: refused, not misaligned
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(rows[1:])
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "fusion_from_scores.py"), spec,
         "--names", "aasist,gmm,third"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0 and "not the same windows" in proc.stderr


def test_eval_refuses_bad_bands(gmm_bundle, small_corpus, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "voicescreen", "eval", "--bundle", str(gmm_bundle),
         "--screen", str(gmm_bundle), "--bands", "1,-2", "--data-root", str(small_corpus),
         "--split", "eval", "--out", str(tmp_path / "e"), "--no-progress"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "--bands takes numbers >= 0" in proc.stderr and "Traceback" not in proc.stderr
