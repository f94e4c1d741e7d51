"""Score fusion: a bundle of two real models and a logistic regression of their scores, fitted on
labelled clips, exported as one ONNX graph, and served by the real server as one model."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import numpy as np
import pytest
from web_support import dev_clip, run, start_server

from voicescreen.models.bundle import BundleError, load_bundle
from voicescreen.models.fusion import FusionConfig
from voicescreen.runtimes import open_runtime
from voicescreen.train.calibrate import score_channels
from voicescreen.train.data import load_split
from voicescreen.train.fusion import fuse_bundles, regression
from voicescreen.web.client import converse, pcm_messages
from voicescreen.web.config import ServerConfig

CHANNELS = ("clean", "mulaw")


@pytest.fixture(scope="module")
def members(export_aasist_l, gmm_bundle):
    return [export_aasist_l(name="aasist-l").source, gmm_bundle]


@pytest.fixture(scope="module")
def fused(members, small_corpus, tmp_path_factory):
    utts = load_split(small_corpus, "dev")
    out = tmp_path_factory.mktemp("fusion") / "fused"
    bundle, fit = fuse_bundles(
        members, utts, CHANNELS, out, name="fused", data={"corpus": "small", "split": "dev"}
    )
    return bundle, fit, utts


def member_scores(paths, utts) -> np.ndarray:
    """(clips x channels, members): each member's raw score from its own bundle's graph."""
    columns = []
    for path in paths:
        bundle = load_bundle(path)
        runtime = open_runtime(bundle, "onnx")
        per_channel, _ = score_channels(
            lambda x, r=runtime: r(x)[1], utts, bundle.input_samples, CHANNELS
        )
        columns.append(np.concatenate([per_channel[c] for c in CHANNELS]))
    return np.stack(columns, axis=1)


def test_the_fused_score_is_the_hand_computed_logistic_regression(members, fused):
    bundle, fit, utts = fused
    parts = member_scores(members, utts)
    labels = np.array([u.is_bonafide for _ in CHANNELS for u in utts])
    weights, bias = regression(parts, labels)
    np.testing.assert_allclose(fit.weights, weights, rtol=1e-6)
    assert fit.bias == pytest.approx(bias, rel=1e-6)
    assert bundle.architecture == "fusion" and bundle.score.convention == "log_odds"
    config = FusionConfig.from_dict(bundle.config)
    assert [m.architecture for m in config.members] == ["aasist-l", "lfcc-gmm"]
    assert config.weights == pytest.approx(tuple(weights))
    # One graph: the fusion bundle's score of real windows is bias + weights . member scores.
    windows = np.stack([dev_clip_window(u) for u in utts[:4]])
    raw = open_runtime(bundle, "onnx")(windows)[1]
    by_hand = bias + member_scores_of(members, windows) @ weights
    np.testing.assert_allclose(raw, by_hand, atol=2e-3)
    # Its members' scores come out of the same run, and torch agrees with the graph.
    for backend in ("onnx", "torch"):
        score, parts = open_runtime(bundle, backend).score_parts(windows)
        np.testing.assert_allclose(score, raw, atol=2e-3)
        np.testing.assert_allclose(parts, member_scores_of(members, windows), atol=2e-3)
    assert open_runtime(load_bundle(members[0]), "onnx").score_parts is None
    card = bundle.card
    names = [load_bundle(p).name for p in members]
    assert [m["name"] for m in card["provenance"]["members"]] == names
    figures = card["metrics"]["validation"]
    assert {"aasist-l", "fusion (in-sample)", "fusion (cross-fitted)"} <= set(figures)


def dev_clip_window(utt) -> np.ndarray:
    return dev_clip_window_of(utt.path)


def member_scores_of(paths, windows: np.ndarray) -> np.ndarray:
    return np.stack([open_runtime(load_bundle(p), "onnx")(windows)[1] for p in paths], axis=1)


def test_a_fusion_refuses_one_member_or_another_fusion(members, fused, small_corpus, tmp_path):
    utts = load_split(small_corpus, "dev")[:4]
    with pytest.raises(ValueError, match="at least two"):
        fuse_bundles(members[:1], utts, ["clean"], tmp_path / "a", data={})
    with pytest.raises(ValueError, match="another fusion"):
        fuse_bundles([fused[0].source, members[0]], utts, ["clean"], tmp_path / "b", data={})
    with pytest.raises(ValueError, match="share one window length"):
        FusionConfig.from_dict(
            {"nb_samp": 64600, "members": [{"name": "r", "architecture": "rawnet2-tak"}],
             "weights": [1.0]}
        )  # fmt: skip


def test_a_tampered_fusion_card_is_refused(fused, tmp_path):
    import json
    import shutil

    bundle = fused[0]
    copy = tmp_path / "copy"
    shutil.copytree(bundle.source, copy)
    card = json.loads((copy / "card.json").read_text())
    card["config"]["weights"] = card["config"]["weights"][:1]
    (copy / "card.json").write_text(json.dumps(card))
    with pytest.raises((BundleError, ValueError), match="weights"):
        load_bundle(copy).build_torch()


def test_the_fusion_keeps_the_graph_of_a_member_served_without_reuse(
    fused, members, monkeypatch, tmp_path
):
    """`fuse` stores the GMM member's own graph (member-1.onnx, checksummed in the card); served
    member by member for streams, the GMM runs on it with nothing exported, and the fused scores
    are the fusion graph's. The AASIST-L member reuses its encoder: no graph is stored for it."""
    import shutil

    from cpu_support import AVX2, pretend_cpu_machine

    from voicescreen.models import bundle as bundles
    from voicescreen.runtimes import plan_runtime

    bundle = fused[0]
    assert bundle.files["member-1.onnx"] == load_bundle(members[1]).files["model.onnx"]
    assert "member-0.onnx" not in bundle.files and "member-1.onnx" in bundle.card["files"]

    pretend_cpu_machine(monkeypatch)
    plan = plan_runtime(bundle, cpu=AVX2)
    assert [m.reuse for m in plan.members] == [True, False]

    def no_export(*args, **kwargs):
        raise AssertionError("a member graph was exported at start-up")

    monkeypatch.setattr(bundles, "export_onnx", no_export)
    runtime = open_runtime(bundle.with_plan(plan), plan.backend)
    windows = np.random.default_rng(0).normal(0, 0.1, (3, bundle.input_samples)).astype("f4")
    want = open_runtime(bundle, "onnx")(windows)[1]
    np.testing.assert_allclose(runtime(windows)[1], want, atol=1e-4)

    copy = tmp_path / "tampered"  # a member graph replaced: refused like any bundle file
    shutil.copytree(bundle.source, copy)
    (copy / "member-1.onnx").write_bytes(load_bundle(members[0]).files["model.onnx"])
    with pytest.raises(BundleError, match="member-1.onnx"):
        load_bundle(copy)


def asking_for_parts(messages, parts):
    (start, seconds), *rest = messages
    return [({**start, "parts": parts}, seconds), *rest]


def test_the_server_serves_a_fusion_as_one_model_with_its_parts_on_request(
    fused, members, data_dir
):
    bundle = fused[0]
    names = [m.name for m in FusionConfig.from_dict(bundle.config).members]
    clip = dev_clip(data_dir, "bonafide", 5.0, 8.0)
    messages = pcm_messages(clip)
    with start_server(ServerConfig(bundles=[bundle.source])) as server:
        models = httpx.get(server.url("/v1/models")).json()["models"]
        url = server.ws_url("/v1/stream")
        plain = run(converse(url, messages, realtime=False))
        asked = run(converse(url, asking_for_parts(messages, True), realtime=False))
        bad = run(converse(url, asking_for_parts(messages, "yes"), realtime=False))
    (model,) = models
    assert model["name"] == "fused" and model["architecture"] == "fusion"
    for result in (plain, asked):
        assert result.close_code == 1000 and not result.errors
        assert result.messages[-1]["type"] == "summary"
    scores = [m for m in plain.messages if m["type"] == "score"]
    assert len(scores) >= 2 and all(m["parts"] is None for m in scores)
    with_parts = [m for m in asked.messages if m["type"] == "score"]
    assert [m["raw"] for m in with_parts] == pytest.approx([m["raw"] for m in scores], abs=1e-4)
    # Each event's parts are the members' raw scores, and the fused score is their regression.
    config = FusionConfig.from_dict(bundle.config)
    for m in with_parts:
        assert list(m["parts"]) == names
        parts = np.array([m["parts"][n] for n in names])
        assert m["raw"] == pytest.approx(config.bias + parts @ np.array(config.weights), abs=1e-4)
    assert bad.errors and bad.errors[0]["code"] == "bad_start"
    assert "parts must be true or false" in bad.errors[0]["message"]


def test_fuse_then_score_and_eval_from_the_command_line(members, small_corpus, tmp_path):
    """``voicescreen fuse`` writes a bundle that ``score`` and ``eval`` take like any other."""

    def voicescreen(*args):
        p = subprocess.run(
            [sys.executable, "-m", "voicescreen", *map(str, args)], capture_output=True, text=True
        )
        assert p.returncode == 0, p.stderr
        return p.stdout

    out = tmp_path / "cli-fused"
    said = voicescreen(
        "fuse", *members, "--data-root", small_corpus, "--channels", "clean",
        "--name", "cli-fused", "--out", out, "--no-progress",
    )  # fmt: skip
    assert f"wrote {out}" in said and "fused = " in said and "fusion (cross-fitted)" in said
    bundle = load_bundle(out)
    clip = next(u for u in load_split(small_corpus, "eval") if u.is_bonafide).path
    said = voicescreen("score", clip, "--bundle", out, "--json", "--windows")
    (scored,) = map(json.loads, said.splitlines())
    want = open_runtime(bundle, "onnx")(dev_clip_window_of(clip)[None])[1][0]
    assert scored["windows"][0]["score"] == pytest.approx(float(want), abs=1e-4)
    said = voicescreen(
        "eval", "--bundle", out, "--data-root", small_corpus, "--split", "eval",
        "--out", tmp_path / "eval", "--no-progress",
    )  # fmt: skip
    assert said.startswith("eval: EER")
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "## Fusion (from the bundle's card)" in report
    assert "EER of fusion (cross-fitted)" in report
    assert "Recipe `None`" not in report
    refused = subprocess.run(
        [sys.executable, "-m", "voicescreen", "fuse", members[0], "--data-root", str(small_corpus),
         "--out", str(tmp_path / "one")], capture_output=True, text=True,
    )  # fmt: skip
    assert refused.returncode == 2 and "at least two bundles" in refused.stderr


def dev_clip_window_of(path) -> np.ndarray:
    from voicescreen.audio import WINDOW_SAMPLES, load_audio
    from voicescreen.train.evaluate import first_window

    return first_window(load_audio(path), WINDOW_SAMPLES)
