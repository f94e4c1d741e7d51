"""Recipes: the study's defaults, TOML and command-line overrides, schedules, CLI parsing."""

from __future__ import annotations

import argparse
import math

import pytest

from voicescreen.cli.train import add_parsers, recipe_from_args
from voicescreen.train.optim import learning_rate
from voicescreen.train.recipes import RECIPES, get_recipe, load_recipe, parse_sets


def test_study_settings_are_the_defaults():
    a = get_recipe("aasist")
    assert (a.epochs, a.batch_size, a.scheduler, a.init) == (5, 16, "cosine", "official")
    assert (a.lr, a.lr_min, a.weight_decay) == (1e-4, 5e-6, 1e-4)  # AASIST's optim_config
    assert get_recipe("aasist-l").architecture == "aasist-l"
    r = get_recipe("rawnet2")
    assert (r.architecture, r.epochs, r.batch_size, r.scheduler) == ("rawnet2-tak", 10, 8, "cosine")
    lc = get_recipe("lcnn")
    assert (lc.epochs, lc.batch_size, lc.scheduler, lc.lr) == (10, 16, "step", 3e-4)
    assert get_recipe("lfcc-gmm").is_gmm
    for name in RECIPES:
        rec = get_recipe(name)
        assert rec.class_weights is None and rec.seed == 1234
        assert rec.model_config()  # every recipe builds a valid architecture config


def test_toml_then_command_line_overrides(tmp_path):
    conf = tmp_path / "run.toml"
    conf.write_text(
        'recipe = "aasist-l"\n'
        "epochs = 2\n"
        "class_weights = [0.1, 0.9]\n"
        "[model]\n"
        "gat_dims = [8, 8]\n"
        "[augment]\n"
        'preset = "channel"\n'
        "[augment.noise]\n"
        "p = 1.0\n"
    )
    sets = parse_sets(["epochs=3", "model.nb_samp=16000", "augment.gain.p=0.0", "init=none"])
    r = load_recipe(None, conf, sets)
    assert r.name == "aasist-l" and r.epochs == 3 and r.class_weights == (0.1, 0.9)
    assert r.model == {"gat_dims": [8, 8], "nb_samp": 16000}
    cfg = r.model_config()
    assert cfg["gat_dims"] == [8, 8] and cfg["nb_samp"] == 16000 and cfg["filts"][0] == 70
    assert r.augment.noise.p == 1.0 and r.augment.gain.p == 0.0
    assert r.augment.codec.p > 0  # from the preset
    assert r.init is None
    assert r.batch_size == 16  # untouched default


def test_bad_overrides_are_reported():
    with pytest.raises(ValueError, match="unknown recipe field"):
        load_recipe("lcnn", overrides={"epoch": 3})
    with pytest.raises(ValueError, match="scheduler"):
        load_recipe("lcnn", overrides={"scheduler": "exponential"})
    with pytest.raises(ValueError, match="calibration"):
        load_recipe("lcnn", overrides={"calibration": ["vinyl"]})
    with pytest.raises(KeyError, match="unknown recipe"):
        load_recipe("transformer")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_sets(["epochs"])


def test_values_parse_as_toml():
    assert parse_sets(["a=1", "b=1e-4", "c=true", "d=[0.1, 0.9]", "e=word", "f.g=2"]) == {
        "a": 1,
        "b": 1e-4,
        "c": True,
        "d": [0.1, 0.9],
        "e": "word",
        "f": {"g": 2},
    }


def test_schedules():
    a = get_recipe("aasist")
    total = 100
    assert learning_rate(a, 0, 1, total) == pytest.approx(a.lr)
    assert learning_rate(a, total, 5, total) == pytest.approx(a.lr_min)
    mid = learning_rate(a, total // 2, 3, total)
    assert mid == pytest.approx((a.lr + a.lr_min) / 2)
    rates = [learning_rate(a, s, 1, total) for s in range(total + 1)]
    assert all(x >= y for x, y in zip(rates, rates[1:], strict=False))
    lc = get_recipe("lcnn")
    assert [learning_rate(lc, 0, e, 1) for e in (1, 5, 6, 10)] == pytest.approx(
        [3e-4, 3e-4, 1.5e-4, 1.5e-4]
    )
    flat = lc.override({"scheduler": "constant"})
    assert learning_rate(flat, 7, 9, 10) == flat.lr
    assert not math.isnan(learning_rate(a, 0, 1, 0))


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="voicescreen")
    add_parsers(p.add_subparsers(dest="command", required=True))
    return p.parse_args(argv)


def test_cli_flags_reach_the_recipe():
    args = _parse(
        [
            "train",
            "rawnet2-clova",
            "--data-root",
            "D",
            "--out",
            "O",
            "--epochs",
            "1",
            "--batch-size",
            "2",
            "--lr",
            "0.001",
            "--subset",
            "100",
            "--per-attack",
            "--extra-train",
            "X1",
            "--extra-train",
            "X2",
            "--class-weights",
            "0.1",
            "0.9",
            "--augment",
            "rawboost",
            "--calibrate-on",
            "clean,mulaw",
            "--set",
            "model.gru_node=16",
            "--init",
            "none",
        ]
    )
    r = recipe_from_args(args)
    assert r.architecture == "rawnet2-clova"
    assert (r.epochs, r.batch_size, r.lr, r.subset, r.per_attack) == (1, 2, 0.001, 100, True)
    assert r.class_weights == (0.1, 0.9) and r.calibration == ("clean", "mulaw")
    assert r.extra_train == ("X1", "X2")
    assert r.augment.rawboost.p == 1.0 and r.model == {"gru_node": 16} and r.init is None
    assert args.func.__name__ == "cmd_train"
    assert _parse(["eval", "--data-root", "D", "--out", "O"]).func.__name__ == "cmd_eval"
    assert _parse(["explain", "f.wav", "--out", "O"]).func.__name__ == "cmd_explain"
