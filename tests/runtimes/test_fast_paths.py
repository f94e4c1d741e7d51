"""The fast AASIST paths as users pick them: ``--fast-path exact|bf16`` of ``score``, ``serve`` and
``monitor``, and ``voicescreen optimize --int8``. The paths themselves (numbers, graphs, bounds) are
tested in test_optimize.py; here: the wiring, the bundle an int8 run writes, and the errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from web_support import dev_clip, run, serve_process, web_bundle

from voicescreen.audio import load_audio, pad_repeat
from voicescreen.models.bundle import Bundle, BundleError, load_bundle
from voicescreen.models.cpu import cpu_info
from voicescreen.runtimes import (
    BackendError,
    FastPathError,
    describe,
    open_runtime,
    open_runtimes,
    with_fast_path,
)
from voicescreen.scoring import Scorer
from voicescreen.train.data import balanced_subset, load_split
from voicescreen.web.client import converse, pcm_messages

VOICESCREEN = [sys.executable, "-m", "voicescreen"]
GUARD = 300  # seconds: far beyond what any command here takes on 2 busy cores
EXACT = 1e-5  # scores, absolute: the exact path against the plain graph
BF16_BOUND = 0.25  # logits, absolute, as test_optimize.py states it
INT8_BOUND = 2.0


def voicescreen(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*VOICESCREEN, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=GUARD,
        check=False,
    )


@pytest.fixture(scope="module")
def bundle(export_aasist_l) -> Bundle:
    return web_bundle(export_aasist_l)  # the web tests' export: one export for the whole run


@pytest.fixture(scope="module")
def clip(data_dir: Path) -> Path:
    return dev_clip(data_dir, "spoof", 5.5, 6.5)


@pytest.fixture(scope="module")
def speech(speech_clips: dict[str, np.ndarray]) -> np.ndarray:
    """(2, 64600) real speech windows: spoof and bona fide."""
    return np.stack([pad_repeat(speech_clips["spoof"]), pad_repeat(speech_clips["bonafide"])])


def window_scores(p: subprocess.CompletedProcess) -> np.ndarray:
    assert p.returncode == 0, p.stderr
    return np.array([w["score"] for w in json.loads(p.stdout)["windows"]])


# --- exact ---------------------------------------------------------------------------------------


def test_score_fast_path_exact_gives_the_plain_scores(bundle, clip):
    args = ["score", str(clip), "--bundle", str(bundle.source), "--json", "--windows"]
    plain = window_scores(voicescreen(*args))
    exact = voicescreen("-v", *args, "--fast-path", "exact")
    assert len(window_scores(exact)) == len(plain) >= 2
    np.testing.assert_allclose(window_scores(exact), plain, atol=EXACT, rtol=0)
    assert "fast path exact" in exact.stderr


def test_fast_paths_refuse_what_they_cannot_run(bundle, data_dir, gmm_bundle):
    clip = str(data_dir / "flac" / "VS_D_00601.flac")
    # An LFCC-GMM is not AASIST: the commands say so, before anything runs.
    gmm = str(gmm_bundle)
    for p in (
        voicescreen("score", clip, "--bundle", gmm, "--fast-path", "exact"),
        voicescreen("monitor", "--input", clip, "--bundle", gmm, "--fast", "--fast-path", "exact"),
    ):
        assert p.returncode == 2
        assert "written for AASIST and AASIST-L" in p.stderr and "Traceback" not in p.stderr
    # The wrong backend or provider names the right one.
    with pytest.raises(FastPathError, match="--backend onnx"):
        with_fast_path(bundle, "exact", "torch")
    with pytest.raises(FastPathError, match="--backend torch"):
        open_runtime(bundle, "onnx", fast_path="bf16")
    with pytest.raises(FastPathError, match="--providers cpu"):
        open_runtime(bundle, "onnx", fast_path="exact", providers="tensorrt")
    with pytest.raises(FastPathError, match="unknown fast path"):
        with_fast_path(bundle, "int8")
    # A remote backend runs the model elsewhere: refused before it is reached.
    with pytest.raises(BackendError, match="--fast-path"):
        open_runtimes({bundle.name: with_fast_path(bundle, "exact")}, "triton")


GRID_HOP = 7 * 2187 / 16000  # reuse: window starts on the encoder's grid
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2"}  # this machine as an AVX2-only one (models/cpu.py)


def default_choice() -> tuple[str, str]:
    """What ``serve`` with no runtime flags must choose here: (fast path, words of its why)."""
    if cpu_info().native_bf16:
        return "bf16", "the bf16 encoder"
    return "exact", "no AVX-512 BF16 or AMX"


@pytest.mark.parametrize(
    "flags, env, want",
    [
        (["--fast-path", "exact", "--no-reuse"], {}, ("exact", False, "--fast-path exact")),
        (["--fast-path", "none", "--reuse"], {}, (None, True, "--reuse")),
        (["--backend", "onnx"], {}, ("exact", True, "--backend onnx: the exact ONNX graph")),
        ([], AVX2, ("exact", True, "no AVX-512 BF16 or AMX (avx2): the exact ONNX graph")),
        ([], {}, None),  # the machine's own choice; bf16 compiles every chunk length first
    ],
    ids=["exact", "reuse", "backend-onnx", "default-as-avx2", "default"],
)
def test_serve_runtime_options_score_a_stream(bundle, clip, flags, env, want):
    """Each model's runtime as the flags force it or as this CPU makes the default choose:
    /v1/models and the log say what and why, and the stream scores as offline (exactly, or
    within the bf16 bound)."""
    if want is None:
        fast_path, because = default_choice()
        want = (fast_path, True, because)
    fast_path, reuse, because = want
    hop = GRID_HOP if reuse else 1.0
    # The clip goes in faster than real time: no latency budget, so a busy machine sheds nothing.
    args = ["--bundle", str(bundle.source), "--max-delay-ms", "0", *flags]
    with serve_process(args, env, GUARD) as server:
        (model,) = server.models["models"]
        bf16 = fast_path == "bf16"
        runtime = model["runtime"]
        assert because in runtime.pop("why")
        assert runtime == {
            "backend": "torch" if bf16 else "onnx",
            "providers": ["cpu"] if bf16 else ["CPUExecutionProvider"],
            "fast_path": fast_path,
            "reuse": reuse,
        }
        result = run(converse(server.url("/v1/stream", "ws"), pcm_messages(clip), realtime=False))
    log = server.log
    # the start-up log names the path of each model, and why it was chosen
    assert (f"fast path {fast_path}" in log) if fast_path else ("fast path" not in log)
    assert because in log.split("chosen: ", 1)[-1]
    assert ("encoder reuse" in log and "hop 1.000 s -> 0.957 s" in log) == reuse
    offline = Scorer(bundle).score_file(clip, hop=hop)
    scored = {
        (m["start"], m["end"]): m["raw"]
        for m in result.messages
        if m["type"] == "score" and not m["early"]
    }
    assert result.messages[-1]["type"] == "summary" and len(scored) >= 2
    assert result.messages[0]["hop_seconds"] == pytest.approx(hop)  # the hop in use
    matched = [w for w in offline.windows if (w.start, w.end) in scored]
    assert len(matched) >= 2
    for w in matched:  # bf16: the lossy path's bound against the fp32 model
        assert scored[w.start, w.end] == pytest.approx(w.score, abs=BF16_BOUND if bf16 else EXACT)


# --- bf16 ----------------------------------------------------------------------------------------


@pytest.mark.native_bf16
@pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler for torch inductor")
def test_bf16_runtime_compiles_at_start_up_and_scores(bundle, speech):
    runtime = open_runtime(with_fast_path(bundle, "bf16", "torch"), "torch")  # compiles (20-60 s)
    assert describe(runtime) == {
        "backend": "torch",
        "providers": ["cpu"],
        "fast_path": "bf16",
        "reuse": False,
        "why": None,  # made directly, not chosen
    }
    logits, score = runtime(speech)
    plain, _ = open_runtime(bundle, "onnx")(speech)
    assert 0 < np.abs(logits - plain).max() <= BF16_BOUND
    assert np.array_equal(score, logits[:, 1])


def test_bf16_without_a_compiler_fails_at_start_up_with_the_alternatives(bundle, clip):
    args = ["score", str(clip), "--bundle", str(bundle.source), "--backend", "torch"]
    p = voicescreen(*args, "--fast-path", "bf16", env={"CXX": "/nonexistent/c++"})
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "No working C++ compiler" in p.stderr  # the cause
    assert "--fast-path exact" in p.stderr and "optimize --int8" in p.stderr  # the alternatives


# --- int8 ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def int8(bundle, data_dir, tmp_path_factory) -> Bundle:
    out = tmp_path_factory.mktemp("int8") / "aasist-l-int8"
    p = voicescreen(
        "optimize", "--int8", "--bundle", str(bundle.source), "--data-root", str(data_dir),
        "--out", str(out), "--calibration-clips", "8", "--dev-clips", "16",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "16 dev windows" in p.stdout and "EER" in p.stdout
    return load_bundle(out)  # verified: every file's hash, the ONNX I/O contract


def test_int8_bundle_card_says_what_changed(int8, bundle, data_dir):
    q = int8.quantized
    assert int8.name == "aasist-l-int8" and q["kind"] == "int8"
    assert "model.onnx" in q["changed"] and "weights.safetensors" in q["changed"]
    assert q["source"]["name"] == bundle.name
    assert q["source"]["model_onnx_sha256"] == bundle.card["files"]["model.onnx"]["sha256"]
    assert int8.card["files"]["model.onnx"]["sha256"] != q["source"]["model_onnx_sha256"]
    assert int8.files["weights.safetensors"] == bundle.files["weights.safetensors"]
    assert int8.score == bundle.score  # threshold and scale as calibrated for fp32
    calibration = q["calibration"]
    train = {u.file for u in load_split(data_dir, "train")}
    assert calibration["split"] == "train" and len(calibration["clips"]) == 8
    assert set(calibration["clips"]) <= train  # never a dev or eval clip
    check = q["check"]
    assert check["split"] == "dev" and check["clips"] == 16
    assert 1e-3 < check["max_abs_logit_diff"] <= INT8_BOUND
    assert 0 <= check["eer_fp32"] <= 1 and 0 <= check["eer_int8"] <= 1
    assert 0 <= check["decisions_changed"] <= 16


def test_int8_bundle_scores_real_speech_within_the_measured_difference(int8, bundle, data_dir):
    # The first windows of two of the dev clips the card's check measured.
    checked = balanced_subset(load_split(data_dir, "dev"), 16, seed=0)
    clips = [
        next(u for u in checked if u.is_bonafide),
        next(u for u in checked if not u.is_bonafide),
    ]
    x = np.stack([pad_repeat(load_audio(u.path)) for u in clips])
    runtime = open_runtime(int8, "onnx", threads=2)
    assert describe(runtime)["fast_path"] == "int8"
    logits, _ = runtime(x)
    plain, _ = open_runtime(bundle, "onnx", threads=2)(x)
    diff = np.abs(logits - plain).max()
    assert 0 < diff <= int8.quantized["check"]["max_abs_logit_diff"] + 1e-4
    # A whole file, window by window, through the offline scorer.
    path = clips[1].path
    got = [w.score for w in Scorer(int8).score_file(path).windows]
    want = [w.score for w in Scorer(bundle).score_file(path).windows]
    np.testing.assert_allclose(got, want, atol=INT8_BOUND, rtol=0)


def test_int8_bundle_is_verified_and_refuses_what_does_not_apply(int8, tmp_path):
    with pytest.raises(BundleError, match="torch backend would run the fp32 weights"):
        open_runtime(int8, "torch")
    with pytest.raises(FastPathError, match="int8 already"):
        with_fast_path(int8, "exact")
    copy = tmp_path / "tampered"
    shutil.copytree(int8.source, copy)
    graph = bytearray((copy / "model.onnx").read_bytes())
    graph[-1] ^= 1
    (copy / "model.onnx").write_bytes(bytes(graph))
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(copy)
