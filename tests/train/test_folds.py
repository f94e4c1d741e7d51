"""Validation that ranks models on what they have not heard: folds that leave whole sources out,
the validation channels, bootstrap intervals, and ``voicescreen eval --folds --by --channels``
end to end."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from voicescreen.train import augment
from voicescreen.train.augment import (
    VALIDATION_CHANNELS,
    channel,
    codec_round_trip,
    describe_channel,
    parse_channel,
)
from voicescreen.train.data import load_split
from voicescreen.train.folds import (
    FoldOptions,
    find_fold,
    fold_utterances,
    known_kinds,
    list_folds,
    parse_folds,
    read_sources,
    write_fold_corpus,
)
from voicescreen.train.grouped import BootstrapOptions, bootstrap, group_figures
from voicescreen.train.metrics import eer

REPO = Path(__file__).resolve().parents[2]

# --- a hand-made corpus v2 ---------------------------------------------------------------------

# file, split, label, system, family, speaker, language, package
CLIPS = [
    ("T1", "train", "bonafide", "-", "human", "ANNA", "en", "pack-a"),
    ("T2", "train", "bonafide", "-", "human", "BRUNO", "fr", "pack-b"),
    ("T3", "train", "bonafide", "-", "human", "CARL", "de", "pack-c"),
    ("T4", "train", "spoof", "espeak", "formant", "ESPEAK_EN", "en", "espeak-ng"),
    ("T5", "train", "spoof", "fest_hts", "hmm", "HTS_CA", "ca", "festvox-ca"),
    ("T6", "train", "spoof", "voc_gl", "vocoder", "ANNA", "en", "pack-a"),
    ("T7", "train", "spoof", "voc_gl", "vocoder", "BRUNO", "fr", "pack-b"),
    ("T8", "train", "spoof", "espeak", "formant", "ESPEAK_FR", "fr", "espeak-ng"),
    ("D1", "dev", "bonafide", "-", "human", "DORA", "en", "pack-a"),
    ("D2", "dev", "bonafide", "-", "human", "EMIL", "de", "pack-d"),
    ("D3", "dev", "spoof", "espeak", "formant", "ESPEAK_DE", "de", "espeak-ng"),
    ("D4", "dev", "spoof", "voc_gl", "vocoder", "DORA", "en", "pack-a"),
    ("D5", "dev", "spoof", "fest_hts", "hmm", "HTS_CA2", "ca", "festvox-ca"),
    ("E1", "eval", "bonafide", "-", "human", "FRED", "en", "pack-e"),
    ("E2", "eval", "spoof", "fest_hts", "hmm", "HTS_CA3", "ca", "festvox-ca"),
    ("E3", "eval", "spoof", "voc_gl", "vocoder", "FRED", "en", "pack-e"),
]
SUFFIX = {"train": "train.trn", "dev": "dev.trl", "eval": "eval.trl"}
HEADER = ("file", "split", "label", "system", "family", "speaker", "language", "package", "channel")


def write_corpus(root: Path, clips=CLIPS, sources: bool = True) -> Path:
    """Protocols, empty audio files (folds never read audio) and, optionally, sources.tsv."""
    (root / "flac").mkdir(parents=True)
    (root / "protocols").mkdir()
    for split, suffix in SUFFIX.items():
        mine = [c for c in clips if c[1] == split]
        lines = [f"{c[5]} {c[0]} - {c[3]} {c[2]}" for c in mine]
        (root / "protocols" / f"CV2.cm.{suffix}.txt").write_text("\n".join(lines) + "\n")
        for c in mine:
            (root / "flac" / f"{c[0]}.flac").touch()
    if sources:
        rows = ["\t".join(HEADER)] + ["\t".join((*c, "pcm")) for c in clips]
        (root / "sources.tsv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "cv2")


FAMILY = {c[0]: c[4] for c in CLIPS}
SPEAKER = {c[0]: c[5] for c in CLIPS}
LANGUAGE = {c[0]: c[6] for c in CLIPS}
PACKAGE = {c[0]: c[7] for c in CLIPS}
LABEL = {c[0]: c[2] for c in CLIPS}
EVAL = {c[0] for c in CLIPS if c[1] == "eval"}


def test_leave_one_family_out_keeps_the_family_out_of_train(corpus):
    fold = find_fold(corpus, "family=hmm")
    assert fold.name == "family=hmm"
    # every hmm clip of train and dev is held out, with the dev split's bona fide clips
    assert set(fold.held_out) == {"T5", "D5", "D1", "D2"}
    assert not any(FAMILY[n] == "hmm" for n in fold.train)
    # no voice of the held-out part in train: DORA's vocoded copy (D4) is left out of both
    assert "D4" not in fold.train and "D4" not in fold.held_out
    assert set(fold.train) == {"T1", "T2", "T3", "T4", "T6", "T7", "T8", "D3"}
    train, held = fold_utterances(corpus, fold)
    assert [u.file for u in train] == sorted(fold.train)
    assert {u.label for u in held} == {"bonafide", "spoof"}


def test_leave_one_package_or_language_out_holds_out_its_voices(corpus):
    fold = find_fold(corpus, "package=pack-a")
    # ANNA and DORA (pack-a) and their vocoded copies; both classes, so no dev filler
    assert set(fold.held_out) == {"T1", "T6", "D1", "D4"}
    assert not {SPEAKER[n] for n in fold.train} & {"ANNA", "DORA"}
    fold = find_fold(corpus, "language=de")
    assert set(fold.held_out) == {"T3", "D2", "D3"}
    assert not any(LANGUAGE[n] == "de" for n in fold.train)


def test_folds_are_deterministic_disjoint_and_never_touch_eval(corpus):
    folds = list_folds(corpus, FoldOptions(("family", "system", "package", "language", "speaker")))
    assert folds == list_folds(corpus, ("family", "system", "package", "language", "speaker"))
    names = [f.name for f in folds]
    assert names[:3] == ["family=formant", "family=hmm", "family=vocoder"]
    assert "family=human" not in names  # family folds hold out spoofs
    assert "package=espeak-ng" not in names  # human kinds hold out groups with bona fide clips
    assert {"language=de", "language=en", "language=fr", "package=pack-a"} <= set(names)
    for f in folds:
        assert not set(f.train) & set(f.held_out), f.name
        assert not (set(f.train) | set(f.held_out)) & EVAL, f.name
        for part in (f.train, f.held_out):
            assert {LABEL[n] for n in part} == {"bonafide", "spoof"}, f.name
        assert list(f.train) == sorted(f.train) and list(f.held_out) == sorted(f.held_out)


def test_a_fold_becomes_a_corpus_to_train_and_calibrate_on(corpus, tmp_path):
    fold = find_fold(corpus, "family=hmm")
    out = write_fold_corpus(corpus, fold, tmp_path / "fold")
    assert [u.file for u in load_split(out, "train")] == list(fold.train)
    assert [u.file for u in load_split(out, "dev")] == list(fold.held_out)
    sources = read_sources(out)
    assert sorted(sources) == sorted(fold.train + fold.held_out)
    assert {sources[n]["split"] for n in fold.held_out} == {"dev"}
    assert sources["T5"]["family"] == "hmm"


def test_a_fold_without_both_classes_is_left_out(tmp_path):
    # a corpus whose only dev clips are spoofs: a family fold would have no bona fide held out
    clips = [c for c in CLIPS if not (c[1] == "dev" and c[2] == "bonafide")]
    clips = [c for c in clips if c[5] != "DORA"]
    root = write_corpus(tmp_path / "c", clips)
    names = [f.name for f in list_folds(root, ["family", "language"])]
    assert not any(n.startswith("family=") for n in names)
    assert "language=en" in names  # en has its own bona fide and spoofs


def test_protocol_only_corpus_folds_by_attack_and_speaker(tmp_path):
    root = write_corpus(tmp_path / "plain", sources=False)
    assert known_kinds(None) == ("family", "system", "speaker")
    folds = parse_folds(root, "family,speaker=ANNA")
    names = [f.name for f in folds]
    assert names[-1] == "speaker=ANNA"  # in the order asked
    assert {"family=espeak", "family=fest_hts", "family=voc_gl"} == set(names[:-1])
    with pytest.raises(ValueError, match="language"):
        list_folds(root, ["language"])
    with pytest.raises(ValueError, match="no clip"):
        find_fold(root, "family=nothing")
    with pytest.raises(ValueError, match="KIND=VALUE"):
        find_fold(root, "hmm")


# --- validation channels -----------------------------------------------------------------------


def test_channel_names_carry_a_bit_rate():
    assert parse_channel("opus@8k") == ("opus", 8000)
    assert parse_channel("opus@24000") == ("opus", 24000)
    assert parse_channel("mulaw") == ("mulaw", None)
    for bad in ("mulaw@8k", "opus@fast", "nothing"):
        with pytest.raises(ValueError):
            parse_channel(bad)
    x = augment.speech_probe(16000, 0.5)
    assert np.array_equal(channel(x, "opus@8k"), codec_round_trip(x, "opus", 8000))
    assert not np.array_equal(channel(x, "opus@8k"), channel(x, "opus@24k"))


def test_validation_channels_all_run_here_and_say_what_ran():
    """CI installs PyAV with FFmpeg's libopus, g722 and libopencore_amrnb: all of them run."""
    x = augment.speech_probe(16000, 0.5)
    for name in VALIDATION_CHANNELS:
        info = describe_channel(name)
        y = channel(x, name)
        assert y.shape == x.shape and np.isfinite(y).all(), name
        if name != "clean":
            assert not np.array_equal(x, y), name
    assert describe_channel("opus@8k")["bit_rate"] == 8000
    assert "libopencore_amrnb" in describe_channel("amr-nb")["implementation"]
    assert "GSM 06.10" in describe_channel("gsm")["codec"]
    assert info["codec"] == "opus"


def test_a_missing_codec_is_refused_not_replaced(monkeypatch):
    monkeypatch.setattr(augment, "av_available", lambda codec: codec != "amr-nb")
    with pytest.raises(RuntimeError, match="amr-nb"):
        describe_channel("amr-nb")
    assert describe_channel("g722")["codec"] == "g722"

    from voicescreen.cli.train import _channels

    assert "amr-nb" not in _channels("validation") and "g722" in _channels("validation")


# --- bootstrap intervals -----------------------------------------------------------------------


def _scores(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scores = np.concatenate([rng.normal(1.0, 1.0, n), rng.normal(-1.0, 1.0, n)])
    return scores, np.arange(2 * n) < n


def test_bootstrap_interval_holds_the_estimate_and_narrows_with_data():
    widths = []
    for n in (40, 400):
        scores, labels = _scores(n)
        figs = bootstrap(scores, labels, 0.0, options=BootstrapOptions(500, seed=1))
        assert figs["eer"].value == pytest.approx(eer(scores[labels], scores[~labels])[0])
        assert figs["bonafide_accepted"].value == pytest.approx(np.mean(scores[labels] >= 0))
        for iv in figs.values():
            assert iv.low <= iv.value <= iv.high
        widths.append({k: iv.high - iv.low for k, iv in figs.items()})
    for k in widths[0]:
        assert widths[1][k] < 0.6 * widths[0][k], k  # ~1/sqrt(10) expected


def test_bootstrap_is_reproducible_from_its_seed():
    scores, labels = _scores(60)
    one = bootstrap(scores, labels, 0.1, options=BootstrapOptions(300, seed=7), key="g")
    assert one == bootstrap(scores, labels, 0.1, options=BootstrapOptions(300, seed=7), key="g")
    other = bootstrap(scores, labels, 0.1, options=BootstrapOptions(300, seed=8), key="g")
    assert one != other
    assert bootstrap(scores, labels, 0.1, options=BootstrapOptions(0))["eer"].low is None


def test_bootstrap_resamples_clips_with_all_their_channels():
    """Two rows per clip that always agree: resampling clips keeps each pair whole, so the
    intervals equal those of one row per clip; resampling rows apart would not."""
    scores, labels = _scores(50)
    opts = BootstrapOptions(300, seed=3)
    alone = bootstrap(scores, labels, 0.0, options=opts)
    twice = bootstrap(
        np.repeat(scores, 2), np.repeat(labels, 2), 0.0, np.repeat(np.arange(100), 2), opts
    )
    for k in alone:
        assert twice[k].value == pytest.approx(alone[k].value)
        assert twice[k].high - twice[k].low == pytest.approx(alone[k].high - alone[k].low, 0.35)


def test_group_of_one_class_is_measured_against_the_other():
    scores, labels = _scores(30)
    clips = np.arange(60)
    groups = {"spoofs-a": np.arange(30, 40), "mixed": np.r_[0:10, 30:40], "none": np.arange(0)}
    out = group_figures(scores, labels, np.zeros(60), clips, groups, BootstrapOptions(100))
    assert list(out) == ["spoofs-a", "mixed"]
    assert out["spoofs-a"]["reference"] == "bonafide" and out["spoofs-a"]["n_bonafide"] == 30
    assert out["mixed"]["reference"] is None and out["mixed"]["n_bonafide"] == 10
    want = eer(scores[:30], scores[30:40])[0]
    assert out["spoofs-a"]["eer"]["value"] == pytest.approx(want)


# --- voicescreen eval, grouped, end to end -----------------------------------------------------

E2E_FAMILY = {"A01": "formant", "A02": "vocoder", "A03": "hmm", "A04": "neural", "A05": "neural"}


@pytest.fixture(scope="module")
def v2_corpus(small_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small corpus with a hand-written sources.tsv: families per attack, languages per
    speaker (the speakers' names end in their language)."""
    root = tmp_path_factory.mktemp("v2") / "corpus"
    (root / "flac").mkdir(parents=True)
    (root / "protocols").mkdir()
    rows = ["\t".join(HEADER)]
    for split in SUFFIX:
        for u in load_split(small_corpus, split):
            (root / "flac" / u.path.name).symlink_to(u.path.resolve())
            family = "human" if u.is_bonafide else E2E_FAMILY[u.attack]
            language = u.speaker.rsplit("_", 1)[-1].lower() if u.is_bonafide else "en"
            package = f"pack-{u.speaker.lower()}" if u.is_bonafide else f"tts-{u.attack}"
            row = (u.file, split, u.label, u.attack, family, u.speaker, language, package, "pcm")
            rows.append("\t".join(row))
    for proto in (small_corpus / "protocols").iterdir():
        (root / "protocols" / proto.name).write_text(proto.read_text())
    (root / "sources.tsv").write_text("\n".join(rows) + "\n")
    return root


def _eval(*argv: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "voicescreen", "eval", "--no-progress", "--bootstrap", "200"]
    done = subprocess.run(
        [*cmd, *argv], capture_output=True, text=True, timeout=300, cwd=REPO.parent
    )
    return done


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_eval_reports_folds_families_languages_and_channels(v2_corpus, gmm_bundle, tmp_path):
    out = tmp_path / "folds"
    done = _eval(
        "--bundle", str(gmm_bundle), "--data-root", str(v2_corpus), "--out", str(out),
        "--folds", "family", "--by", "fold,family,language,channel",
        "--channels", "clean,mulaw,opus@8k",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    meta = json.loads((out / "metrics.json").read_text())
    assert meta["data"]["split"] == "folds"
    assert list(meta["scoring"]["channels"]) == ["clean", "mulaw", "opus@8k"]
    assert meta["scoring"]["channels"]["opus@8k"]["bit_rate"] == 8000
    assert "libopus" in meta["scoring"]["channels"]["opus@8k"]["implementation"]
    assert list(meta["folds"]) == ["family=formant", "family=hmm", "family=vocoder"]
    groups = meta["groups"]
    assert list(groups) == ["fold", "family", "language", "channel"]
    assert list(groups["fold"]) == list(meta["folds"])
    assert set(groups["family"]) == {"formant", "hmm", "vocoder"}  # no eval-only A04/A05
    assert set(groups["language"]) == {"en", "fr"}

    # the held-out parts: every pool clip of the family plus dev's bona fide, never eval
    rows = _csv(out / "scores.csv")
    eval_files = {u.file for u in load_split(v2_corpus, "eval")}
    assert not {r["file"] for r in rows} & eval_files
    assert [r["channel"] for r in rows[:: len(rows) // 3]] == ["clean", "mulaw", "opus@8k"]
    n_clips = len(rows) // 3
    for fold, g in groups["fold"].items():
        family = fold.split("=")[1]
        attack = next(a for a, f in E2E_FAMILY.items() if f == family)
        assert g["n_spoof"] == 3 * 2  # one clip of the attack in train and in dev, 3 channels
        assert g["n_bonafide"] == 3 * 3  # dev's three bona fide clips, 3 channels
        assert g["clips"] == 5
        picked = [r for r in rows if r["label"] == "bonafide" or r["attack"] == attack]
        s = np.array([float(r["score"]) for r in picked])
        is_bona = np.array([r["label"] == "bonafide" for r in picked])
        assert g["eer"]["value"] == pytest.approx(eer(s[is_bona], s[~is_bona])[0])
        for name in ("eer", "bonafide_accepted", "spoof_rejected"):
            assert g[name]["low"] <= g[name]["value"] <= g[name]["high"], (fold, name)
    # each channel's figures are recomputable from the scores, at each row's own threshold
    threshold = meta["bundle"]["threshold"]
    for ch, g in groups["channel"].items():
        mine = [r for r in rows if r["channel"] == ch]
        assert g["clips"] == n_clips == len(mine)
        s = np.array([float(r["score"]) for r in mine])
        is_bona = np.array([r["label"] == "bonafide" for r in mine])
        assert g["eer"]["value"] == pytest.approx(eer(s[is_bona], s[~is_bona])[0])
        if all(r["calibration"] == "pooled" for r in mine):
            accepted = np.mean(s[is_bona] >= threshold)
            assert g["bonafide_accepted"]["value"] == pytest.approx(accepted)
    assert meta["bootstrap"]["resamples"] == 200

    report = (out / "report.md").read_text()
    for heading in ("## Channels", "## Folds", "## By fold", "## By family", "## By language"):
        assert heading in report, heading
    assert "| family=hmm |" in report and "| opus@8k | opus |" in report
    g = groups["channel"]["mulaw"]["eer"]
    cell = f"{100 * g['value']:.1f} % ({100 * g['low']:.1f}–{100 * g['high']:.1f})"
    assert f"| mulaw | 3 | 6 | {cell} |" in report  # dev's 3 bona fide, 6 spoofs


def test_eval_groups_a_split_and_keeps_its_summary(v2_corpus, gmm_bundle, tmp_path):
    out = tmp_path / "eval"
    base = ["--bundle", str(gmm_bundle), "--data-root", str(v2_corpus)]
    done = _eval(*base, "--out", str(out), "--split", "eval", "--by", "family,channel,attack")
    assert done.returncode == 0, done.stderr[-3000:]
    meta = json.loads((out / "metrics.json").read_text())
    assert list(meta["groups"]["channel"]) == ["clean"]
    assert set(meta["groups"]["family"]) == {"hmm", "neural"}
    assert set(meta["groups"]["attack"]) == {"A03", "A04", "A05"}
    assert meta["groups"]["family"]["neural"]["n_spoof"] == 2
    # the summary is today's: the same figures as an ungrouped run
    plain = tmp_path / "plain"
    assert _eval(*base, "--out", str(plain), "--split", "eval").returncode == 0
    assert json.loads((plain / "metrics.json").read_text())["figures"] == meta["figures"]
    assert "groups" not in json.loads((plain / "metrics.json").read_text())
    assert "## By" not in (plain / "report.md").read_text()
    # a seeded subset with the spoofs spread over the attacks: each attack is in it
    sub = tmp_path / "subset"
    args = ["--split", "eval", "--subset", "6", "--per-attack"]
    assert _eval(*base, "--out", str(sub), *args).returncode == 0
    data = json.loads((sub / "metrics.json").read_text())["data"]
    assert data["clips"] == 6 and data["per_attack"]
    assert {a for a in data["attacks"] if a != "-"} == {"A03", "A04", "A05"}, data["attacks"]
    assert "spoofs spread evenly over the attacks" in (sub / "report.md").read_text()


def test_eval_refuses_folds_of_the_eval_split_and_groups_it_lacks(v2_corpus, capsys):
    from voicescreen.cli.train import main

    base = ["eval", "--data-root", str(v2_corpus), "--out", "unused", "--no-progress"]
    assert main([*base, "--split", "eval", "--folds", "family"]) == 2
    assert "drop --split" in capsys.readouterr().err
    assert main([*base, "--by", "fold"]) == 2
    assert "fold needs folds" in capsys.readouterr().err
    assert main([*base, "--folds", "language=xx"]) == 2
    assert "no clip" in capsys.readouterr().err
    assert main([*base, "--channels", "clean,opus@fast"]) == 2
    assert "bit rate" in capsys.readouterr().err
