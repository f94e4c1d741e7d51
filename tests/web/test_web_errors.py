"""Bad input, one test each: every case gets a clear error event (or HTTP error), the socket is
closed with a fitting code, and a good stream running at the same time finishes untouched."""

from __future__ import annotations

import asyncio
import contextlib
import json

import httpx
import numpy as np
import pytest
from web_support import GUARD, dev_clip, parse_metrics, run, start_server, web_bundle
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from voicescreen.web.client import converse, mulaw_frames, twilio_messages
from voicescreen.web.config import ServerConfig

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FRAME_LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def server(export_aasist_l):
    config = ServerConfig(
        bundles=[web_bundle(export_aasist_l)],
        token=TOKEN,
        max_frame_bytes=FRAME_LIMIT,
        max_streams_per_client=3,
        idle_timeout=2.0,
        max_stream_seconds=10.0,
        max_upload_bytes=2 << 20,
    )
    server = start_server(config)
    yield server
    server.stop()


async def open_stream(server, start=None, headers=AUTH, path="/v1/stream", **kwargs):
    ws = await connect(server.ws_url(path), additional_headers=headers, **kwargs)
    if start is not None:
        await ws.send(json.dumps(start))
    return ws


async def drain(ws):
    """Everything the server sends until it closes: (messages, close code, close reason)."""
    messages = []
    try:
        async for raw in ws:
            messages.append(json.loads(raw))
    except ConnectionClosed:
        pass
    return messages, ws.close_code, ws.close_reason


async def good_stream(server, speech, stream_id="good"):
    """A well-behaved stream at real-time pace, alongside the bad one."""
    frames = [speech[i : i + 3200] for i in range(0, len(speech), 3200)]  # 100 ms each
    outgoing = [({"type": "start", "stream_id": stream_id}, 0.0)]
    outgoing += [(f, len(f) / 32000) for f in frames] + [({"type": "stop"}, 0.0)]
    return await converse(server.ws_url("/v1/stream"), outgoing, token=TOKEN)


def check_good(result, stream_id="good"):
    assert result.close_code == 1000 and not result.errors
    summary = result.messages[-1]
    assert summary["type"] == "summary" and summary["reason"] == "end"
    assert summary["stream"] == stream_id and summary["models"]["aasist-l"]["scored"] >= 2


def alongside(server, speech, bad):
    """Run the coroutine ``bad`` while a good stream runs; return what ``bad`` returns."""

    async def main():
        good = asyncio.create_task(good_stream(server, speech))
        await asyncio.sleep(0.3)  # let the good stream get going first
        out = await bad
        check_good(await good)
        return out

    return run(main())


def check_refused(messages, code, close, text=None):
    """A stream that never began: one fatal error event, no summary, the close."""
    assert [m["type"] for m in messages] == ["error"], messages
    error = messages[0]
    assert error["code"] == code and error["fatal"] is True
    if text:
        assert text in error["message"]
    assert close[0] == close[1]


def check_failed(messages, code, text=None):
    """A stream that began and failed: started, ..., the error, ..., the summary (error)."""
    kinds = [m["type"] for m in messages]
    assert kinds[0] == "started" and kinds[-1] == "summary"
    errors = [m for m in messages if m["type"] == "error"]
    assert len(errors) == 1 and errors[0]["code"] == code and errors[0]["fatal"]
    if text:
        assert text in errors[0]["message"]
    assert messages[-1]["reason"] == "error"
    return messages[-1]


async def send_and_drain(server, first, *then, start=None):
    ws = await open_stream(server, start)
    await ws.send(first)
    for item in then:
        await ws.send(item)
    return await drain(ws)


def test_malformed_json(server, speech):
    messages, code, _ = alongside(server, speech, send_and_drain(server, "{not json"))
    check_refused(messages, "bad_message", (code, 1008), "not valid JSON")


HUGE = "9" * 5000  # more digits than Python turns into an int: json.loads raises ValueError


def test_a_number_too_long_to_parse(server, speech):
    """A 5,000-digit integer, before the start and after it: bad_message, never a dropped socket."""
    bomb = '{"type": "start", "sample_rate": ' + HUGE + "}"
    messages, code, _ = alongside(server, speech, send_and_drain(server, bomb))
    check_refused(messages, "bad_message", (code, 1008), "Exceeds the limit")
    after = '{"type": "stop", "at": ' + HUGE + "}"
    start = {"type": "start", "sample_rate": 16000}
    messages, code, _ = run(send_and_drain(server, speech[:3200], after, start=start))
    check_failed(messages, "bad_message", "Exceeds the limit")
    assert code == 1008


def test_unknown_encoding(server, speech):
    start = json.dumps({"type": "start", "encoding": "opus", "sample_rate": 48000})
    messages, code, reason = alongside(server, speech, send_and_drain(server, start))
    check_refused(messages, "bad_start", (code, 1008), "unknown encoding 'opus'")
    assert "pcm16" in messages[0]["message"] and "opus" in reason


@pytest.mark.parametrize(
    "fields, text",
    [
        ({"sample_rate": 12345}, "sample_rate must be one of"),
        ({"channels": 0}, "channels must be an integer"),
        ({"models": ["no-such-model"]}, "unknown model(s) ['no-such-model']"),
        ({"samplerate": 16000}, "unknown field(s) ['samplerate']"),
        ({"stream_id": "no spaces allowed"}, "stream_id must be"),
    ],
)
def test_a_bad_start_message_is_refused(server, fields, text):
    async def main():
        return await send_and_drain(server, json.dumps({"type": "start", **fields}))

    messages, code, _ = run(main())
    check_refused(messages, "bad_start", (code, 1008), text)


def test_missing_start(server, speech):
    messages, code, _ = alongside(server, speech, send_and_drain(server, speech[:3200]))
    check_refused(messages, "missing_start", (code, 1008), "audio before the start message")
    messages, code, _ = run(send_and_drain(server, json.dumps({"type": "stop"})))
    check_refused(messages, "missing_start", (code, 1008), "got 'stop'")


def test_oversize_frame(server, speech):
    async def bad():
        ws = await open_stream(server, {"type": "start"})
        await ws.send(speech[:32000])  # one good second
        await ws.send(bytes(FRAME_LIMIT + 2))
        return await drain(ws)

    messages, code, _ = alongside(server, speech, bad())
    summary = check_failed(messages, "frame_too_large", f"the limit is {FRAME_LIMIT} bytes")
    assert code == 1009 and summary["duration"] == pytest.approx(1.0)


def test_float32_samples_out_of_range(server, speech):
    """Finite floats far outside [-1, 1] (3e38 overflows to infinity in a stereo mix): the
    stream ends with bad_input, not with null scores; the good stream beside it is untouched."""

    async def bad():
        ws = await open_stream(server, {"type": "start", "encoding": "float32", "channels": 2})
        quiet = np.zeros((4000, 2), "<f4").tobytes()  # 32 kB frames, under the frame limit
        for _ in range(4):
            await ws.send(quiet)  # one good second
        await ws.send(np.full((160, 2), 3e38, "<f4").tobytes())
        return await drain(ws)

    messages, code, _ = alongside(server, speech, bad())
    summary = check_failed(messages, "bad_input", "must be samples in [-1, 1]")
    assert code == 1007 and summary["duration"] == pytest.approx(1.0)


def test_odd_length_pcm16(server, speech):
    async def bad():
        ws = await open_stream(server, {"type": "start"})
        await ws.send(speech[:32000])
        await ws.send(speech[:1001])  # half a sample at the end
        return await drain(ws)

    messages, code, _ = alongside(server, speech, bad())
    summary = check_failed(messages, "bad_input", "1001 bytes are not whole frames of pcm16")
    assert code == 1007 and summary["duration"] == pytest.approx(1.0)


def test_unknown_message_after_start(server, speech):
    async def bad():
        ws = await open_stream(server, {"type": "start"})
        await ws.send(speech[:32000])
        await ws.send(json.dumps({"type": "pause"}))
        return await drain(ws)

    messages, code, _ = alongside(server, speech, bad())
    check_failed(messages, "bad_message", "unknown message type 'pause'")
    assert code == 1008


def test_wrong_or_missing_token(server, speech):
    async def refused(headers):
        with pytest.raises(InvalidStatus) as e:
            await open_stream(server, headers=headers)
        return e.value.response

    async def bad():
        wrong = await refused({"Authorization": "Bearer nope"})
        missing = await refused(None)
        return wrong, missing

    wrong, missing = alongside(server, speech, bad())
    for response in (wrong, missing):
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert json.loads(response.body) == {
            "detail": "missing or wrong bearer token",
            "code": "unauthorized",
        }

    async def query_token():  # browsers cannot set headers on a WebSocket: ?token= works too
        ws = await connect(server.ws_url(f"/v1/stream?token={TOKEN}"))
        await ws.send(json.dumps({"type": "start"}))
        await ws.send(json.dumps({"type": "stop"}))
        return await drain(ws)

    messages, code, _ = run(query_token())
    assert [m["type"] for m in messages] == ["started", "summary"] and code == 1000

    for method, path in (("GET", "/metrics"), ("GET", "/v1/models"), ("POST", "/v1/score")):
        r = httpx.request(method, server.url(path), content=b"x", headers={"Authorization": "x"})
        assert r.status_code == 401 and r.json()["code"] == "unauthorized", path
    assert httpx.get(server.url("/healthz")).status_code == 200  # liveness stays open
    assert httpx.get(server.url("/v1/models"), headers=AUTH).status_code == 200


def wait_idle(server):
    """Until the server holds no streams (a closed socket's handler may still be finishing)."""

    async def main():
        while True:
            text = (await asyncio.to_thread(httpx.get, server.url("/metrics"), headers=AUTH)).text
            if parse_metrics(text)["voicescreen_clients_active"] == 0:
                return
            await asyncio.sleep(0.05)

    run(main())


def test_abrupt_disconnect_mid_window(server, speech):
    def metrics():
        return parse_metrics(httpx.get(server.url("/metrics"), headers=AUTH).text)

    ended = metrics().get('voicescreen_streams_total{transport="stream",reason="end"}', 0)

    async def bad():
        ws = await open_stream(server, {"type": "start", "stream_id": "vanishing"})
        assert json.loads(await ws.recv())["type"] == "started"
        await ws.send(speech[:36000])  # 1.125 s: the first window is not complete yet
        ws.transport.abort()  # no close frame: the TCP connection just goes
        # the server notices, finishes the stream for the logs and frees its slot
        loop = asyncio.get_running_loop()
        deadline = loop.time() + GUARD
        while loop.time() < deadline:
            m = await asyncio.to_thread(metrics)
            if m.get('voicescreen_streams_total{transport="stream",reason="end"}', 0) > ended:
                return m
            await asyncio.sleep(0.1)
        raise AssertionError("the server never ended the abandoned stream")

    alongside(server, speech, bad())
    wait_idle(server)  # and its slot is free again
    assert metrics()['voicescreen_streams_active{transport="stream"}'] == 0


def test_idle_timeout(server, speech):
    async def bad():
        ws = await open_stream(server, {"type": "start"})
        await ws.send(speech[:16000])  # half a second, then silence on the wire
        started = await drain(ws)
        silent = await open_stream(server)  # connects and never says anything
        return started, await drain(silent)

    (messages, code, _), (never, code2, _) = alongside(server, speech, bad())
    check_failed(messages, "idle_timeout", "no message for 2 s")
    assert code == 1008
    check_refused(never, "idle_timeout", (code2, 1008))


def test_too_many_streams_per_client(server, speech):
    wait_idle(server)

    async def main():
        held = [await open_stream(server, {"type": "start"}) for _ in range(3)]
        for ws in held:
            assert json.loads(await ws.recv())["type"] == "started"
        refused = await drain(await open_stream(server))  # refused as soon as it connects
        for ws in held[1:]:
            with contextlib.suppress(ConnectionClosed):  # (idle-timed out on a slow machine)
                await ws.send(json.dumps({"type": "stop"}))
            await drain(ws)
        await held[0].close()
        return refused

    messages, code, _ = run(main())
    check_refused(messages, "too_many_streams", (code, 1013), "already has 3 streams open")
    wait_idle(server)
    check_good(run(good_stream(server, speech, "after")), "after")


def test_stream_too_long(server, speech):
    async def bad():
        ws = await open_stream(server, {"type": "start"})
        for _ in range(11):  # 11 s of silence: cheap (the VAD skips it), and over the limit
            await ws.send(bytes(32000))
        return await drain(ws)

    messages, code, _ = alongside(server, speech, bad())
    summary = check_failed(messages, "stream_too_long", "passed the 10 s limit")
    assert code == 1008 and summary["duration"] == pytest.approx(11.0)


def test_foreign_origin_is_refused(server):
    async def main():
        with pytest.raises(InvalidStatus) as e:
            await open_stream(server, origin="http://evil.example")
        ws = await open_stream(
            server, {"type": "start"}, origin=f"http://127.0.0.1:{server.port}"
        )  # the page's own origin
        await ws.send(json.dumps({"type": "stop"}))
        return e.value.response, await drain(ws)

    response, (messages, code, _) = run(main())
    assert response.status_code == 403 and json.loads(response.body)["code"] == "forbidden_origin"
    assert messages[-1]["type"] == "summary" and code == 1000
    r = httpx.post(
        server.url("/v1/rtc/offer"), json={}, headers={**AUTH, "Origin": "http://evil.example"}
    )
    assert r.status_code == 403


def test_score_endpoint_errors(server, data_dir):
    def post(content, query="", headers=AUTH, **kwargs):
        return httpx.post(
            server.url(f"/v1/score{query}"), content=content, headers=headers, timeout=120, **kwargs
        )

    r = post(b"RIFF this is not audio at all")
    assert r.status_code == 422 and r.json()["code"] == "bad_audio"
    assert "cannot read audio" in r.json()["detail"] and "voicescreen-" not in r.json()["detail"]
    r = post(bytes(3 << 20))
    assert r.status_code == 413 and r.json()["code"] == "too_large"
    clip = dev_clip(data_dir, "bonafide", 4.0, 4.3).read_bytes()
    assert post(clip, "?model=nope").status_code == 404
    assert post(clip, "?hop=0").status_code == 422
    assert post(b"").status_code == 400
    r = httpx.post(
        server.url("/v1/score"), files={"other": ("x.flac", clip)}, headers=AUTH, timeout=60
    )
    assert r.status_code == 400 and "no file field" in r.json()["detail"]
    # control characters in the name: scored, reported by the name without them (a NUL in it
    # made the temporary file fail: HTTP 500)
    for name, want in ((b"call.fl\x00ac", "call.flac"), (b"../in/a\x1b.flac", "../in/a.flac")):
        body = (  # by hand: a client library would percent-encode the name
            b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="' + name
            + b'"\r\nContent-Type: audio/flac\r\n\r\n' + clip + b"\r\n--b0undary--\r\n"
        )  # fmt: skip
        r = post(body, headers={**AUTH, "Content-Type": "multipart/form-data; boundary=b0undary"})
        assert r.status_code == 200 and r.json()["file"] == want, r.text
    r = post(clip, "?filename=%00")
    assert r.status_code == 200 and r.json()["file"] == "upload", r.text


def test_bad_sdp(server):
    def offer(body, **kwargs):
        return httpx.post(server.url("/v1/rtc/offer"), headers=AUTH, timeout=60, **kwargs | body)

    r = offer({"content": b"not json"})
    assert r.status_code == 400 and r.json()["code"] == "bad_sdp"
    r = offer({"json": {"type": "offer", "sdp": "v=0 garbage"}})
    assert r.status_code == 400 and "no audio track" in r.json()["detail"]
    r = offer({"json": {"type": "offer", "sdp": "v=0\r\nm=audio x\r\nm=application y\r\n"}})
    assert r.status_code == 400 and r.json()["detail"].startswith("cannot answer this offer")
    # the reason is never empty, whatever the SDP parser raised
    assert len(r.json()["detail"].removeprefix("cannot answer this offer:").strip()) > 3
    r = offer({"json": {"type": "offer", "sdp": "m=audio\r\nm=application\r\n"}})
    assert r.status_code == 400 and r.json()["detail"].startswith("cannot answer this offer: ")
    assert len(r.json()["detail"].removeprefix("cannot answer this offer:").strip()) > 3
    r = offer({"json": {"type": "answer", "sdp": "v=0"}})
    assert r.status_code == 400
    r = offer({"json": {"type": "offer", "sdp": "m=audio m=application", "models": ["x"]}})
    assert r.status_code == 400 and "unknown model" in r.json()["detail"]
    # An oversized body is refused by its Content-Length, or, sent without one (chunked), once
    # the limit has arrived: never read whole.
    big = b'{"type": "offer", "sdp": "' + b"x" * (8 << 20) + b'"}'
    for body in (big, (big[i : i + 65536] for i in range(0, len(big), 65536))):
        r = offer({"content": body})
        assert r.status_code == 413 and r.json()["code"] == "too_large", r.text
        assert "the offer is over the" in r.json()["detail"]


def test_twilio_takes_the_token_from_custom_parameters(server, data_dir):
    """Twilio sends no headers: the token comes in the start message's customParameters."""
    frames = mulaw_frames(dev_clip(data_dir, "bonafide", 4.0, 4.3))[:100]  # 2 s

    async def call(token):
        return await converse(
            server.ws_url("/v1/twilio"),
            twilio_messages({"inbound": frames}, custom_parameters={"token": token}),
            realtime=False,
        )

    good = run(call(TOKEN))
    assert good.messages[0]["type"] == "started" and good.messages[-1]["type"] == "summary"
    assert "token" not in good.messages[0]["customParameters"]  # never echoed
    bad = run(call("wrong"))
    assert [m["code"] for m in bad.messages] == ["unauthorized"] and bad.close_code == 1008


def test_twilio_without_a_token_must_authenticate_within_seconds(server):
    """Messages before an authenticated start (here a mark every second, each within the idle
    timeout of 2 s) do not keep an unauthenticated socket open: AUTH_SECONDS after it opened
    it is closed as unauthorized."""
    from voicescreen.web.ws import AUTH_SECONDS

    marks = [({"event": "connected"}, 0.0)]
    marks += [
        ({"event": "mark", "mark": {"name": f"m{i}"}}, 1.0) for i in range(int(AUTH_SECONDS) + 5)
    ]

    async def call():
        return await converse(server.ws_url("/v1/twilio"), marks, realtime=True)

    result = run(call())
    assert [m["code"] for m in result.messages] == ["unauthorized"], result.messages
    assert "no authenticated start within" in result.messages[0]["message"]
    assert result.close_code == 1008
