"""The pluggable window -> score call: runtimes with several batches in flight, runtimes that
refuse batches (shed, ``overloaded``) or fail them (``model_error``), and the backend options.
Stand-in runtimes whose scores are known exactly; Ray and Triton themselves are tested in
test_scale_ray.py and test_scale_triton.py."""

import asyncio
import threading
import time

import numpy as np
import pytest
from test_stream_worker import MeanRuntime, N, run, window, worker

from voicescreen.audio import SAMPLE_RATE
from voicescreen.runtimes import BackendError, RayOptions, TritonOptions, open_runtimes
from voicescreen.stream import AudioFormat, Session, VadOptions, WindowOptions
from voicescreen.stream.worker import Overloaded
from voicescreen.web.config import ServerConfig


class GatedRuntime(MeanRuntime):
    """Holds every call until ``gate`` opens; counts the calls running at once."""

    def __init__(self, concurrency: int) -> None:
        super().__init__()
        self.concurrency = concurrency
        self.gate = threading.Event()
        self.running = 0
        self.most = 0
        self._lock = threading.Lock()

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            assert self.gate.wait(5), "the test never opened the gate"
            return super().__call__(x)
        finally:
            with self._lock:
                self.running -= 1


def test_a_runtime_with_concurrency_gets_that_many_batches_in_flight():
    rt = GatedRuntime(concurrency=3)

    async def main():
        async with worker(rt, max_batch=2, max_wait_ms=0, max_queue=100) as w:
            futures = [w.submit(window(i / 100)) for i in range(12)]
            for _ in range(200):  # until three calls hold the gate (each holds a thread)
                if rt.running == 3:
                    break
                await asyncio.sleep(0.01)
            running, queued = rt.running, w.queued
            rt.gate.set()
            return running, queued, await asyncio.gather(*futures), w

    running, queued, results, w = run(main())
    assert running == 3 and rt.most == 3  # never more than the runtime's concurrency
    assert queued == 12 - 3 * 2  # the rest waited in the queue meanwhile
    assert [r.raw for r in results] == pytest.approx([i / 100 for i in range(12)], abs=1e-6)
    assert w.metrics.scored == 12 and w.metrics.batches == sum(1 for _ in rt.batches)
    assert len(rt.threads) == 3  # one thread per call in flight


class RefusingRuntime(MeanRuntime):
    """Refuses (``Overloaded``) or fails (``BackendError``) the batches numbered in ``bad``."""

    def __init__(self, bad: dict[int, Exception]) -> None:
        super().__init__()
        self.bad = bad

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        call = len(self.batches)
        self.batches.append(len(x))
        if call in self.bad:
            raise self.bad[call]
        score = x.mean(axis=1, dtype=np.float64)
        return np.stack([-score, score], axis=1), score


def stream_events(rt, n_windows: int, **options):
    """One stream of ``n_windows`` (hop = window, so none overlap) through a worker on ``rt``;
    each window's mean is its index / 100."""
    x = np.concatenate([window(i / 100) for i in range(n_windows)])

    async def main():
        async with worker(rt, **options) as w:
            session = Session(
                w,
                fmt=AudioFormat("float32", SAMPLE_RATE),
                window=WindowOptions(N, N / SAMPLE_RATE, None),
                vad=VadOptions(enabled=False),
                stream_id="s",
            )
            events = []
            for k in range(n_windows):  # one window at a time, each its own batch
                events += await session.feed(x[k * N : (k + 1) * N])
                await asyncio.sleep(0.02)
            return events + await session.close(), w

    return run(main())


def test_a_batch_the_remote_side_refuses_is_reported_as_overloaded():
    rt = RefusingRuntime({1: Overloaded("queue full"), 2: Overloaded("queue full")})
    events, w = stream_events(rt, 5, max_batch=1, max_wait_ms=0)
    kinds = [e.type for e in events]
    assert "error" not in kinds
    shed = [e for e in events if e.type == "overloaded"]
    assert [win for e in shed for win in e.windows] == [1, 2]
    assert [e.window for e in events if e.type == "score"] == [0, 3, 4]
    # in window order: score 0, the shed windows 1 and 2, then the scores of 3 and 4
    relayed = [e for e in events if e.type in ("score", "overloaded")]
    order = [w for e in relayed for w in (e.windows if e.type == "overloaded" else [e.window])]
    assert order == [0, 1, 2, 3, 4]
    summary = events[-1].models["mean"]
    assert (summary.windows, summary.scored, summary.shed, summary.failed) == (5, 3, 2, 0)
    assert (w.metrics.submitted, w.metrics.scored, w.metrics.shed) == (5, 3, 2)


def test_a_batch_the_remote_side_loses_is_a_model_error_per_window():
    rt = RefusingRuntime({0: BackendError("replica lost (ActorDiedError), 2 tries")})
    events, w = stream_events(rt, 3, max_batch=1, max_wait_ms=0)
    errors = [e for e in events if e.type == "error"]
    assert [(e.code, e.window, e.fatal) for e in errors] == [("model_error", 0, False)]
    assert "replica lost" in errors[0].message
    assert [e.window for e in events if e.type == "score"] == [1, 2]
    summary = events[-1]
    assert summary.reason == "end" and summary.models["mean"].failed == 1
    assert w.metrics.failed == 1 and w.metrics.scored == 2


def test_a_ray_cluster_that_is_not_there_is_refused_at_once():
    from voicescreen.runtimes.ray import require_reachable

    t0 = time.monotonic()
    for address in ("127.0.0.1:9", "ray://127.0.0.1:9"):
        with pytest.raises(BackendError, match="nothing answers at 127.0.0.1:9"):
            require_reachable(address)
    assert time.monotonic() - t0 < 10


def test_backend_options_are_checked():
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        ServerConfig(backend="tpu")
    with pytest.raises(ValueError, match="--triton-url"):
        ServerConfig(backend="triton")
    with pytest.raises(ValueError, match="replicas must be at least 1"):
        RayOptions(replicas=0)
    with pytest.raises(ValueError, match="inflight"):
        TritonOptions(url="127.0.0.1:8001", inflight=0)
    with pytest.raises(ValueError, match="unknown backend"):
        open_runtimes({}, "tpu")


def test_the_tail_window_of_a_stream_whose_results_are_all_in_comes_before_the_summary():
    """A stream ends off the hop grid after every earlier window was reported: its end-aligned
    tail window is still scored and reported, then the summary (never after it, never lost)."""
    rt = MeanRuntime()
    x = np.arange(3 * N + N // 2, dtype=np.float32) / 1e4  # 3 windows, then a half-window tail

    async def main():
        async with worker(rt, max_batch=1, max_wait_ms=0) as w:
            session = Session(
                w,
                fmt=AudioFormat("float32", SAMPLE_RATE),
                window=WindowOptions(N, N / SAMPLE_RATE, None),
                vad=VadOptions(enabled=False),
            )
            events = await session.feed(x)
            while len([e for e in events if e.type == "score"]) < 3:  # every window reported
                events += await session.feed(np.zeros(0, np.float32))
                await asyncio.sleep(0.01)
            return events + await session.close(), w

    events, w = run(main())
    scores = [e for e in events if e.type == "score"]
    assert [e.window for e in scores] == [0, 1, 2, 3]
    assert (scores[-1].start, scores[-1].end) == (2.5 * N / SAMPLE_RATE, 3.5 * N / SAMPLE_RATE)
    assert scores[-1].raw == pytest.approx(x[-N:].mean(dtype=np.float64), abs=1e-6)
    assert events[-1].type == "summary" and events[-1].models["mean"].windows == 4
    assert w.metrics.submitted == w.metrics.scored == 4


def test_a_cascade_keeps_the_cheap_score_when_the_expert_is_refused():
    from voicescreen.stream import Cascade

    async def main():
        screen = worker(MeanRuntime(), name="cheap", max_wait_ms=0)
        expert = worker(RefusingRuntime({0: Overloaded("queue full")}), name="expert")
        cascade = Cascade(screen, expert, band=1.0)
        result = await cascade.submit(window(0.2))
        await screen.close()
        await expert.close()
        return cascade, result

    cascade, result = run(main())
    assert result.scored_by == "cheap" and result.calibrated == pytest.approx(0.2)
    assert cascade.metrics.escalated == 1 and cascade.metrics.escalations_shed == 1


def test_serve_flags_choose_the_backend():
    import argparse

    from voicescreen.cli.serve import add_parsers, config_from_args

    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers())
    local = config_from_args(parser.parse_args(["serve"]))
    assert local.backend == "onnx" and local.ray == RayOptions() and local.triton.url is None
    argv = ["serve", "--backend", "ray", "--ray-address", "ray://head:10001", "--replicas", "4"]
    argv += ["--gpus-per-replica", "1", "--remote-timeout", "5", "--remote-inflight", "8"]
    ray = config_from_args(parser.parse_args(argv))
    assert ray.backend == "ray"
    assert ray.ray == RayOptions(
        address="ray://head:10001", replicas=4, gpus_per_replica=1.0, timeout_s=5.0, inflight=8
    )
    argv = ["serve", "--backend", "triton", "--triton-url", "gpu1:8001"]
    triton = config_from_args(parser.parse_args(argv))
    assert triton.triton == TritonOptions(url="gpu1:8001")
    with pytest.raises(ValueError, match="--triton-url"):
        config_from_args(parser.parse_args(["serve", "--backend", "triton"]))
