"""The batched worker and the cascade, with stand-in runtimes whose scores are known exactly."""

import asyncio
import threading

import numpy as np
import pytest

from voicescreen.audio import SAMPLE_RATE, sliding_windows
from voicescreen.models.bundle import ScoreSpec
from voicescreen.stream import (
    AudioFormat,
    BatchOptions,
    Cascade,
    InferenceWorker,
    Session,
    VadOptions,
    WindowOptions,
)
from voicescreen.stream.worker import ModelError

N = 400  # samples per window: small stand-in model input
GUARD = 10  # seconds: a test that waits longer than this is broken, not slow


class MeanRuntime:
    """Scores a window by its mean (times ``gain``), records each batch and the thread it ran on."""

    def __init__(self, gain: float = 1.0, fail: bool = False) -> None:
        self.gain, self.fail = gain, fail
        self.batches: list[int] = []
        self.threads: set[int] = set()

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.threads.add(threading.get_ident())
        self.batches.append(len(x))
        if self.fail:
            raise RuntimeError("boom")
        score = self.gain * x.mean(axis=1, dtype=np.float64)
        return np.stack([-score, score], axis=1), score.astype(np.float32)


def worker(runtime, *, name="mean", n=N, threshold=0.0, scale=1.0, **options) -> InferenceWorker:
    return InferenceWorker(
        runtime,
        name=name,
        input_samples=n,
        score=ScoreSpec("bonafide_logit", threshold, scale),
        options=BatchOptions(**options),
    )


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, GUARD))


def window(value: float) -> np.ndarray:
    return np.full(N, value, dtype=np.float32)


def test_batches_are_bounded_and_results_in_order():
    rt = MeanRuntime()

    async def main():
        async with worker(rt, threshold=0.1, scale=2.0, max_batch=4, max_wait_ms=5) as w:
            futures = [w.submit(window(i / 100)) for i in range(10)]
            results = await asyncio.gather(*futures)
            return w, results

    w, results = run(main())
    assert rt.batches == [4, 4, 2]
    assert rt.threads and threading.get_ident() not in rt.threads  # off the event loop
    for i, r in enumerate(results):
        assert r.raw == pytest.approx(i / 100, abs=1e-6)
        assert r.calibrated == pytest.approx(2.0 * (i / 100 - 0.1), abs=1e-6)
        assert r.model == r.scored_by == "mean"
    assert [r.batch for r in results] == [4] * 8 + [2] * 2
    m = w.metrics.snapshot()
    assert (m["submitted"], m["scored"], m["shed"], m["batches"]) == (10, 10, 0, 3)
    assert m["batch_sizes"] == {2: 1, 4: 2} and m["latency_ms"]["p99"] is not None


def test_a_lone_window_goes_when_its_wait_is_over():
    rt = MeanRuntime()

    async def main():
        async with worker(rt, max_batch=64, max_wait_ms=1) as w:
            return await w.score(window(0.5))

    assert run(main()).raw == pytest.approx(0.5)
    assert rt.batches == [1]


def test_full_queue_sheds_and_counts():
    rt = MeanRuntime()

    async def main():
        async with worker(rt, max_batch=2, max_wait_ms=0, max_queue=3) as w:
            futures = [w.submit(window(i)) for i in range(5)]
            assert [f is None for f in futures] == [False, False, False, True, True]
            await asyncio.gather(*futures[:3])
            return w

    w = run(main())
    assert (w.metrics.scored, w.metrics.shed, w.metrics.submitted) == (3, 2, 5)


def test_windows_queued_past_the_latency_budget_are_shed():
    """A model slower than the stream: windows that waited over max_delay_ms are refused with
    Overloaded when the next batch is formed, so the ones after them are not delayed further."""
    from voicescreen.stream.worker import Overloaded

    class SlowRuntime(MeanRuntime):
        def __call__(self, x):
            threading.Event().wait(0.15)
            return super().__call__(x)

    rt = SlowRuntime()

    async def main():
        async with worker(rt, max_batch=1, max_wait_ms=0, max_delay_ms=100) as w:
            futures = [w.submit(window(i)) for i in range(4)]
            results = await asyncio.gather(*futures, return_exceptions=True)
            late = w.submit(window(9))  # the queue is empty again: scored at once
            return w, results, await late

    w, results, late = run(main())
    # window 0 runs at once; 1-3 wait 150 ms behind it, over the 100 ms budget
    assert not isinstance(results[0], Exception)
    assert all(isinstance(r, Overloaded) for r in results[1:]), results
    assert "waited over 100 ms" in str(results[1]) and results[1].reason == "too late"
    assert late.raw == pytest.approx(9.0)
    assert (w.metrics.scored, w.metrics.shed, w.metrics.submitted) == (2, 3, 5)
    with pytest.raises(ValueError):
        BatchOptions(max_delay_ms=-1)


def test_cancelled_windows_are_not_run():
    rt = MeanRuntime()

    async def main():
        async with worker(rt, max_batch=8, max_wait_ms=0) as w:
            futures = [w.submit(window(i)) for i in range(4)]
            futures[1].cancel()
            futures[2].cancel()
            await asyncio.gather(futures[0], futures[3])
            return w

    w = run(main())
    assert rt.batches == [2] and w.metrics.cancelled == 2 and w.metrics.scored == 2


def test_a_failing_model_fails_its_windows_not_the_worker():
    rt = MeanRuntime(fail=True)

    async def main():
        async with worker(rt, max_batch=2, max_wait_ms=0) as w:
            with pytest.raises(ModelError, match="boom"):
                await w.score(window(0.1))
            rt.fail = False
            return await w.score(window(0.2)), w

    result, w = run(main())
    assert result.raw == pytest.approx(0.2) and w.metrics.failed == 1


def test_cascade_escalates_only_windows_near_the_threshold():
    cheap, expensive = MeanRuntime(), MeanRuntime(gain=10.0)

    async def main():
        screen = worker(cheap, name="cheap", max_wait_ms=0)
        expert = worker(expensive, name="expert", max_wait_ms=0)
        cascade = Cascade(screen, expert, band=0.5)
        values = [-2.0, -0.4, 0.0, 0.3, 1.5]
        results = await asyncio.gather(*(cascade.submit(window(v)) for v in values))
        await screen.close()
        await expert.close()
        return cascade, results

    cascade, results = run(main())
    assert [r.scored_by for r in results] == ["cheap", "expert", "expert", "expert", "cheap"]
    assert all(r.model == "cheap>expert" for r in results)
    assert [r.screen for r in results] == pytest.approx([-2.0, -0.4, 0.0, 0.3, 1.5])
    assert [r.calibrated for r in results] == pytest.approx([-2.0, -4.0, 0.0, 3.0, 1.5])
    assert cascade.metrics.escalated == 3 and sum(expensive.batches) == 3


def test_cascade_keeps_the_cheap_score_when_the_expert_is_full():
    async def main():
        screen = worker(MeanRuntime(), name="cheap", max_wait_ms=0)
        expert = worker(
            MeanRuntime(gain=10.0), name="expert", max_wait_ms=1000, max_batch=99, max_queue=1
        )
        cascade = Cascade(screen, expert, band=1.0)
        expert.submit(window(0.0))  # fills the expert's queue
        results = await asyncio.gather(*(cascade.submit(window(v)) for v in (0.1, 0.2)))
        await screen.close()
        await expert.close()
        return cascade, results

    cascade, results = run(main())
    assert [r.scored_by for r in results] == ["cheap", "cheap"]
    assert cascade.metrics.escalations_shed == 2


def test_cascade_models_must_take_the_same_windows():
    with pytest.raises(ValueError, match="different windows"):
        Cascade(worker(MeanRuntime(), n=400), worker(MeanRuntime(), n=500), band=1.0)


def _ramp(stream: int, n: int) -> np.ndarray:
    """A signal whose every window has its own mean: offset by stream, rising with time."""
    return (0.01 * stream + 0.002 * np.arange(n) / n).astype(np.float32)


def test_many_concurrent_streams_each_get_their_own_results_in_order():
    streams, window_samples, hop = 24, 4000, 0.05  # 800-sample hop
    rt = MeanRuntime()
    rng = np.random.default_rng(0)
    signals = [_ramp(k, int(rng.integers(3000, 12000))) for k in range(streams)]

    async def feed(session: Session, x: np.ndarray, seed: int) -> list:
        r, i, events = np.random.default_rng(seed), 0, []
        while i < x.size:
            k = int(r.integers(1, 1500))
            events += await session.feed(x[i : i + k])
            i += k
            await asyncio.sleep(0)  # let the other streams and the worker run
        return events + await session.close()

    async def main():
        async with worker(rt, n=window_samples, max_batch=8, max_wait_ms=1, max_queue=1000) as w:
            sessions = [
                Session(
                    w,
                    fmt=AudioFormat("float32", SAMPLE_RATE),
                    window=WindowOptions(window_samples, hop, 0.1),
                    vad=VadOptions(enabled=False),
                    stream_id=f"s{k}",
                )
                for k in range(streams)
            ]
            out = await asyncio.gather(
                *(feed(s, x, k) for k, (s, x) in enumerate(zip(sessions, signals, strict=True)))
            )
            return w, out

    w, out = run(main())
    assert max(rt.batches) > 1  # windows of different streams shared model calls
    for k, (x, events) in enumerate(zip(signals, out, strict=True)):
        assert {e.stream for e in events} == {f"s{k}"}
        scores = [e for e in events if e.type == "score"]
        assert [e.window for e in scores] == list(range(len(scores)))  # in order, none missing
        regular = [e for e in scores if not e.early]
        want = list(sliding_windows(x, window_samples, int(hop * SAMPLE_RATE)))
        assert [(e.start, e.end) for e in regular] == [
            (v.start / SAMPLE_RATE, v.end / SAMPLE_RATE) for v in want
        ]
        np.testing.assert_allclose(
            [e.raw for e in regular], [v.samples.mean(dtype=np.float64) for v in want], atol=1e-6
        )
        assert events[-1].type == "summary" and events[-1].models["mean"].scored == len(scores)
    assert w.metrics.scored == sum(len([e for e in ev if e.type == "score"]) for ev in out)
