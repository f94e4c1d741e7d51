"""Training end to end on a few real clips: train -> export -> `voicescreen score` -> eval report,
explain, exact resume, and the LFCC-GMM recipe beating chance.

Models are reduced (AASIST-L with 24 sinc filters and 8 channels, on 1 s windows) so that this
runs in seconds on CPU; the code paths are the full recipes'.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from voicescreen.cli.train import add_parsers, recipe_from_args
from voicescreen.models.bundle import load_bundle
from voicescreen.models.store import portable_path
from voicescreen.runtimes import open_runtime
from voicescreen.train.checkpoints import load_checkpoint
from voicescreen.train.data import ProtocolError, load_split
from voicescreen.train.evaluate import read_score_file
from voicescreen.train.metrics import eer, min_tdcf, rates_at, read_asv_scores
from voicescreen.train.recipes import load_recipe
from voicescreen.train.start import TrainError
from voicescreen.train.trainer import train

REPO = Path(__file__).resolve().parents[2]
SMALL_AASIST = [
    "--set",
    "model.nb_samp=16000",
    "--set",
    "model.filts=[24, [1, 8], [8, 8], [8, 8], [8, 8]]",
    "--set",
    "model.gat_dims=[8, 8]",
    "--init",
    "none",
]
SMALL_OVERRIDES = {
    "model": {"nb_samp": 16000, "filts": [24, [1, 8], [8, 8], [8, 8], [8, 8]], "gat_dims": [8, 8]},
    "init": None,
    "batch_size": 3,
    "threads": 2,
}


def parse_cli(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="voicescreen")
    add_parsers(p.add_subparsers(dest="command", required=True))
    return p.parse_args(argv)


def run_cli(argv: list[str]) -> int:
    args = parse_cli(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def trained(small_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One epoch of reduced AASIST-L through the CLI, exported with a mu-law-aware threshold."""
    out = tmp_path_factory.mktemp("run")
    bundle = out / "bundle"
    rc = run_cli(
        [
            "train",
            "aasist-l",
            "--data-root",
            str(small_corpus),
            "--out",
            str(out / "train"),
            "--epochs",
            "1",
            "--batch-size",
            "3",
            "--threads",
            "2",
            "--augment",
            "channel",
            "--calibrate-on",
            "clean,mulaw",
            "--export",
            str(bundle),
            "--no-progress",
            *SMALL_AASIST,
        ]
    )
    assert rc == 0
    return {"out": out, "train": out / "train", "bundle": bundle}


def test_train_writes_checkpoint_history_and_a_calibrated_bundle(trained, small_corpus):
    ckpt = load_checkpoint(trained["train"] / "checkpoint.pt")
    assert ckpt["epoch"] == 1 and ckpt["step"] == 2  # 6 clips in batches of 3
    assert (trained["train"] / "checkpoints" / "epoch-001.pt").is_file()
    history = json.loads((trained["train"] / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1]
    assert {"train_loss", "train_acc", "dev_loss", "dev_acc", "dev_eer"} <= set(history[0])

    bundle = load_bundle(trained["bundle"])
    card = bundle.card
    assert bundle.architecture == "aasist-l" and bundle.input_samples == 16000
    assert card["config"]["gat_dims"] == [8, 8]
    training = card["training"]
    assert training["recipe"]["name"] == "aasist-l" and training["seed"] == 1234
    assert training["data"]["train"]["clips"] == 6 and training["data"]["dev"]["clips"] == 6
    assert training["history"] == history
    dev = card["metrics"]["dev"]
    assert dev["channels"] == ["clean", "mulaw"]
    assert bundle.score.threshold == pytest.approx(dev["threshold"])
    assert {"clean", "mulaw"} <= set(dev) and 0 <= dev["clean"]["eer"] <= 1
    assert card["provenance"]["init"] == "random"


def test_threshold_is_the_dev_eer_threshold(trained, small_corpus):
    """Recompute the pooled clean + mu-law dev scores with the bundle (the ONNX graph it serves)
    and find its threshold."""
    from voicescreen.train.evaluate import score_utterances

    bundle = load_bundle(trained["bundle"])
    runtime = open_runtime(bundle, "onnx")
    dev = load_split(small_corpus, "dev")

    def score(x: np.ndarray) -> np.ndarray:
        return runtime(x)[1]

    pooled = np.concatenate([score_utterances(score, dev, 16000, ch) for ch in ("clean", "mulaw")])
    labels = np.array([u.is_bonafide for u in dev] * 2)
    _, threshold = eer(pooled[labels], pooled[~labels])
    assert bundle.score.threshold == pytest.approx(threshold, abs=1e-6)


def test_eval_report_matches_a_recomputation_and_score_cli(trained, small_corpus, reference_dir):
    asv = reference_dir / "asvspoof2019" / "ASVspoof2019.LA.asv.eval.gi.trl.scores.txt"
    out = trained["out"] / "eval"
    rc = run_cli(
        [
            "eval",
            "--bundle",
            str(trained["bundle"]),
            "--data-root",
            str(small_corpus),
            "--split",
            "eval",
            "--out",
            str(out),
            "--asv-scores",
            str(asv),
            "--no-progress",
        ]
    )
    assert rc == 0
    for name in (
        "report.md",
        "scores.txt",
        "scores.csv",
        "metrics.json",
        "hist.png",
        "det.png",
        "training.png",
    ):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    files, attacks, labels, scores = read_score_file(out / "scores.txt")
    eval_utts = load_split(small_corpus, "eval")
    assert files == [u.file for u in eval_utts]
    assert set(attacks) == {"-", "A03", "A04", "A05"}
    is_bona = np.array(labels) == "bonafide"
    bona, spoof = scores[is_bona], scores[~is_bona]
    threshold = load_bundle(trained["bundle"]).score.threshold

    metrics = json.loads((out / "metrics.json").read_text())["figures"]
    want_eer, want_thr = eer(bona, spoof)
    assert metrics["eer"] == pytest.approx(want_eer)
    assert metrics["eer_threshold"] == pytest.approx(want_thr, abs=1e-7)
    rates = rates_at(bona, spoof, threshold)
    assert metrics["bonafide_accepted"] == pytest.approx(rates["bonafide_accepted"])
    assert metrics["spoof_rejected"] == pytest.approx(rates["spoof_rejected"])
    assert metrics["min_tdcf"] == pytest.approx(min_tdcf(bona, spoof, read_asv_scores(asv)))
    assert "not ASVspoof 2019 LA" in metrics["tdcf_note"]
    for attack in ("A03", "A04", "A05"):
        s = scores[np.array(attacks) == attack]
        assert metrics["per_attack"][attack]["eer"] == pytest.approx(eer(bona, s)[0])

    report = (out / "report.md").read_text()
    assert f"| EER | {100 * want_eer:.2f} % |" in report
    assert f"| min t-DCF | {metrics['min_tdcf']:.4f} (see note) |" in report
    shown = re.search(r"\| spoofs rejected at the card's threshold \| ([\d.]+) % \|", report)
    assert shown and float(shown.group(1)) == pytest.approx(100 * rates["spoof_rejected"], 0.01)

    # `voicescreen score`: window 0 of each file is the window eval scored.
    paths = [str(u.path) for u in eval_utts]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "voicescreen",
            "score",
            *paths,
            "--bundle",
            str(trained["bundle"]),
            "--json",
            "--windows",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO.parent,
    )
    assert proc.returncode == 0, proc.stderr
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["file"] for r in results] == paths
    first = np.array([r["windows"][0]["score"] for r in results])
    assert np.allclose(first, scores, atol=1e-5)


def test_explain_writes_attention_heatmaps(trained, small_corpus):
    out = trained["out"] / "explain"
    clip = load_split(small_corpus, "eval")[0].path
    argv = ["explain", str(clip), "--bundle", str(trained["bundle"]), "--out", str(out)]
    assert run_cli(argv) == 0
    for name in ("overview.png", "gat_spectral.png", "gat_temporal.png", "hsgal.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    maps = np.load(out / "attention.npz")
    for key in ("GAT_layer_S", "GAT_layer_T", "HtrgGAT_layer_ST11"):
        assert np.allclose(maps[key].sum(axis=-1), 1.0, atol=1e-5)  # rows are distributions
    assert maps["GAT_layer_S"].shape == (8, 8)  # 24 sinc filters / 3
    info = json.loads((out / "explain.json").read_text())
    assert len(info["spectral_nodes_hz"]) == 8
    # the verdict rule on the window's calibrated score (the clip holds over a second of speech)
    c = info["calibrated"]
    assert info["verdict"] == ("bonafide" if c >= 0.5 else "spoof" if c <= -0.5 else "uncertain")


def test_explain_refuses_other_architectures(tmp_path, small_corpus):
    from voicescreen.train.explain import ExplainError, explain

    recipe = load_recipe("lfcc-gmm", overrides={"model": {"n_components": 2}})
    result = train(recipe, small_corpus, tmp_path / "gmm", export=tmp_path / "b", progress=False)
    with pytest.raises(ExplainError, match="AASIST"):
        explain(load_split(small_corpus, "eval")[0].path, result.bundle, tmp_path / "x")


def test_resume_reproduces_the_uninterrupted_run(small_corpus, tmp_path):
    recipe = load_recipe(
        "aasist-l",
        overrides={
            **SMALL_OVERRIDES,
            "epochs": 2,
            "subset": 4,
            "eval_every": 2,
            "augment": {"preset": "rawboost"},
            "freq_aug": True,
        },
    )
    whole = train(recipe, small_corpus, tmp_path / "whole", progress=False)
    assert whole.finished and whole.epochs_done == 2

    part = train(recipe, small_corpus, tmp_path / "part", stop_after=1, progress=False)
    assert not part.finished and part.epochs_done == 1
    with pytest.raises(TrainError, match="lr"):
        train(recipe.override({"lr": 1e-3}), small_corpus, tmp_path / "part", resume=True)
    resumed = train(recipe, small_corpus, tmp_path / "part", resume=True, progress=False)
    assert resumed.finished and resumed.epochs_done == 2

    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    drop = ("time_s",)
    strip = [{k: v for k, v in h.items() if k not in drop} for h in whole.history]
    assert strip == [{k: v for k, v in h.items() if k not in drop} for h in resumed.history]
    # and the epochs really trained: the weights moved from their initial values
    first = load_checkpoint(tmp_path / "part" / "checkpoints" / "epoch-001.pt")["model"]
    assert any(not torch.equal(first[k], a[k]) for k in a if a[k].is_floating_point())


def test_lfcc_gmm_recipe_beats_chance_on_dev(data_dir, tmp_path):
    """Fitted on 20 training clips (8 components per class), scored on all 200 dev clips."""
    recipe = load_recipe(
        "lfcc-gmm", overrides={"subset": 20, "per_attack": True, "model": {"n_components": 8}}
    )
    result = train(recipe, data_dir, tmp_path / "gmm", export=tmp_path / "bundle", progress=False)
    dev = result.metrics["dev"]
    assert dev["clean"]["eer"] < 0.35  # chance is 0.5; ~0.24 measured
    card = load_bundle(result.bundle).card
    assert card["training"]["data"]["train"] == {
        "clips": 20,
        "bonafide": 10,
        "spoof": 10,
        "attacks": {"A01": 4, "A02": 3, "A03": 3},
        "speakers": card["training"]["data"]["train"]["speakers"],
    }
    assert card["metrics"]["dev"]["clean"]["min_tdcf"] is not None  # ASV scores found beside


def test_extra_dev_corpora_join_the_dev_split_for_calibration(small_corpus, tmp_path):
    """A corpus's dev split (held-out voices) joins the dev split the bundle is calibrated on;
    its train split is not read."""
    recipe = load_recipe(
        "lfcc-gmm",
        overrides={"subset": 4, "extra_dev": [str(small_corpus)], "model": {"n_components": 2}},
    )
    result = train(recipe, small_corpus, tmp_path / "g", export=tmp_path / "b", progress=False)
    data = load_bundle(result.bundle).card["training"]["data"]
    n_dev = len(load_split(small_corpus, "dev"))
    assert data["train"]["clips"] == 4 and data["dev"]["clips"] == 2 * n_dev
    want = [(portable_path(small_corpus), n_dev)]
    assert [(d["root"], d["clips"]) for d in data["extra_dev"]] == want


def test_extra_train_corpora_join_the_train_split(small_corpus, tmp_path):
    """A second corpus's train split is added whole (after the main split's subset) and the
    bundle card says so."""
    recipe = load_recipe(
        "lfcc-gmm",
        overrides={"subset": 4, "extra_train": [str(small_corpus)], "model": {"n_components": 2}},
    )
    result = train(recipe, small_corpus, tmp_path / "g", export=tmp_path / "b", progress=False)
    data = load_bundle(result.bundle).card["training"]["data"]
    assert data["train"]["clips"] == 4 + 6
    assert data["extra_train"] == [
        {"root": str(small_corpus), "clips": 6, "bonafide": 3, "spoof": 3,
         "attacks": {"A01": 1, "A02": 1, "A03": 1}, "speakers": data["extra_train"][0]["speakers"]}
    ]  # fmt: skip
    with pytest.raises(ProtocolError, match="nowhere: no train protocol"):
        train(
            recipe.override({"extra_train": [str(tmp_path / "nowhere")]}),
            small_corpus,
            tmp_path / "x",
        )


def test_cpu_bf16_autocasts_the_training_passes_only(small_corpus, tmp_path, monkeypatch):
    """--cpu-bf16: the training forward passes run in bfloat16; the weights, the optimizer and
    the dev scoring stay float32. Off (the default), training is float32 throughout."""
    import voicescreen.train.trainer as trainer

    seen: list[tuple[bool, torch.dtype]] = []
    build = trainer.build_model

    def spy(recipe, device):
        model, origin = build(recipe, device)
        model.encoder.register_forward_hook(lambda m, i, o: seen.append((m.training, o.dtype)))
        return model, origin

    monkeypatch.setattr(trainer, "build_model", spy)
    recipe = load_recipe("aasist-l", overrides={**SMALL_OVERRIDES, "epochs": 1, "subset": 4})
    plain = train(recipe, small_corpus, tmp_path / "fp32", progress=False)
    assert {(True, torch.float32), (False, torch.float32)} == set(seen)

    seen.clear()
    args = parse_cli(["train", "aasist-l", "--data-root", "d", "--out", "o", "--cpu-bf16"])
    assert recipe_from_args(args).cpu_bf16 and not recipe.cpu_bf16
    bf16 = train(recipe.override({"cpu_bf16": True}), small_corpus, tmp_path / "bf16")
    assert {(True, torch.bfloat16), (False, torch.float32)} == set(seen)  # train, dev
    state = bf16.model.state_dict()
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    assert np.isfinite(bf16.history[-1]["train_loss"])
    # the same seed and data, so only the precision differs: the weights do too
    assert any(not torch.equal(v, plain.model.state_dict()[k]) for k, v in state.items())


def test_the_report_describes_training_data_in_words():
    """A card's training data, dev plus an extra corpus's dev, read as such: not a JSON dump,
    and not all called "dev"."""
    from voicescreen.train.evaluate import _data_lines

    clips = {"clips": 370, "bonafide": 185, "spoof": 185}
    extra = {"root": "~/extra", "clips": 170, "bonafide": 85, "spoof": 85}
    lines = _data_lines({"root": "../shared/data", "corpus": "custom", "dev": clips,
                         "extra_dev": [extra]})  # fmt: skip
    text = "\n".join(lines)
    assert "{" not in text and "370 clips (185 bona fide, 185 spoof)" in text
    assert "of which from the extra corpora: `~/extra` 170 clips" in text
