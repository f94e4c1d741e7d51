"""The pace limit of /v1/stream and /v1/twilio: a stream may send audio at most
``max_realtime_factor`` times real time after a burst. Beyond it the server either ends the stream
with ``rate_limited`` (``close``) or reads it only at that pace (``throttle``, the default); either
way the other streams finish untouched, and a stream that is fast but within the limit is never
touched.

The flooding streams here send tens of seconds of audio at once, so they are far beyond the limit
however slow the machine; the legal fast stream sends at 1.5x real time against a limit of 3x and
a burst of 6 s, so only a pause of the server or the client of more than 4 s could push it over.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np
import pytest
from web_support import dev_clip, parse_metrics, run, start_server, web_bundle

from voicescreen.audio import load_audio
from voicescreen.scoring import Scorer
from voicescreen.web.client import converse, twilio_messages
from voicescreen.web.config import ServerConfig
from voicescreen.web.streams import RateLimit

FACTOR = 3.0
BURST = 6.0


@pytest.fixture(scope="module")
def bundle(export_aasist_l):
    return web_bundle(export_aasist_l)


@pytest.fixture(scope="module")
def closing(bundle):
    config = ServerConfig(
        bundles=[bundle],
        max_realtime_factor=FACTOR,
        realtime_burst_seconds=BURST,
        rate_limit="close",
    )
    server = start_server(config)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def throttling(bundle):
    config = ServerConfig(bundles=[bundle], max_realtime_factor=2.0, realtime_burst_seconds=1.0)
    assert config.rate_limit == "throttle"  # the default
    server = start_server(config)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def speech(data_dir) -> np.ndarray:
    """About 12 s of speech at 16 kHz: two bona fide dev clips end to end."""
    return np.concatenate([load_audio(dev_clip(data_dir, "bonafide", 5.5, 6.5, i)) for i in (0, 1)])


def pcm16(x: np.ndarray) -> bytes:
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype("<i2").tobytes()


def pcm_stream(x: np.ndarray, speed: float | None, stream_id: str, chunk: float = 0.1):
    """``/v1/stream`` messages for ``x``: 100 ms frames sent at ``speed`` times real time by
    ``converse(realtime=True)`` (None: all at once, with ``realtime=False``)."""
    data = pcm16(x)
    step = int(16000 * chunk) * 2
    frames = [data[i : i + step] for i in range(0, len(data), step)]
    pace = 1.0 if speed is None else 1.0 / speed
    return [
        ({"type": "start", "stream_id": stream_id}, 0.0),
        *((f, pace * len(f) / 32000) for f in frames),
        ({"type": "stop"}, 0.0),
    ]


def check_scored_as_offline(result, offline, stream_id):
    """A stream that ended normally, each regular window scored as the offline scorer does."""
    assert result.close_code == 1000 and not result.errors, result.errors
    assert {m["stream"] for m in result.messages} == {stream_id}
    summary = result.messages[-1]
    assert summary["type"] == "summary" and summary["reason"] == "end"
    assert summary["duration"] == pytest.approx(offline.duration, abs=1e-3)
    windows = result.of_type("score") + result.of_type("no_speech")
    regular = {(m["start"], m["end"]): m for m in windows if not m["early"]}
    assert sorted(regular) == [(w.start, w.end) for w in offline.windows]  # none lost
    compared = 0
    for w in offline.windows:
        m = regular[(w.start, w.end)]
        if m["type"] == "score":
            assert m["raw"] == pytest.approx(w.score, abs=1e-4)
            compared += 1
    assert compared >= 2


def metrics(server) -> dict[str, float]:
    return parse_metrics(httpx.get(server.url("/metrics")).text)


def test_the_bucket_holds_a_burst_and_refills_at_the_factor():
    now = [0.0]
    limit = RateLimit(factor=4.0, burst=2.0, clock=lambda: now[0])
    for _ in range(500):  # ten seconds of a live stream, 20 ms a frame: never held
        assert limit.charge(0.02) == 0.0
        now[0] += 0.02
    assert limit.charge(1.9) == 0.0  # a burst within the allowance
    assert limit.charge(0.5) == pytest.approx(0.4 / 4)  # 0.4 s of audio too many, at 4x
    now[0] += 0.1  # waited that out: back within the pace
    assert limit.charge(0.0) == pytest.approx(0.0, abs=1e-12)
    now[0] += 3600.0  # an hour of silence saves no more than the burst
    assert limit.charge(2.0) == 0.0
    assert limit.charge(0.4) == pytest.approx(0.1)
    held = RateLimit(factor=1.0, burst=1.0, clock=lambda: now[0])
    assert held.charge(3.0) == pytest.approx(2.0)  # 1x: the lead itself


def test_close_cuts_a_flood_while_a_fast_but_legal_stream_is_untouched(closing, bundle, speech):
    offline = Scorer(bundle).score_signal(speech)
    silence = np.zeros(16000 * 60, np.float32)  # cheap to take: the VAD skips it

    async def main():
        legal = asyncio.create_task(
            converse(closing.ws_url("/v1/stream"), pcm_stream(speech, 1.5, "legal"))
        )
        await asyncio.sleep(0.5)
        flood = await converse(
            closing.ws_url("/v1/stream"),
            pcm_stream(silence, None, "flood", chunk=1.0),
            realtime=False,
        )
        return await legal, flood

    legal, flood = run(main())
    assert legal.sent_seconds == pytest.approx(speech.size / 16000 / 1.5, abs=0.01)
    check_scored_as_offline(legal, offline, "legal")
    errors = flood.errors
    assert len(errors) == 1 and errors[0]["code"] == "rate_limited" and errors[0]["fatal"]
    assert "faster than 3x real time (beyond a 6 s burst)" in errors[0]["message"]
    summary = flood.messages[-1]
    assert summary["type"] == "summary" and summary["reason"] == "error"
    assert BURST < summary["duration"] < 60.0  # cut once past the burst, long before the end
    assert flood.close_code == 1008
    m = metrics(closing)
    assert m['voicescreen_stream_errors_total{transport="stream",code="rate_limited"}'] == 1


def test_close_cuts_a_twilio_flood(closing):
    silence = [b"\xff" * 8000] * 60  # 60 s of mu-law silence, a second a message
    result = run(
        converse(
            closing.ws_url("/v1/twilio"), twilio_messages({"inbound": silence}), realtime=False
        )
    )
    assert [e["code"] for e in result.errors] == ["rate_limited"]
    assert result.messages[-1]["type"] == "summary"
    assert result.messages[-1]["reason"] == "error" and result.close_code == 1008


def test_throttle_reads_a_flood_at_the_limit_and_loses_nothing(throttling, bundle, speech):
    """A stream sent all at once is read at 2x real time after its 1 s burst: it takes at least
    (duration - 1) / 2 seconds, and every window is scored as offline; a live stream beside it
    is untouched."""
    clip = speech[: 16000 * 6]
    scorer = Scorer(bundle)
    offline_flood = scorer.score_signal(clip)
    live = speech[16000 * 6 : 16000 * 11]
    offline_live = scorer.score_signal(live)
    key = 'voicescreen_stream_throttled_seconds_total{transport="stream"}'
    before = metrics(throttling).get(key)

    async def main():
        good = asyncio.create_task(
            converse(throttling.ws_url("/v1/stream"), pcm_stream(live, 1.0, "live"))
        )
        t0 = time.monotonic()
        flood = await converse(
            throttling.ws_url("/v1/stream"), pcm_stream(clip, None, "flood"), realtime=False
        )
        return await good, flood, time.monotonic() - t0

    good, flood, took = run(main())
    check_scored_as_offline(flood, offline_flood, "flood")
    check_scored_as_offline(good, offline_live, "live")
    least = (6.0 - 1.0) / 2.0  # the server reads no faster than this, however fast it is
    assert took >= least - 0.05
    # the waits themselves: up to `least`, less the time the server spent reading meanwhile
    held = metrics(throttling)[key]
    assert before is None and 1.0 <= held <= least + 0.01


def test_no_limit_reads_a_flood_at_once(bundle):
    """``max_realtime_factor=None``: no pace at all (the flood of the test above, untouched)."""
    config = ServerConfig(bundles=[bundle], max_realtime_factor=None)
    silence = np.zeros(16000 * 30, np.float32)
    with start_server(config) as server:
        result = run(
            converse(
                server.ws_url("/v1/stream"),
                pcm_stream(silence, None, "flood", chunk=1.0),
                realtime=False,
            )
        )
        m = metrics(server)
    assert result.close_code == 1000 and result.messages[-1]["reason"] == "end"
    assert not any(k.startswith("voicescreen_stream_throttled") for k in m)


@pytest.mark.parametrize(
    "fields",
    [
        {"max_realtime_factor": 0.5},
        {"realtime_burst_seconds": 0.0},
        {"rate_limit": "drop"},
    ],
)
def test_impossible_limits_are_refused(fields):
    with pytest.raises(ValueError):
        ServerConfig(**fields)
