"""The Ray Serve backend end to end on this machine: a local Ray instance (loopback, 2 CPUs, no
dashboard, a small object store), AASIST-L deployed as two replicas, and a real server sending
its windows there (``--backend ray``).

The server's WebSocket tests (test_web_stream.py) run here unchanged against that server; then
the replicas themselves, overload, timeouts, a replica killed in the middle of live streams, and
``voicescreen worker --ray`` deploying a model alone for ingest nodes elsewhere.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import time

import httpx
import numpy as np
import pytest
import ray
import test_web_stream as web
from ray import serve
from web_support import dev_clip, parse_metrics, run, start_server

from voicescreen.audio import SAMPLE_RATE, load_audio
from voicescreen.models import store
from voicescreen.models.bundle import load_bundle
from voicescreen.runtimes import BackendError, RayOptions, open_runtime, open_runtimes
from voicescreen.runtimes import ray as rayserve
from voicescreen.stream import AudioFormat, BatchOptions, InferenceWorker, Session
from voicescreen.web.client import converse, pcm_messages
from voicescreen.web.config import ServerConfig

REPLICAS = 2

# The fixtures and the WebSocket tests of test_web_stream.py, in its order; here they run against
# the ``server`` below.
bundle, scorer, clips = web.bundle, web.scorer, web.clips
test_a_stream_scores_like_the_offline_scorer = web.test_a_stream_scores_like_the_offline_scorer
test_a_44k_stereo_float_stream_is_resampled_like_the_file = (
    web.test_a_44k_stereo_float_stream_is_resampled_like_the_file
)
test_score_endpoint_returns_what_the_cli_prints = (
    web.test_score_endpoint_returns_what_the_cli_prints
)
test_metrics_are_prometheus_text = web.test_metrics_are_prometheus_text
test_tap_streams_a_file_at_real_time_pace = web.test_tap_streams_a_file_at_real_time_pace
test_the_server_logs_no_errors_for_good_streams = (
    web.test_the_server_logs_no_errors_for_good_streams
)
check_stream = web.check_stream


@pytest.fixture(scope="module")
def ray_local():
    """A Ray instance in this process, on loopback only; shut down after the module."""
    rayserve.prepare_local_instance()
    ray.init(
        address="local",
        num_cpus=2,
        object_store_memory=rayserve.LOCAL_OBJECT_STORE_BYTES,
        include_dashboard=False,
        log_to_driver=False,
    )
    try:
        yield
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def server(ray_local, bundle):
    """The server of test_web_stream.py with ``--backend ray --replicas 2``."""
    config = ServerConfig(
        bundles=[bundle], backend="ray", ray=RayOptions(address="local", replicas=REPLICAS)
    )
    server = start_server(config)
    yield server
    server.stop()


def replica_pids(model: str, want: int = REPLICAS, tries: int = 100) -> set[int]:
    """The process ids of ``model``'s replicas, asking until ``want`` different ones answer."""
    handle = serve.get_app_handle(rayserve.app_name(model))
    pids: set[int] = set()
    for _ in range(tries):
        pids.add(rayserve.describe(handle)["pid"])
        if len(pids) >= want:
            break
    return pids


def test_the_replicas_score_like_the_bundle(server, bundle):
    """Both replicas answer; a batch larger than a replica's request limit is split and its
    scores come back in order, equal to the bundle's model run here."""
    assert server.state.runtimes["aasist-l"].providers == ["ray:voicescreen-aasist-l x2"]
    assert len(replica_pids("aasist-l")) == REPLICAS
    x = 0.1 * np.random.default_rng(0).standard_normal((7, bundle.input_samples))
    (runtime,) = open_runtimes(
        {"aasist-l": bundle}, "ray", ray=RayOptions(address="local", replicas=REPLICAS)
    ).values()  # the running deployment, as another ingest node would find it
    runtime.max_batch = 3  # 3 requests: 3 + 3 + 1 windows
    logits, score = runtime(x)
    want_logits, want_score = open_runtime(bundle, "onnx")(x.astype(np.float32))
    np.testing.assert_allclose(score, want_score, atol=1e-4)
    np.testing.assert_allclose(logits, want_logits, atol=1e-4)


def test_concurrent_streams_share_the_replicas(server, scorer, data_dir):
    paths = [dev_clip(data_dir, k, 4.0, 4.3, i) for k in ("bonafide", "spoof") for i in (0, 1)]
    offline = {p: scorer.score_signal(load_audio(p)) for p in paths}
    before = parse_metrics(httpx.get(server.url("/metrics")).text)

    async def main():
        return await asyncio.gather(
            *(
                converse(
                    server.ws_url("/v1/stream"),
                    pcm_messages(paths[k % len(paths)], stream_id=f"c{k}", chunk_ms=100),
                    realtime=False,
                )
                for k in range(6)
            )
        )

    results = run(main())
    after = parse_metrics(httpx.get(server.url("/metrics")).text)
    for k, result in enumerate(results):
        check_stream(result, offline[paths[k % len(paths)]])
    scored = sum(r.messages[-1]["models"]["aasist-l"]["scored"] for r in results)
    key = '{model="aasist-l"}'
    assert after[f"voicescreen_worker_scored_total{key}"] - before[
        f"voicescreen_worker_scored_total{key}"
    ] == pytest.approx(scored)
    batches = after[f"voicescreen_worker_batches_total{key}"]
    assert batches - before[f"voicescreen_worker_batches_total{key}"] < scored  # batched


def test_overload_is_reported_as_with_the_local_worker(server, bundle, data_dir):
    """The ingest side bounds what it sends: one batch in flight, two windows queued; a stream
    that outruns that gets ``overloaded`` events and every window is accounted for."""
    (runtime,) = open_runtimes(
        {"aasist-l": bundle}, "ray", ray=RayOptions(address="local", inflight=1)
    ).values()
    assert runtime.concurrency == 1
    x = load_audio(dev_clip(data_dir, "bonafide", 5.5, 6.5))

    async def main():
        w = InferenceWorker(
            runtime,
            name="aasist-l",
            input_samples=bundle.input_samples,
            score=bundle.score,
            options=BatchOptions(max_batch=2, max_wait_ms=0, max_queue=2),
        )
        async with w:
            sessions = [
                Session(w, fmt=AudioFormat("float32", SAMPLE_RATE), stream_id=f"o{k}")
                for k in range(3)
            ]
            for s in sessions:  # each stream arrives all at once: the queue overflows
                s.push(x)
            return w, [await s.close() for s in sessions]

    w, out = run(main())
    shed = 0
    for events in out:
        s = events[-1].models["aasist-l"]
        assert s.windows == s.scored + s.no_speech + s.shed and s.failed == 0
        seen = [e.window for e in events if e.type in ("score", "no_speech")]
        seen += [n for e in events if e.type == "overloaded" for n in e.windows]
        assert sorted(seen) == list(range(s.windows))
        shed += s.shed
    assert shed > 0 and shed == w.metrics.shed
    assert w.metrics.submitted == w.metrics.scored + w.metrics.shed


def test_a_batch_past_its_timeout_fails_instead_of_hanging(server, bundle):
    (runtime,) = open_runtimes(
        {"aasist-l": bundle}, "ray", ray=RayOptions(address="local", timeout_s=0.001)
    ).values()
    t0 = time.monotonic()
    with pytest.raises(BackendError, match="no answer within 0.001 s"):
        runtime(np.zeros((4, bundle.input_samples), np.float32))
    assert time.monotonic() - t0 < 5


def test_a_replica_killed_mid_stream(server, data_dir):
    """SIGKILL one replica while four calls stream in real time: every stream still ends with
    its summary, keeps getting scores after the kill, and any window lost with the replica is
    an explicit ``model_error`` event; Serve starts a new replica."""
    victim = min(replica_pids("aasist-l"))
    paths = [dev_clip(data_dir, k, 5.5, 6.5, i) for k in ("bonafide", "spoof") for i in (0, 1)]
    arrivals: list[tuple[float, dict]] = []

    async def main():
        loop = asyncio.get_running_loop()
        first = asyncio.Event()

        def seen(message: dict) -> None:
            arrivals.append((loop.time(), message))
            if message["type"] == "score":
                first.set()

        calls = [
            asyncio.create_task(
                converse(
                    server.ws_url("/v1/stream"),
                    pcm_messages(p, stream_id=f"k{k}"),
                    realtime=True,
                    on_message=seen,
                )
            )
            for k, p in enumerate(paths)
        ]
        await first.wait()
        os.kill(victim, signal.SIGKILL)
        killed = loop.time()
        return killed, await asyncio.gather(*calls)

    killed, results = run(main())
    for result in results:
        kinds = [m["type"] for m in result.messages]
        assert kinds[0] == "started" and kinds[-1] == "summary", kinds
        assert result.close_code == 1000
        summary = result.messages[-1]
        s = summary["models"]["aasist-l"]
        assert summary["reason"] == "end"
        assert s["windows"] == s["scored"] + s["no_speech"] + s["failed"] + s["shed"]
        errors = [m for m in result.messages if m["type"] == "error"]
        assert all(e["code"] == "model_error" and not e["fatal"] for e in errors)
        assert len(errors) == s["failed"]
        accounted = [m["window"] for m in result.messages if m["type"] in ("score", "no_speech")]
        accounted += [e["window"] for e in errors]
        accounted += [n for m in result.messages if m["type"] == "overloaded" for n in m["windows"]]
        assert sorted(accounted) == list(range(s["windows"]))
    assert any(t > killed and m["type"] == "score" for t, m in arrivals)  # results go on
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # Serve replaces the dead replica
        status = serve.status().applications[rayserve.app_name("aasist-l")]
        if status.deployments[rayserve.DEPLOYMENT].replica_states.get("RUNNING") == REPLICAS:
            pids = replica_pids("aasist-l")
            if len(pids) == REPLICAS and victim not in pids:
                break
        time.sleep(0.5)
    else:
        pytest.fail("Serve did not replace the killed replica within 60 s")


def test_worker_deploys_a_model_alone_and_refuses_another(ray_local, bundle, tmp_path, capsys):
    """``voicescreen worker --ray`` deploys a model for ingest nodes elsewhere; an ingest node
    that finds another model.onnx deployed under the same name refuses to start."""
    from voicescreen.cli import main
    from voicescreen.web import create_app
    from voicescreen.web.state import ConfigError

    twin = tmp_path / "twin"
    shutil.copytree(bundle.source, twin)
    card = json.loads((twin / "card.json").read_text())
    (twin / "card.json").write_text(json.dumps({**card, "name": "twin"}))
    argv = ["worker", "--ray", "--bundle", str(twin), "--cpus-per-replica", "0"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "voicescreen-twin: 1 replica(s) of twin (aasist-l, model.onnx sha256 " in out
    assert rayserve.app_name("twin") in serve.status().applications

    # an ingest node elsewhere: no --replicas, so it uses the deployment as it is
    (runtime,) = open_runtimes(
        {"twin": load_bundle(twin)}, "ray", ray=RayOptions(address="auto")
    ).values()
    assert runtime.replicas == 1
    x = 0.1 * np.random.default_rng(1).standard_normal((2, bundle.input_samples))
    np.testing.assert_allclose(
        runtime(x)[1], open_runtime(bundle, "onnx")(x.astype(np.float32))[1], atol=1e-4
    )

    other = tmp_path / "other"  # the shipped LFCC-GMM model under the same name
    shutil.copytree(store.DEFAULT_BUNDLE, other)
    card = json.loads((other / "card.json").read_text())
    (other / "card.json").write_text(json.dumps({**card, "name": "twin"}))
    config = ServerConfig(bundles=[str(other)], backend="ray", ray=RayOptions(address="auto"))
    with pytest.raises(ConfigError, match="serves another model.onnx"):
        create_app(config)

    assert main(["worker", "--ray", "--bundle", str(twin), "--delete"]) == 0
    assert rayserve.app_name("twin") not in serve.status().applications
