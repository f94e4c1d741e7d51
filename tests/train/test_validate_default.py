"""train/validate.py: the figures candidates for the default bundle are chosen on.

Unit: ``validation_figures`` on hand-made scores, every threshold rule checked against values
worked out here. End to end: scripts/validate_default.py's command line on a real bundle, a small
corpus and a held-out corpus, against the bundle's own scores of the same clips."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from voicescreen.train import validate as vd
from voicescreen.train.data import Utterance, load_split
from voicescreen.train.metrics import eer

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def utt(speaker: str, file: str, attack: str = "-") -> Utterance:
    label = "bonafide" if attack == "-" else "spoof"
    return Utterance(speaker, file, attack, label, Path(f"/nowhere/{file}.flac"))


# One shared voice (JUNE) with A01 spoofs of it, one held-out voice (KTU_DE, files XT_*) with a
# Griffin-Lim spoof, and a spoof of no voice (SYS_A02), as the corpora have.
UTTS = [
    utt("JUNE", "VS_D_1"),
    utt("JUNE", "VS_D_2"),
    utt("JUNE", "VS_D_3", "A01"),
    utt("JUNE", "VS_D_4", "A01"),
    utt("KTU_DE", "XT_1"),
    utt("KTU_DE", "XT_2"),
    utt("KTU_DE", "XT_3", "XGL"),
    utt("SYS_A02", "VS_D_5", "A02"),
]
CLEAN = np.array([3.0, 4.0, 0.0, 1.0, 0.5, 2.0, 1.5, -1.0])
MULAW = CLEAN - 1.5  # the channel costs every clip 1.5
SCORES = {"clean": CLEAN, "mulaw": MULAW}


def test_rates_at_the_card_threshold_are_counted_per_channel_voice_and_attack():
    v = vd.validation_figures(UTTS, SCORES, card_threshold=1.8)
    assert v.clips == 8
    assert v.voices == {"JUNE": 2, "KTU_DE": 2}
    card = v.at["card"]
    assert card.threshold == 1.8
    # bona fide accepted (>= 1.8): clean 3, 4 (June), 2 (KTU_DE); mu-law 2.5 (June) only
    assert card.bonafide_accepted == pytest.approx(4 / 8)
    assert card.held_out_accepted == pytest.approx(1 / 4)
    assert card.per_voice == pytest.approx({"JUNE": 3 / 4, "KTU_DE": 1 / 4})
    assert card.spoof_rejected == 1.0
    assert card.per_attack == {"A01": 1.0, "A02": 1.0, "XGL": 1.0}


def test_eers_pool_the_channels_and_separate_the_held_out_clips():
    v = vd.validation_figures(UTTS, SCORES)
    bona = np.array([u.is_bonafide for u in UTTS])
    pooled = np.concatenate([CLEAN, MULAW])
    both = np.concatenate([bona, bona])
    assert v.eer == pytest.approx(eer(pooled[both], pooled[~both])[0])
    # a shift of every score leaves each channel's own EER as it is
    assert v.eer_per_channel["clean"] == v.eer_per_channel["mulaw"]
    assert v.eer_per_channel["clean"] == pytest.approx(eer(CLEAN[bona], CLEAN[~bona])[0])
    # pooling moves the EER threshold (here not the EER): 0.5 pooled against 1.25 clean alone
    assert v.at["pooled"].threshold == pytest.approx(eer(pooled[both], pooled[~both])[1])
    assert v.at["pooled"].threshold != pytest.approx(eer(CLEAN[bona], CLEAN[~bona])[1])
    # held out: bona fide 0.5, 2, -1, 0.5 against the XGL spoof's 1.5, 0
    assert v.eer_held_out == pytest.approx(eer(np.array([0.5, 2, -1, 0.5]), np.array([1.5, 0]))[0])
    assert "card" not in v.at


def test_dev_threshold_comes_from_the_shared_clips_only():
    v = vd.validation_figures(UTTS, SCORES)
    # the shared clips separate perfectly (bona fide >= 1.5, spoofs <= 1), the held-out ones do
    # not: at the shared clips' EER threshold all of June is accepted and every A01/A02 rejected
    dev = v.at["dev"]
    assert 1.0 < dev.threshold <= 1.5
    assert dev.per_voice["JUNE"] == 1.0
    assert dev.per_attack["A01"] == dev.per_attack["A02"] == 1.0


def test_leave_one_voice_out_judges_each_voice_at_a_threshold_set_without_it():
    v = vd.validation_figures(UTTS, SCORES)
    lovo = v.at["lovo"]
    assert lovo.threshold is None
    june_bona = np.array([3.0, 4.0, 1.5, 2.5])
    june_spoof = np.array([0.0, 1.0, -1.5, -0.5])
    ktu_bona = np.array([0.5, 2.0, -1.0, 0.5])
    ktu_spoof = np.array([1.5, 0.0])
    sys_spoof = np.array([-1.0, -2.5])
    # June's clips at the threshold of the rest (KTU_DE and the voiceless spoof), and back
    t_june = eer(ktu_bona, np.concatenate([ktu_spoof, sys_spoof]))[1]
    t_ktu = eer(june_bona, np.concatenate([june_spoof, sys_spoof]))[1]
    assert lovo.per_voice["JUNE"] == pytest.approx(np.mean(june_bona >= t_june))
    assert lovo.per_voice["KTU_DE"] == pytest.approx(np.mean(ktu_bona >= t_ktu))
    assert lovo.per_attack["A01"] == pytest.approx(np.mean(june_spoof < t_june))
    assert lovo.per_attack["XGL"] == pytest.approx(np.mean(ktu_spoof < t_ktu))
    # the spoof of no voice is judged at the pooled threshold
    t_pooled = v.at["pooled"].threshold
    assert lovo.per_attack["A02"] == pytest.approx(np.mean(sys_spoof < t_pooled))


@pytest.fixture(scope="module")
def held_out_corpus(tmp_path_factory, data_dir: Path) -> Path:
    """A corpus whose dev split is one voice the bundle never heard: files XT_*, speaker
    KTU_XX, links to real bona fide and spoof clips."""
    root = tmp_path_factory.mktemp("held-out")
    (root / "flac").mkdir()
    (root / "protocols").mkdir()
    utts = load_split(data_dir, "train")
    picked = [u for u in utts if u.is_bonafide][-2:] + [u for u in utts if u.attack == "A03"][:2]
    lines = []
    for i, u in enumerate(picked):
        name = f"XT_{i:04d}"
        (root / "flac" / f"{name}.flac").symlink_to(u.path)
        kind = "- bonafide" if u.is_bonafide else "XGL spoof"
        lines.append(f"KTU_XX {name} - {kind}")
    (root / "protocols" / "VS.cm.dev.trl.txt").write_text("\n".join(lines) + "\n")
    return root


def test_command_line_on_a_bundle_writes_the_figures_of_its_scores(
    tmp_path, small_corpus, held_out_corpus, gmm_bundle
):
    out = tmp_path / "val"
    p = subprocess.run(
        [
            sys.executable,
            str(SCRIPTS / "validate_default.py"),
            "--bundle",
            str(gmm_bundle),
            "--data-root",
            str(small_corpus),
            "--extra",
            str(held_out_corpus),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    assert "At the card threshold" in p.stdout and "KTU_XX" in p.stdout
    written = json.loads((out / "validation.json").read_text())
    assert written["channels"] == ["clean", "mulaw", "mobile"]
    figures = written["models"][str(gmm_bundle)]

    utts = vd.validation_set(small_corpus, [held_out_corpus])
    assert [u.file for u in utts[-4:]] == ["XT_0000", "XT_0001", "XT_0002", "XT_0003"]
    assert figures["clips"] == len(utts) == len(load_split(small_corpus, "dev")) + 4
    assert figures["voices"]["KTU_XX"] == 2
    scores, threshold = vd.bundle_scores(gmm_bundle, utts)
    assert figures["at"]["card"]["threshold"] == pytest.approx(threshold)
    # the held-out voice's acceptance, counted here from the bundle's own scores
    held = np.concatenate([scores[ch][-4:-2] for ch in vd.CHANNELS])
    assert figures["at"]["card"]["held_out_accepted"] == pytest.approx(np.mean(held >= threshold))
    assert figures["at"]["card"]["per_voice"]["KTU_XX"] == pytest.approx(np.mean(held >= threshold))
    mine = vd.validation_figures(utts, scores, threshold).to_dict()
    assert figures == json.loads(json.dumps(mine))
