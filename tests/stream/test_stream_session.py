"""Sessions end to end with a real model: AASIST-L, official weights, exported as a bundle."""

import asyncio
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from voicescreen.audio import SAMPLE_RATE, load_audio, resample, sliding_windows
from voicescreen.models.bundle import ScoreSpec
from voicescreen.runtimes import open_runtime
from voicescreen.scoring import Scorer
from voicescreen.stream import (
    AudioFormat,
    BatchOptions,
    InferenceWorker,
    Session,
    VadOptions,
    WindowOptions,
    decode,
    event_from_dict,
    load_scorers,
)
from voicescreen.stream.codecs import encode_mulaw

GUARD = 120  # seconds: far beyond what any of these takes on 2 cores


@pytest.fixture(scope="session")
def bundle(export_aasist_l):
    return export_aasist_l(threshold=0.5, scale=1.5)


@pytest.fixture(scope="session")
def runtime(bundle):
    return open_runtime(bundle, "onnx")


@pytest.fixture(scope="session")
def scorer(bundle):
    return Scorer(bundle)


@pytest.fixture(scope="session")
def dev_clips(data_dir) -> dict[str, Path]:
    """Dev-split clips by name, with their durations."""
    rows = [
        r.split()
        for r in (data_dir / "protocols" / "VS.cm.dev.trl.txt").read_text().split("\n")
        if r.strip()
    ]
    return {r[1]: data_dir / "flac" / f"{r[1]}.flac" for r in rows}


def clips_between(dev_clips, low: float, high: float, count: int) -> list[Path]:
    found = [p for p in dev_clips.values() if low <= sf.info(str(p)).duration <= high]
    assert len(found) >= count, f"need {count} dev clips of {low}-{high} s"
    return found[:count]


def make_worker(runtime, bundle, **options) -> InferenceWorker:
    return InferenceWorker(
        runtime,
        name=bundle.name,
        input_samples=bundle.input_samples,
        score=bundle.score,
        options=BatchOptions(**options),
    )


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, GUARD))


async def stream_bytes(session: Session, data: bytes, frame: int, seed: int, largest: int):
    """Feed ``data`` in random whole-frame chunks, letting other tasks run in between."""
    rng, i, events = np.random.default_rng(seed), 0, []
    while i < len(data):
        k = frame * int(rng.integers(1, largest))
        events += await session.feed(data[i : i + k])
        i += k
        await asyncio.sleep(0)
    return events + await session.close()


def pcm16(path: Path) -> bytes:
    x, rate = sf.read(str(path), dtype="int16")
    assert rate == SAMPLE_RATE
    return x.astype("<i2").tobytes()


def assert_matches_offline(events, offline, model):
    scores = [e for e in events if e.type == "score" and e.model == model and not e.early]
    assert [(e.start, e.end) for e in scores] == [(w.start, w.end) for w in offline.windows]
    np.testing.assert_allclose(
        [e.raw for e in scores], [w.score for w in offline.windows], atol=1e-4, rtol=0
    )
    np.testing.assert_allclose(
        [e.calibrated for e in scores], [w.calibrated for w in offline.windows], atol=1e-4, rtol=0
    )


def test_a_stream_scores_like_the_offline_scorer(bundle, runtime, scorer, dev_clips):
    """PCM16 bytes in random chunks -> the same windows and scores as ``voicescreen score``."""
    path = max(clips_between(dev_clips, 6.0, 7.5, 2), key=lambda p: sf.info(str(p)).duration)
    offline = scorer.score_signal(load_audio(path))
    assert len(offline.windows) >= 3
    # the scores differ between windows far more than the tolerance, so a misaligned window shows
    assert np.ptp([w.score for w in offline.windows]) > 1e-2

    class Mean:  # a second model with another window length rides along on the same stream
        def __call__(self, x):
            s = x.mean(axis=1)
            return np.stack([-s, s], axis=1), s

    async def main():
        mean = InferenceWorker(
            Mean(), name="mean", input_samples=64000, score=ScoreSpec("bonafide_logit")
        )
        async with make_worker(runtime, bundle, max_batch=4, max_wait_ms=5) as w, mean:
            session = Session({"aasist-l": w, "mean": mean}, stream_id="call-1")
            return await stream_bytes(session, pcm16(path), 2, 0, 5000)

    events = run(main())
    assert_matches_offline(events, offline, "aasist-l")
    x = load_audio(path)
    means = [e for e in events if e.type == "score" and e.model == "mean" and not e.early]
    want = list(sliding_windows(x, 64000, SAMPLE_RATE))
    assert [e.end for e in means] == [v.end / SAMPLE_RATE for v in want]
    np.testing.assert_allclose([e.raw for e in means], [v.samples.mean() for v in want], atol=1e-6)

    early = [e for e in events if e.type == "score" and e.model == "aasist-l" and e.early]
    assert early and early[0].end == pytest.approx(1.5) and early[0].start == 0.0
    assert all(e.latency_ms >= 0 and e.voiced > 0.3 for e in events if e.type == "score")
    summary = events[-1]
    assert summary.type == "summary" and summary.reason == "end"
    assert summary.duration == pytest.approx(offline.duration)
    s = summary.models["aasist-l"]
    assert s.scored == s.windows == len(offline.windows) + len(early) and s.shed == 0
    assert s.mean == pytest.approx(
        np.mean([e.calibrated for e in events if e.type == "score" and e.model == "aasist-l"])
    )
    for e in events:  # every event survives its JSON form
        assert event_from_dict(__import__("json").loads(e.to_json())).to_dict() == e.to_dict()


def test_a_telephone_stream_scores_like_the_same_audio_offline(bundle, runtime, scorer, dev_clips):
    """8 kHz mu-law in 20 ms packets (Twilio's format) -> decode + resample + windows."""
    path = clips_between(dev_clips, 4.2, 5.5, 1)[0]
    mulaw = encode_mulaw(np.round(resample(load_audio(path), 16000, 8000) * 32767))
    offline = scorer.score_signal(
        resample(decode(mulaw, AudioFormat("mulaw", 8000)), 8000)  # what load_audio would do
    )

    async def main():
        async with make_worker(runtime, bundle, max_batch=4, max_wait_ms=5) as w:
            session = Session(
                w,
                fmt=AudioFormat("mulaw", 8000),
                vad=VadOptions(min_voiced=0.0),
                window=WindowOptions(min_audio=None),
            )
            events = []
            for i in range(0, len(mulaw), 160):
                events += await session.feed(mulaw[i : i + 160])
            return events + await session.close()

    events = run(main())
    assert_matches_offline(events, offline, "aasist-l")
    assert not any(e.type == "score" and e.early for e in events)


def test_concurrent_streams_share_one_worker_and_get_their_own_results(
    bundle, runtime, scorer, dev_clips
):
    paths = clips_between(dev_clips, 4.1, 5.0, 4)
    offline = [scorer.score_signal(load_audio(p)) for p in paths]

    async def main():
        async with make_worker(runtime, bundle, max_batch=4, max_wait_ms=20) as w:
            sessions = [
                Session(
                    w,
                    stream_id=f"s{k}",
                    vad=VadOptions(min_voiced=0.0),
                    window=WindowOptions(min_audio=None),  # regular windows only: faster
                )
                for k in range(len(paths))
            ]
            out = await asyncio.gather(
                *(
                    stream_bytes(s, pcm16(p), 2, k, 3000)
                    for k, (s, p) in enumerate(zip(sessions, paths, strict=True))
                )
            )
            return w, out

    w, out = run(main())
    assert max(w.metrics.batch_sizes) > 1
    for k, events in enumerate(out):
        assert {e.stream for e in events} == {f"s{k}"}
        scores = [e for e in events if e.type == "score"]
        assert [e.window for e in scores] == list(range(len(scores)))
        assert_matches_offline(events, offline[k], "aasist-l")
    assert w.metrics.scored == sum(e.type == "score" for ev in out for e in ev)


def test_overload_is_reported_and_nothing_is_lost(bundle, runtime, dev_clips):
    path = clips_between(dev_clips, 4.0, 6.0, 1)[0]
    silence = np.zeros(int(4.5 * SAMPLE_RATE), np.float32)
    x = np.concatenate([silence[: int(1.5 * SAMPLE_RATE)], load_audio(path), silence])

    async def main():
        async with make_worker(runtime, bundle, max_batch=2, max_wait_ms=0, max_queue=2) as w:
            sessions = [
                Session(w, fmt=AudioFormat("float32", SAMPLE_RATE), stream_id=f"s{k}")
                for k in range(3)
            ]
            for s in sessions:  # each stream arrives all at once: the queue overflows
                s.push(x)
            out = [await s.close() for s in sessions]
            return w, out

    w, out = run(main())
    assert any(e.type == "overloaded" for ev in out for e in ev)
    total_shed = 0
    for events in out:
        summary = events[-1]
        assert summary.type == "summary"
        s = summary.models["aasist-l"]
        assert s.windows == s.scored + s.no_speech + s.shed + s.failed + s.cancelled
        seen = []
        for e in events:
            if e.type in ("score", "no_speech"):
                seen.append(e.window)
            elif e.type == "overloaded":
                assert e.model == "aasist-l" and e.windows and e.start < e.end
                seen.extend(e.windows)
        assert sorted(seen) == list(range(s.windows))  # each window accounted exactly once
        assert s.shed == sum(len(e.windows) for e in events if e.type == "overloaded")
        assert s.no_speech >= 1  # the trailing silence
        total_shed += s.shed
    # the queue holds two windows, shared fairly: s0 filled it, s1 took one of its places (s0's
    # oldest was shed), and s2 found no stream holding more than one window more than itself
    assert [o[-1].models["aasist-l"].scored for o in out] == [1, 1, 0]
    assert total_shed == w.metrics.shed and w.metrics.scored == 2


def test_malformed_input_ends_only_that_stream(bundle, runtime, dev_clips):
    data = pcm16(clips_between(dev_clips, 4.1, 5.0, 1)[0])

    async def main():
        async with make_worker(runtime, bundle, max_batch=4, max_wait_ms=5) as w:
            good, odd = Session(w, stream_id="good"), Session(w, stream_id="odd")
            nan = Session(w, fmt=AudioFormat("float32", 16000), stream_id="nan")
            good.push(data[:32000])
            odd.push(data[:32000])
            odd.push(data[:1001])  # half a sample
            odd.push(data[:32000])  # ignored: the stream is over
            nan.push(np.array([0.0, np.nan], dtype="<f4").tobytes())
            good.push(data[32000:])
            return await good.close(), await odd.close(), await nan.close()

    good, odd, nan = run(main())
    errors = [e for e in odd if e.type == "error"]
    assert len(errors) == 1 and errors[0].fatal and errors[0].code == "bad_input"
    assert "whole frames" in errors[0].message
    assert odd[-1].type == "summary" and odd[-1].reason == "error"
    assert odd[-1].duration == pytest.approx(1.0)  # the good first second only
    assert nan[-1].reason == "error" and "NaN" in [e for e in nan if e.type == "error"][0].message
    assert good[-1].reason == "end" and not any(e.type == "error" for e in good)
    assert good[-1].models["aasist-l"].scored >= 2


def test_silence_is_reported_not_scored(bundle, runtime):
    async def main():
        async with make_worker(runtime, bundle) as w:
            session = Session(w, fmt=AudioFormat("float32", 8000))
            for _ in range(60):
                session.push(np.zeros(800, np.float32))  # 6 s of silence in 100 ms chunks
            return w, await session.close()

    w, events = run(main())
    assert w.metrics.submitted == 0
    kinds = [e.type for e in events]
    assert set(kinds) == {"no_speech", "summary"}
    assert all(e.voiced == 0.0 and e.min_voiced == 0.3 for e in events[:-1])
    s = events[-1].models["aasist-l"]
    assert s.no_speech == s.windows > 0 and s.scored == 0 and s.mean is None
    assert s.verdict == "uncertain"


def test_events_stream_to_a_consumer_while_audio_arrives(bundle, runtime, dev_clips):
    """The transport shape: one task pushes, another forwards events as they come."""
    data = pcm16(clips_between(dev_clips, 4.1, 5.0, 1)[0])

    async def main():
        async with make_worker(runtime, bundle, max_wait_ms=1) as w:
            session = Session(w, stream_id="ws", vad=VadOptions(min_voiced=0.0))
            received = []

            async def forward():
                async for event in session.events():
                    received.append(event.to_json())

            consumer = asyncio.create_task(forward())
            for i in range(0, len(data), 640):
                session.push(data[i : i + 640])
                await asyncio.sleep(0)
            session.end()
            await consumer
            return received

    received = run(main())
    assert '"type":"summary"' in received[-1] and len(received) >= 4
    assert sum('"type":"score"' in r for r in received) >= 3


def test_workers_by_bundle_name(bundle):
    workers = load_scorers([bundle], batch=BatchOptions(max_batch=4))
    ((name, w),) = workers.items()
    assert name == "aasist-l" and w.input_samples == 64600 and w.options.max_batch == 4
    assert w.score_spec.threshold == 0.5 and w.score_spec.scale == 1.5
    with pytest.raises(ValueError, match="unique"):
        load_scorers([bundle, bundle])


def test_cancel_withdraws_queued_windows(bundle, runtime, dev_clips):
    data = pcm16(clips_between(dev_clips, 6.0, 7.5, 1)[0])

    async def main():
        async with make_worker(runtime, bundle, max_batch=1, max_wait_ms=0) as w:
            session = Session(w, vad=VadOptions(min_voiced=0.0))
            session.push(data)
            session.cancel()
            return w, [e async for e in session.events()]

    w, events = run(main())
    s = events[-1].models["aasist-l"]
    assert events[-1].reason == "cancelled"
    assert s.cancelled >= 1 and s.scored + s.cancelled == s.windows
