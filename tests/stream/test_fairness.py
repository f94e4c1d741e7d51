"""Fairness between streams: a client that floods the worker sheds its own windows, not everyone's.

Units, with a stand-in runtime: batches take windows round-robin across streams; the windows of
streams keeping real time go before those of streams sent faster; a full queue sheds the oldest
window of the stream holding the most. End to end: a real server (AASIST-L, official weights) on
a loopback port, four ``voicescreen tap --fast`` clients flooding it with a minute of audio each,
and a live call at real-time pace beside them: every window of the live call is scored, none shed;
the floods shed their own.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import numpy as np
import soundfile as sf
from web_support import dev_clip, run, start_server, web_bundle

from voicescreen.audio import SAMPLE_RATE, load_audio
from voicescreen.models.bundle import ScoreSpec
from voicescreen.stream import BatchOptions, InferenceWorker
from voicescreen.stream.worker import PACE_SLACK, Overloaded
from voicescreen.web.client import converse, pcm_messages
from voicescreen.web.config import ServerConfig

N = 8  # samples per window of the stand-in model


class Recorder:
    """Scores a window by its first sample (a tag saying whose window it is), records batches."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds
        self.batches: list[list[float]] = []

    def __call__(self, x: np.ndarray):
        time.sleep(self.seconds)
        self.batches.append([float(v) for v in x[:, 0]])
        return None, x[:, 0].astype(np.float32)


def make_worker(runtime, **options) -> InferenceWorker:
    return InferenceWorker(
        runtime, name="rec", input_samples=N, score=ScoreSpec("bonafide_logit", 0.0, 1.0),
        options=BatchOptions(**options),
    )  # fmt: skip


class Handle:
    """Stands for a stream (the worker keys its queues and paces by it)."""


def tagged(tag: float) -> np.ndarray:
    return np.full(N, tag, np.float32)


def test_batches_take_windows_round_robin_across_streams() -> None:
    async def main():
        rt = Recorder()
        w = make_worker(rt, max_batch=4, max_wait_ms=50)
        a, b = Handle(), Handle()
        futures = [w.submit(tagged(10 + i), stream=a) for i in range(8)]
        futures += [w.submit(tagged(20 + i), stream=b) for i in range(2)]
        await asyncio.gather(*futures)
        await w.close()
        return rt.batches

    batches = asyncio.run(asyncio.wait_for(main(), 10))
    assert batches[0] == [10, 20, 11, 21]  # FIFO would have been four of a's
    assert batches[1] == [12, 13, 14, 15]
    assert batches[2] == [16, 17]


def test_a_stream_keeping_real_time_goes_before_one_sent_faster() -> None:
    async def main():
        rt = Recorder()
        w = make_worker(rt, max_batch=2, max_wait_ms=50)
        flood, live = Handle(), Handle()
        # the flood's audio runs a minute ahead of the clock: after its first PACE_SLACK seconds
        # of audio, its windows wait for the live stream's
        first = [w.submit(tagged(100 + s), stream=flood, audio=float(s)) for s in range(60)]
        lives = [w.submit(tagged(-1 - i), stream=live, audio=1.0 + i) for i in range(3)]
        await asyncio.gather(*first, *lives)
        await w.close()
        return rt.batches

    batches = asyncio.run(asyncio.wait_for(main(), 10))
    flat = [v for b in batches for v in b]
    keeping_up = [100 + s for s in range(int(PACE_SLACK) + 1)]  # not yet ahead by PACE_SLACK
    # round-robin among the windows that keep real time, then the flood's the rest
    assert flat[:6] == [100, -1, 101, -2, 102, -3]
    assert flat[:6] == [v for pair in zip(keeping_up, [-1, -2, -3], strict=True) for v in pair]
    assert flat[6:] == [100 + s for s in range(3, 60)]


def test_a_full_queue_sheds_the_oldest_window_of_the_stream_holding_most() -> None:
    async def main():
        rt = Recorder(seconds=0.2)
        w = make_worker(rt, max_batch=1, max_wait_ms=0, max_queue=4)
        flood, live = Handle(), Handle()
        blocker = w.submit(tagged(0), stream=flood)
        await asyncio.sleep(0.05)  # the blocker is in the model; the queue is empty again
        floods = [w.submit(tagged(1 + i), stream=flood) for i in range(4)]  # the queue is full
        mine = w.submit(tagged(-1), stream=live)  # room is made: the flood's oldest goes
        more = w.submit(tagged(9), stream=flood)  # the flood's own new window is shed
        assert more is None
        results = await asyncio.gather(blocker, *floods, mine, return_exceptions=True)
        await w.close()
        return results, w.metrics

    results, metrics = asyncio.run(asyncio.wait_for(main(), 10))
    assert isinstance(results[1], Overloaded) and results[1].reason == "queue full"
    assert [r.raw for r in results[2:]] == [2, 3, 4, -1]
    assert metrics.shed == 2 and metrics.scored == 5


def test_the_streams_of_one_client_share_one_turn() -> None:
    async def main():
        rt = Recorder()
        w = make_worker(rt, max_batch=4, max_wait_ms=50)
        a1, a2, a3, b = Handle(), Handle(), Handle(), Handle()
        futures = [w.submit(tagged(10 + i), stream=a1, client="A") for i in range(2)]
        futures += [w.submit(tagged(20 + i), stream=a2, client="A") for i in range(2)]
        futures += [w.submit(tagged(30 + i), stream=a3, client="A") for i in range(2)]
        futures += [w.submit(tagged(-1 - i), stream=b, client="B") for i in range(3)]
        await asyncio.gather(*futures)
        await w.close()
        return rt.batches

    batches = asyncio.run(asyncio.wait_for(main(), 10))
    # one window of client A (its streams in turn) for each of client B; per stream, B would
    # have had one window in four
    assert batches[0] == [10, -1, 20, -2]
    assert batches[1] == [30, -3, 11, 21]
    assert batches[2] == [31]


def test_a_full_queue_sheds_from_the_client_holding_most() -> None:
    async def main():
        rt = Recorder(seconds=0.2)
        w = make_worker(rt, max_batch=1, max_wait_ms=0, max_queue=4)
        streams = [Handle() for _ in range(4)]
        live = Handle()
        blocker = w.submit(tagged(0), stream=streams[0], client="A")
        await asyncio.sleep(0.05)  # the blocker is in the model; the queue is empty again
        # client A fills the queue with one window from each of four streams: no stream holds
        # more than the live one will, but the client does
        floods = [w.submit(tagged(1 + i), stream=s, client="A") for i, s in enumerate(streams)]
        mine = w.submit(tagged(-1), stream=live, client="B")  # room is made: A's oldest goes
        more = w.submit(tagged(9), stream=Handle(), client="A")  # A's own new window is shed
        assert more is None
        results = await asyncio.gather(blocker, *floods, mine, return_exceptions=True)
        await w.close()
        return results, w.metrics

    results, metrics = asyncio.run(asyncio.wait_for(main(), 10))
    assert isinstance(results[1], Overloaded) and results[1].reason == "queue full"
    assert sorted(r.raw for r in results[2:]) == [-1, 2, 3, 4]
    assert metrics.shed == 2 and metrics.scored == 5


# --- end to end -----------------------------------------------------------------------------------


def test_a_live_call_beside_four_flooding_clients_loses_nothing(
    export_aasist_l, data_dir, tmp_path
):
    clip = dev_clip(data_dir, "bonafide", 6.0, 9.0)
    flood = tmp_path / "minute.wav"
    x = load_audio(clip)
    sf.write(flood, np.tile(x, int(np.ceil(60 * SAMPLE_RATE / x.size))), SAMPLE_RATE)
    # a latency budget (a window queued 5 s is shed as too late; serve's is 2 s), and batches small
    # enough that a live window never waits long for the one in the model
    batch = BatchOptions(max_batch=2, max_delay_ms=5000)
    server = start_server(ServerConfig(bundles=[web_bundle(export_aasist_l)], batch=batch))
    try:
        url = server.ws_url("/v1/stream")
        tap = [sys.executable, "-m", "voicescreen", "tap", "--url", url, "--fast", "--json"]
        floods = [
            subprocess.Popen([*tap, str(flood)], stdout=subprocess.PIPE, text=True)
            for _ in range(4)
        ]
        time.sleep(3)  # the floods are in: their windows fill the queue
        live = run(converse(url, pcm_messages(clip), realtime=True))
        outs = [p.communicate(timeout=600)[0] for p in floods]
    finally:
        server.stop()
    assert live.close_code == 1000 and not live.errors
    summary = live.messages[-1]["models"]["aasist-l"]
    assert summary["shed"] == 0 and summary["scored"] == summary["windows"] - summary["no_speech"]
    assert not live.of_type("overloaded")
    shed = [json.loads(o.splitlines()[-1])["models"]["aasist-l"]["shed"] for o in outs]
    assert sum(shed) > 0, "no contention: the floods were all scored in time"


def test_a_live_call_beside_one_client_with_many_calls_loses_nothing(export_aasist_l, data_dir):
    """Ten live calls from one client (behind a trusted proxy) and one from another: the worker
    takes its turns per client, so the lone call keeps all its windows while the busy client,
    asking for more than the model can score, sheds its own."""
    clip = dev_clip(data_dir, "bonafide", 6.0, 9.0)
    # a window queued 1.5 s is shed as too late: taking turns per stream, the lone call's would
    # wait behind ten others; per client, behind one
    batch = BatchOptions(max_batch=2, max_delay_ms=1500)
    config = ServerConfig(
        bundles=[web_bundle(export_aasist_l)], batch=batch, trusted_proxies=("127.0.0.1",)
    )
    server = start_server(config)

    async def calls():
        url = server.ws_url("/v1/stream")
        busy = [
            converse(url, pcm_messages(clip), headers={"X-Forwarded-For": "10.0.0.1"})
            for _ in range(10)
        ]
        lone = converse(url, pcm_messages(clip), headers={"X-Forwarded-For": "10.0.0.2"})
        return await asyncio.gather(lone, *busy)

    try:
        lone, *busy = run(calls())
    finally:
        server.stop()
    for result in (lone, *busy):
        assert result.close_code == 1000 and not result.errors
    summary = lone.messages[-1]["models"]["aasist-l"]
    assert summary["shed"] == 0 and summary["scored"] == summary["windows"] - summary["no_speech"]
    assert not lone.of_type("overloaded")
    shed = [r.messages[-1]["models"]["aasist-l"]["shed"] for r in busy]
    assert sum(shed) > 0, "no contention: the busy client's calls were all scored in time"
