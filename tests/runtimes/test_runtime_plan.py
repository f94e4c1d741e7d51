"""Choosing each model's runtime for the machine (``plan_runtime``): the fastest path that keeps
the scores, bf16 only where the CPU has AVX-512 BF16 or AMX, and flags that still force a path."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from cpu_support import AVX2, SKYLAKE, ZEN4, pretend_cpu_machine
from web_support import web_bundle

from voicescreen.runtimes import (
    FastPathError,
    RuntimePlan,
    describe,
    local,
    open_runtime,
    plan_runtime,
)
from voicescreen.runtimes import plan as planning


@dataclass
class Fake:  # what plan_runtime reads of a bundle
    architecture: str = "aasist-l"
    quantized: dict | None = None
    name: str = "m"


@pytest.fixture(autouse=True)
def cpu_machine(monkeypatch):
    """No GPU and a C++ compiler, whatever this machine has (tests that want otherwise say so)."""
    pretend_cpu_machine(monkeypatch)


def plan(cpu=AVX2, bundle=None, **flags) -> RuntimePlan:
    return plan_runtime(bundle or Fake(), cpu=cpu, **flags)


def test_streams_on_avx2_get_the_exact_graph_with_reuse():
    p = plan()
    assert (p.backend, p.fast_path, p.reuse, p.forced) == ("onnx", "exact", True, False)
    assert "no AVX-512 BF16 or AMX (avx2): the exact ONNX graph" in p.why
    assert "encoder reuse" in p.why
    assert plan(SKYLAKE).fast_path == "exact"  # AVX-512 without BF16 is no bf16 machine


def test_streams_on_zen4_get_bf16_with_reuse_unless_told_otherwise(monkeypatch):
    p = plan(ZEN4)
    assert (p.backend, p.fast_path, p.reuse) == ("torch", "bf16", True)
    assert "AVX-512 BF16: the bf16 encoder" in p.why
    # exact when asked for, by fast path or by backend, and for whole files
    assert plan(ZEN4, fast_path="exact").fast_path == "exact"
    onnx = plan(ZEN4, backend="onnx")
    assert (onnx.fast_path, onnx.reuse) == ("exact", True) and "--backend onnx" in onnx.why
    files = plan(ZEN4, streams=False)
    assert (files.fast_path, files.reuse) == ("exact", False) and "whole files" in files.why
    # no compiler for inductor: exact, saying why
    monkeypatch.setattr(planning, "compiler_problem", lambda: "no g++")
    assert "no C++ compiler" in plan(ZEN4).why and plan(ZEN4).fast_path == "exact"


def test_flags_force_a_path():
    forced = plan(AVX2, fast_path="bf16")  # slow here, but asked for
    assert (forced.backend, forced.fast_path, forced.forced) == ("torch", "bf16", True)
    none = plan(ZEN4, fast_path="none")
    assert (none.backend, none.fast_path, none.reuse) == ("onnx", None, True)
    assert plan(ZEN4, fast_path="none", reuse=False).reuse is False
    torch_plain = plan(ZEN4, backend="torch")
    assert (torch_plain.backend, torch_plain.fast_path, torch_plain.reuse) == ("torch", None, False)
    with pytest.raises(FastPathError, match="--backend onnx"):
        plan(ZEN4, fast_path="exact", backend="torch")
    with pytest.raises(FastPathError, match="written for AASIST"):
        plan(ZEN4, Fake("lcnn"), fast_path="exact")


def test_other_models_int8_bundles_and_gpus_run_their_own_graph(monkeypatch):
    for bundle in (Fake("lcnn"), Fake("lfcc-gmm"), Fake(quantized={"source": {}})):
        p = plan(ZEN4, bundle)
        assert (p.backend, p.fast_path, p.reuse) == ("onnx", None, False), bundle
    assert "int8 bundle" in plan(ZEN4, Fake(quantized={"x": 1})).why
    monkeypatch.setattr(local, "has_nvidia_gpu", lambda: True)
    gpu = plan(ZEN4)
    assert (gpu.backend, gpu.fast_path, gpu.reuse) == ("onnx", None, False) and "GPU" in gpu.why
    assert plan(ZEN4, providers="cpu").fast_path == "bf16"  # the CPU asked for: the CPU's choice
    monkeypatch.setattr(local, "has_nvidia_gpu", lambda: False)
    named = plan(AVX2, providers="cuda,cpu")  # asked for, none here: the graph ORT falls back with
    assert (named.fast_path, named.reuse) == (None, False) and "GPU provider" in named.why


def test_files_beside_streams_take_exact_for_a_chosen_bf16_plan():
    files = plan(ZEN4).for_files()
    assert (files.backend, files.fast_path, files.reuse) == ("onnx", "exact", False)
    forced = plan(ZEN4, fast_path="bf16").for_files()
    assert (forced.fast_path, forced.reuse) == ("bf16", False)
    assert plan(AVX2).for_files().fast_path == "exact" and not plan(AVX2).for_files().reuse


def test_a_planned_bundle_runs_its_plan(export_aasist_l, speech_clips):
    from voicescreen.audio import pad_repeat

    bundle = web_bundle(export_aasist_l)
    chosen = plan(AVX2, bundle)
    runtime = open_runtime(bundle.with_plan(chosen), "onnx", providers="auto", threads=None)
    assert describe(runtime) == {
        "backend": "onnx",
        "providers": ["CPUExecutionProvider"],
        "fast_path": "exact",
        "reuse": True,
        "why": chosen.why,
    }
    x = np.stack([pad_repeat(speech_clips["spoof"]), pad_repeat(speech_clips["bonafide"])])
    np.testing.assert_allclose(runtime(x)[1], open_runtime(bundle, "onnx")(x)[1], atol=1e-5, rtol=0)
    # the scorer of whole files made from it: the exact graph, no reuse
    from voicescreen.scoring import Scorer

    assert describe(Scorer(bundle.with_plan(chosen)).runtime)["reuse"] is False
