"""A fusion served member by member (``runtimes/members.py``): the plan that chooses it, its
runtime against the fusion's own graph on a real stream's windows, and ``voicescreen serve``
streaming with it."""

from __future__ import annotations

import numpy as np
import pytest
from cpu_support import AVX2, ZEN4, pretend_cpu_machine
from web_support import dev_clip, run, serve_process, web_bundle

from voicescreen.models.bundle import Bundle, export_bundle, load_bundle
from voicescreen.models.fusion import FusionConfig, Member, combine
from voicescreen.runtimes import describe, local, open_runtime, plan_runtime
from voicescreen.runtimes.reuse import Job, StreamFrames
from voicescreen.scoring import Scorer
from voicescreen.web.client import converse, pcm_messages

STRIDE = 2187  # AASIST's encoder: input samples per frame
GRID_HOP = 7 * STRIDE / 16000
EXACT = 1e-4  # fused scores, absolute: members' own graphs against the fusion's one graph


@pytest.fixture(scope="module")
def fused(export_aasist_l, gmm_bundle, tmp_path_factory) -> Bundle:
    """AASIST-L (official weights) and a small LFCC-GMM, fused with fixed weights."""
    bundles = [web_bundle(export_aasist_l), load_bundle(gmm_bundle)]
    members = [Member(b.name, b.architecture, b.config) for b in bundles]
    model = combine([b.build_torch() for b in bundles], members, [0.8, -0.05], 0.2)
    out = tmp_path_factory.mktemp("members") / "fused"
    return export_bundle(
        model, out, architecture="fusion", config=model.config.to_dict(), name="fused"
    )


@pytest.fixture
def cpu_machine(monkeypatch):
    """No GPU and a C++ compiler, whatever this machine has."""
    pretend_cpu_machine(monkeypatch)


def names(bundle: Bundle) -> tuple[str, ...]:
    return tuple(m.name for m in FusionConfig.from_dict(bundle.config).members)


def paths(plan) -> list[tuple[str, str | None, bool]]:
    return [(m.backend, m.fast_path, m.reuse) for m in plan.members]


def test_streams_plan_each_member_as_if_alone(fused, cpu_machine, monkeypatch):
    avx2 = plan_runtime(fused, cpu=AVX2)
    assert (avx2.backend, avx2.fast_path, avx2.reuse) == ("onnx", None, True)
    assert paths(avx2) == [("onnx", "exact", True), ("onnx", None, False)]
    assert avx2.why.startswith("a fusion, member by member: aasist-l: no AVX-512 BF16")
    assert f"{names(fused)[1]}: lfcc-gmm: its own graph" in avx2.why
    assert paths(plan_runtime(fused, cpu=ZEN4))[0] == ("torch", "bf16", True)
    # a forced fast path or backend reaches the member it applies to
    assert paths(plan_runtime(fused, cpu=ZEN4, fast_path="exact"))[0] == ("onnx", "exact", True)
    assert paths(plan_runtime(fused, cpu=ZEN4, backend="onnx"))[0] == ("onnx", "exact", True)
    # whole files, --no-reuse and eager torch: the fusion's own graph, in one run
    for plan in (
        avx2.for_files(),
        plan_runtime(fused, cpu=AVX2, streams=False),
        plan_runtime(fused, cpu=AVX2, reuse=False),
        plan_runtime(fused, cpu=AVX2, backend="torch"),
    ):
        assert not plan.members and not plan.reuse and plan.fast_path is None, plan
    monkeypatch.setattr(local, "has_nvidia_gpu", lambda: True)
    gpu = plan_runtime(fused, cpu=ZEN4)
    assert not gpu.members and not gpu.reuse


def stream_jobs(speech_clips, input_samples: int) -> list[Job]:
    """A 12 s stream's windows on the encoder's grid, each with its place in the stream."""
    audio = np.concatenate([speech_clips["bonafide"], speech_clips["spoof"]])
    audio = np.tile(audio, 1 + 12 * 16000 // len(audio))[: 12 * 16000]
    frames = StreamFrames()
    hop = 7 * STRIDE
    starts = range(0, len(audio) - input_samples + 1, hop)
    return [Job(audio[s : s + input_samples].copy(), s, frames) for s in starts]


def test_members_score_a_stream_as_the_fusion_graph_does(fused, speech_clips, cpu_machine):
    runtime = open_runtime(fused.with_plan(plan_runtime(fused, cpu=AVX2)), "onnx")
    assert runtime.takes_jobs and runtime.stride == STRIDE
    aasist, gmm = runtime.part_names
    assert runtime.part_names == names(fused) and aasist == "aasist-l"
    about = describe(runtime)
    assert about["reuse"] is True and "member by member" in about["why"]
    assert [(m["name"], m["fast_path"], m["reuse"]) for m in about["members"]] == [
        (aasist, "exact", True),
        (gmm, None, False),
    ]
    jobs = stream_jobs(speech_clips, fused.input_samples)
    windows = np.stack([job.samples for job in jobs])
    graph = open_runtime(fused, "onnx")
    want, want_parts = graph.score_parts(windows)
    # two calls, as a worker makes them: the second reuses what the first left
    half = len(jobs) // 2
    got = [runtime.score_parts(jobs[:half]), runtime.score_parts(jobs[half:])]
    score = np.concatenate([g[0] for g in got])
    parts = np.concatenate([g[1] for g in got])
    np.testing.assert_allclose(parts, want_parts, atol=EXACT, rtol=1e-5)
    np.testing.assert_allclose(score, want, atol=EXACT, rtol=1e-5)
    config = FusionConfig.from_dict(fused.config)
    np.testing.assert_allclose(score, config.bias + parts @ np.array(config.weights), atol=1e-5)
    stats = runtime.members[0].stats
    assert stats.reused >= len(jobs) - 2 and stats.encoder_samples < 0.6 * stats.windows * 64600
    # plain windows (no stream): every member on whole windows, the same scores
    logits, plain = runtime(windows[:3])
    np.testing.assert_allclose(plain, want[:3], atol=EXACT, rtol=1e-5)
    assert np.array_equal(logits[:, 1], plain) and not logits[:, 0].any()


def test_serve_streams_a_fusion_member_by_member(fused, data_dir):
    """``voicescreen serve`` on a fusion: ``/v1/models`` lists each member's runtime, and a
    stream, asking for parts, scores each window as the fusion's graph does offline."""
    clip = dev_clip(data_dir, "spoof", 5.0, 8.0)
    # --fast-path exact: the AASIST member on the exact graph on every CPU (no bf16 compile)
    args = ["--bundle", str(fused.source), "--max-delay-ms", "0", "--fast-path", "exact"]
    with serve_process(args) as server:
        (model,) = server.models["models"]
        start, *rest = pcm_messages(clip)
        messages = [({**start[0], "parts": True}, start[1]), *rest]
        result = run(converse(server.url("/v1/stream", "ws"), messages, realtime=False))
    runtime = model["runtime"]
    assert model["architecture"] == "fusion" and runtime["reuse"] is True
    aasist, gmm = names(fused)
    assert [(m["name"], m["fast_path"], m["reuse"]) for m in runtime["members"]] == [
        (aasist, "exact", True),
        (gmm, None, False),
    ]
    assert "member by member" in server.log.split("chosen: ", 1)[-1]
    assert "hop 1.000 s -> 0.957 s" in server.log
    assert result.close_code == 1000 and not result.errors
    offline = Scorer(fused).score_file(clip, hop=GRID_HOP)  # the fusion's own graph
    events = {
        (m["start"], m["end"]): m
        for m in result.messages
        if m["type"] == "score" and not m["early"]
    }
    matched = [w for w in offline.windows if (w.start, w.end) in events]
    assert len(matched) >= 2
    config = FusionConfig.from_dict(fused.config)
    for w in matched:
        event = events[w.start, w.end]
        assert event["raw"] == pytest.approx(w.score, abs=EXACT)
        parts = np.array([event["parts"][name] for name in (aasist, gmm)])
        assert event["raw"] == pytest.approx(config.bias + parts @ config.weights, abs=1e-4)
