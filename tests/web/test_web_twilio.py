"""WS /v1/twilio: Twilio Media Streams in, events out to the socket, a webhook and the log.

The client sends Twilio's messages in their documented shape (``connected``, ``start``, ``media``
with base64 8 kHz mu-law, ``mark``, ``stop``), one or two tracks. Each track is screened on its
own; its window scores equal the offline scores of the same mu-law-decoded audio within 1e-4
(the same decode and resampler: the telephone path adds no error of its own beyond G.711 itself).
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from web_support import dev_clip, run, start_server, web_bundle

from voicescreen.audio import load_audio, resample
from voicescreen.cli.serve import add_parsers
from voicescreen.scoring import Scorer
from voicescreen.stream import AudioFormat, decode
from voicescreen.web.client import converse, mulaw_frames, twilio_messages
from voicescreen.web.config import ServerConfig
from voicescreen.web.twilio import mark_message


class Webhook:
    """A webhook receiver on loopback: collects the JSON bodies POSTed to it."""

    def __init__(self) -> None:
        self.posts: list[dict] = []
        self.done = threading.Condition()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with hook.done:
                    hook.posts.append(json.loads(body))
                    hook.done.notify_all()
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, predicate, timeout: float = 120.0) -> list[dict]:
        with self.done:
            assert self.done.wait_for(lambda: predicate(self.posts), timeout), self.posts
            return list(self.posts)


@pytest.fixture(scope="module")
def bundle(export_aasist_l):
    return web_bundle(export_aasist_l)


@pytest.fixture(scope="module")
def webhook():
    hook = Webhook()
    yield hook
    hook.server.shutdown()


@pytest.fixture(scope="module")
def server(bundle, webhook):
    config = ServerConfig(
        bundles=[bundle],
        twilio_sinks=("socket", "webhook", "log"),
        webhook_url=webhook.url,
        idle_timeout=5.0,
    )
    server = start_server(config)
    yield server
    server.stop()


def offline_mulaw(scorer: Scorer, frames: list[bytes]):
    """The offline scores of what the server hears: the mu-law decoded, resampled to 16 kHz."""
    x = resample(decode(b"".join(frames), AudioFormat("mulaw", 8000)), 8000)
    return scorer.score_signal(x)


def test_each_track_is_screened_like_its_mulaw_audio_offline(
    server, bundle, webhook, data_dir, caplog
):
    caplog.set_level(logging.INFO, logger="voicescreen.web.twilio")
    paths = {
        "inbound": dev_clip(data_dir, "bonafide", 5.5, 6.5),
        "outbound": dev_clip(data_dir, "spoof", 5.5, 6.5),
    }
    frames = {track: mulaw_frames(p) for track, p in paths.items()}
    scorer = Scorer(bundle)
    offline = {track: offline_mulaw(scorer, f) for track, f in frames.items()}
    messages = twilio_messages(
        frames,
        stream_sid="MZ" + "a" * 32,
        call_sid="CA" + "b" * 32,
        account_sid="AC" + "c" * 32,
        custom_parameters={"caller": "+15550100"},
    )
    # a mark (sent back by Twilio when our queued audio played) in the middle changes nothing
    messages.insert(60, (mark_message(999, "MZ" + "a" * 32, "greeting"), 0.0))
    start = messages[1][0]
    assert start == {
        "event": "start",
        "sequenceNumber": "1",
        "start": {
            "accountSid": "AC" + "c" * 32,
            "streamSid": "MZ" + "a" * 32,
            "callSid": "CA" + "b" * 32,
            "tracks": ["inbound", "outbound"],
            "customParameters": {"caller": "+15550100"},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
        "streamSid": "MZ" + "a" * 32,
    }
    media = messages[2][0]
    assert list(media) == ["event", "sequenceNumber", "media", "streamSid"]
    assert list(media["media"]) == ["track", "chunk", "timestamp", "payload"]
    assert (media["media"]["chunk"], media["media"]["timestamp"]) == ("1", "0")

    result = run(converse(server.ws_url("/v1/twilio"), messages, realtime=False))
    assert result.close_code == 1000 and not result.errors
    for track in paths:
        sid = f"{'MZ' + 'a' * 32}:{track}"
        mine = [m for m in result.messages if m.get("stream") == sid]
        assert mine[0]["type"] == "started" and mine[0]["track"] == track
        assert mine[0]["callSid"] == "CA" + "b" * 32
        assert mine[0]["customParameters"] == {"caller": "+15550100"}
        assert mine[0]["format"] == {"encoding": "mulaw", "sample_rate": 8000, "channels": 1}
        assert mine[-1]["type"] == "summary" and mine[-1]["reason"] == "end"
        windows = [m for m in mine if m["type"] in ("score", "no_speech")]
        assert [m["window"] for m in windows] == list(range(len(windows)))
        regular = {(m["start"], m["end"]): m for m in windows if not m["early"]}
        want = offline[track].windows
        assert len(regular) == len(want) >= 2
        compared = 0
        for w in want:
            m = regular[(w.start, w.end)]
            if m["type"] == "score":
                assert m["raw"] == pytest.approx(w.score, abs=1e-4)
                compared += 1
        assert compared >= 2
    # the webhook got each track's verdicts and summary, with the call's ids
    posts = webhook.wait_for(lambda p: sum(x["event"]["type"] == "summary" for x in p) >= 2)
    summaries = {p["track"]: p for p in posts if p["event"]["type"] == "summary"}
    assert set(summaries) == {"inbound", "outbound"}
    for track, post in summaries.items():
        assert post["callSid"] == "CA" + "b" * 32 and post["streamSid"] == "MZ" + "a" * 32
        socket_summary = [
            m for m in result.messages if m["type"] == "summary" and m["stream"].endswith(track)
        ][0]
        assert post["event"] == socket_summary
    assert {p["event"]["type"] for p in posts} <= {"verdict", "summary", "error"}
    assert any("summary (end" in r.getMessage() for r in caplog.records)  # the log sink


def twilio_call(server, messages):
    return run(converse(server.ws_url("/v1/twilio"), messages, realtime=False))


@pytest.fixture(scope="module")
def frames(data_dir):
    return mulaw_frames(dev_clip(data_dir, "bonafide", 4.0, 4.3))


def test_invalid_base64_ends_the_call_with_an_error(server, frames):
    messages = twilio_messages({"inbound": frames[:100]}, stop=False)
    bad = json.loads(json.dumps(messages[-1][0]))
    bad["media"]["payload"] = "this is *not* base64!"
    result = twilio_call(server, [*messages, (bad, 0.0)])
    errors = result.errors
    assert len(errors) == 1 and errors[0]["code"] == "bad_input"
    assert "not valid base64" in errors[0]["message"]
    assert result.messages[-1]["type"] == "summary" and result.messages[-1]["reason"] == "error"
    # 2 s arrived; the resampler's look-ahead (a few ms) was never flushed: the stream failed
    assert result.messages[-1]["duration"] == pytest.approx(2.0, abs=0.02)
    assert result.close_code == 1007


def test_media_before_start(server, frames):
    messages = twilio_messages({"inbound": frames[:10]})
    result = twilio_call(server, [messages[0], messages[2]])
    assert [m["code"] for m in result.messages] == ["missing_start"] and result.close_code == 1008


def test_stop_before_start_and_media_of_another_stream(server, frames):
    messages = twilio_messages({"inbound": frames[:10]})
    result = twilio_call(server, [messages[0], messages[-1]])  # connected, then stop
    assert [m["code"] for m in result.messages] == ["missing_start"] and result.close_code == 1008
    assert "stop message before start" in result.messages[0]["message"]
    stray = json.loads(json.dumps(messages[2][0]))
    stray["streamSid"] = "MZ" + "f" * 32  # not the stream this socket started
    result = twilio_call(server, [messages[0], messages[1], messages[2], (stray, 0.0)])
    errors = [m for m in result.messages if m["type"] == "error"]
    assert [e["code"] for e in errors] == ["bad_message"] and result.close_code in (1007, 1008)
    assert "MZ" + "f" * 32 in errors[0]["message"]


def test_a_media_format_other_than_twilios_is_refused(server, frames):
    messages = twilio_messages({"inbound": frames[:10]})
    start = json.loads(json.dumps(messages[1][0]))
    start["start"]["mediaFormat"]["sampleRate"] = 16000
    result = twilio_call(server, [messages[0], (start, 0.0), *messages[2:]])
    assert [m["code"] for m in result.messages] == ["bad_start"]
    assert "audio/x-mulaw" in result.messages[0]["message"] and result.close_code == 1008


def test_malformed_twilio_message(server):
    result = twilio_call(server, [({"event": "connected"}, 0.0), (b"\x00\x01", 0.0)])
    assert [m["code"] for m in result.messages] == ["bad_message"] and result.close_code == 1008
    huge = '{"event": "start", "sequenceNumber": ' + "9" * 5000 + "}"  # too long for int()
    result = twilio_call(server, [({"event": "connected"}, 0.0), (huge, 0.0)])
    assert [m["code"] for m in result.messages] == ["bad_message"] and result.close_code == 1008
    assert "Exceeds the limit" in result.messages[0]["message"]


def test_a_call_that_hangs_up_without_stop_still_ends(server, webhook, frames):
    """The platform closes the socket without ``stop``: the track still ends (for the sinks)."""
    sid = "MZ" + "d" * 32
    before = len(webhook.posts)
    messages = twilio_messages({"inbound": frames[:150]}, stream_sid=sid, stop=False)

    async def main():
        from websockets.asyncio.client import connect

        async with connect(server.ws_url("/v1/twilio")) as ws:
            for message, _ in messages:
                await ws.send(json.dumps(message))
            assert json.loads(await ws.recv())["type"] == "started"

    run(main())
    posts = webhook.wait_for(
        lambda p: any(x["streamSid"] == sid and x["event"]["type"] == "summary" for x in p[before:])
    )
    summary = [p for p in posts if p["streamSid"] == sid and p["event"]["type"] == "summary"]
    assert summary[0]["event"]["reason"] == "end"
    assert summary[0]["event"]["duration"] == pytest.approx(3.0)


def test_tap_speaks_twilio(server, data_dir, capsys):
    parser = argparse.ArgumentParser(prog="voicescreen")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    path = dev_clip(data_dir, "spoof", 4.0, 4.3)
    args = parser.parse_args(
        ["tap", str(path), "--twilio", "--fast", "--url", server.ws_url("/v1/twilio")]
    )
    assert args.func(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("MZ") and out[0].endswith(":inbound: started, models aasist-l")
    assert "summary (end, " in out[-1]
    # the 20 ms frames really were 160 bytes of mu-law each
    assert all(len(f) == 160 for f in mulaw_frames(path)[:-1])
    assert np.isclose(len(b"".join(mulaw_frames(path))) / 8000, load_audio(path).size / 16000)
