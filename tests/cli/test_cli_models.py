"""``voicescreen models`` states a meaningful size for every bundle, the LFCC-GMM included (its
mixtures are fitted buffers, not trainable parameters, so its card says 0)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from types import SimpleNamespace

from voicescreen.cli.score import parameter_count
from voicescreen.models.bundle import load_bundle
from voicescreen.models.store import DEFAULT_BUNDLE


def models(*args: str, home) -> str:
    env = {**os.environ, "VOICESCREEN_HOME": str(home)}  # the shipped bundle and the test's
    p = subprocess.run(
        [sys.executable, "-m", "voicescreen", "models", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_the_gmm_bundle_counts_its_fitted_values(tmp_path, gmm_bundle):
    bundle = load_bundle(gmm_bundle)
    assert bundle.architecture == "lfcc-gmm" and not bundle.card["parameters"]
    model = bundle.build_torch()
    gmms = (model.bona, model.spoof)
    fitted = sum(g.weights.numel() + g.means.numel() + g.covariances.numel() for g in gmms)
    fitted += model.center.numel()
    k, dim = bundle.config["n_components"], model.center.numel()
    assert fitted == 2 * (k + 2 * k * dim) + dim  # weights, means, variances; the centre

    (tmp_path / "bundles").mkdir()
    shutil.copytree(gmm_bundle, tmp_path / "bundles" / "gmm-small")
    text = models(home=tmp_path)
    line = next(line for line in text.splitlines() if line.strip().startswith("gmm-small "))
    assert re.search(rf"lfcc-gmm\s+{fitted:,} params\s", line), line
    listed = json.loads(models("--json", home=tmp_path))
    gmm = next(b for b in listed["bundles"] if b["name"] == "gmm-small")
    assert gmm["parameters"] == fitted
    # the shipped default (AASIST-L) states its trainable parameters
    default = next(b for b in listed["bundles"] if b["name"] == "default")
    assert default["parameters"] == load_bundle(DEFAULT_BUNDLE).card["parameters"] > 0


def test_a_trained_model_keeps_its_card_count():
    card = SimpleNamespace(card={"parameters": 85_306}, state_dict=lambda: {})
    assert parameter_count(card) == 85_306
    empty = SimpleNamespace(card={"parameters": 0}, state_dict=lambda: {})
    assert parameter_count(empty) is None  # printed as n/a
