"""Echo and log amplification: a client's strings and lists (a Twilio ``streamSid``, its
``customParameters``, a start's ``models``, an unknown message type, a query parameter) are bounded
where they enter, and an error that repeats one quotes only its start. Each case sends about 1 MB
against a real server on a loopback port, with a good real-time stream alongside that must finish
untouched; the error event (or HTTP body) and every log line the server writes meanwhile stay
under 2 KB."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import httpx
import pytest
from test_web_errors import check_failed, check_refused, drain, good_stream
from web_support import run, start_server, web_bundle
from websockets.asyncio.client import connect

from voicescreen.web.config import ServerConfig
from voicescreen.web.streams import MAX_MODELS, quote
from voicescreen.web.twilio import (
    MAX_CUSTOM_PARAMETERS,
    connected_message,
    media_message,
    new_sid,
    start_message,
)

MB = 1 << 20
SMALL = 2048  # bytes: the most an error event, HTTP error body or log line may take here
NO_TOKEN: dict[str, str] = {}


@pytest.fixture(scope="module")
def server(export_aasist_l):
    """The default limits (1 MiB frames: a 1 MB text message gets through to the app)."""
    server = start_server(ServerConfig(bundles=[web_bundle(export_aasist_l)]))
    yield server
    server.stop()


class Lines(logging.Handler):
    """Every log record of the server's loggers, formatted."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def log_lines():
    handler = Lines()
    logger = logging.getLogger("voicescreen")
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logging.getLogger().addHandler(handler)
    try:
        yield handler.lines
    finally:
        logging.getLogger().removeHandler(handler)
        logger.setLevel(level)


def check_small_logs(lines: list[str]) -> None:
    assert lines, "the server logged nothing"
    longest = max(lines, key=len)
    assert len(longest) < SMALL, f"a {len(longest):,}-character log line: {longest[:200]}..."


def check_small(messages: list[dict]) -> None:
    for m in messages:
        size = len(json.dumps(m))
        assert size < SMALL, f"a {size:,}-byte {m.get('type')} message: {json.dumps(m)[:200]}..."


def alongside(server, speech, *bad):
    """Run the coroutines ``bad`` one after another while a good stream runs."""

    async def main():
        good = asyncio.create_task(good_stream(server, speech))
        await asyncio.sleep(0.3)
        out = [await b for b in bad]
        result = await good
        assert result.close_code == 1000 and not result.errors
        summary = result.messages[-1]
        assert summary["type"] == "summary" and summary["reason"] == "end"
        assert summary["models"]["aasist-l"]["scored"] >= 2
        return out

    return run(main())


async def exchange(server, path, *messages):
    """Send ``messages`` (dicts as JSON, strings as they are) on a new socket; what comes back."""
    async with connect(server.ws_url(path), max_size=None) as ws:
        for m in messages:
            with contextlib.suppress(Exception):  # the server may close before it all went
                await ws.send(m if isinstance(m, str | bytes) else json.dumps(m))
        return await drain(ws)


def test_quote_shows_the_start_and_the_length():
    assert quote("opus") == "'opus'"
    assert quote(["no-such-model"]) == "['no-such-model']"
    long = quote("x" * MB)
    assert long.startswith("'xxx") and long.endswith("(1,048,576 characters)") and len(long) < 120
    many = quote(["m" * 200] * 5000)
    assert many.endswith("(5,000 items)") and len(many) < 120
    assert len(quote({"k" * MB: ["v" * MB] * 100})) < 200


def test_stream_start_strings_and_lists_are_bounded(server, speech, log_lines):
    """/v1/stream: a 1 MB stream_id, a 1 MB list of unknown models, 100,000 copies of a known
    model, a 1 MB message type before the start and after it."""
    huge = "a" * MB
    unknown_models = [f"m{i:07d}" for i in range(MB // 8)]
    many_known = ["aasist-l"] * 100_000
    start = {"type": "start", "sample_rate": 16000}
    out = alongside(
        server,
        speech,
        exchange(server, "/v1/stream", {**start, "stream_id": huge}),
        exchange(server, "/v1/stream", {**start, "models": unknown_models}),
        exchange(server, "/v1/stream", {**start, "models": many_known}),
        exchange(server, "/v1/stream", {"type": huge}),
        exchange(server, "/v1/stream", start, bytes(3200), {"type": huge}),
    )
    (sid, sid_code, _), (unknown, unknown_code, _), (known, known_code, _) = out[:3]
    check_refused(sid, "bad_start", (sid_code, 1008), "stream_id must be 1-128 characters")
    assert "(1,048,576 characters)" in sid[0]["message"]
    check_refused(unknown, "bad_start", (unknown_code, 1008), f"at most {MAX_MODELS} names")
    check_refused(known, "bad_start", (known_code, 1008), f"at most {MAX_MODELS} names")
    assert "(100,000 items)" in known[0]["message"]
    before, before_code, _ = out[3]
    check_refused(before, "missing_start", (before_code, 1008), "must be of type 'start'")
    after, after_code, _ = out[4]
    check_failed(after, "bad_message", "unknown message type 'aaa")
    assert after_code == 1008
    for messages, _, reason in out:
        check_small(messages)
        assert len(reason.encode()) <= 123
    check_small_logs(log_lines)


def twilio_start(stream_sid=None, custom=None, **fields):
    message = start_message(
        1, stream_sid or new_sid("MZ"), new_sid("CA"), new_sid("AC"), ["inbound"], custom
    )
    message["start"].update(fields)
    message["streamSid"] = "MZ0"  # (Twilio repeats it here; start.streamSid is the one read)
    return message


def test_twilio_start_strings_are_bounded(server, speech, log_lines):
    """/v1/twilio: a 1 MB streamSid (it names every event of the call), 1 MB of custom
    parameters (echoed in ``started``) as one value, one name or many entries, a 1 MB list of
    tracks and a 1 MB mediaFormat; a 1 MB track name in a media message after the start."""
    huge = "a" * MB
    too_many = {f"p{i}": "v" for i in range(MAX_CUSTOM_PARAMETERS + 1)}
    many = {f"p{i:06d}": "v" * 8 for i in range(MB // 20)}
    cases = [
        twilio_start(stream_sid=huge),
        twilio_start(callSid=huge),
        twilio_start(custom={"caller": huge}),
        twilio_start(custom={huge: "x"}),
        twilio_start(custom=too_many),
        twilio_start(custom=many),
        twilio_start(tracks=[huge]),
        twilio_start(mediaFormat={"encoding": huge}),
    ]
    sid = new_sid("MZ")
    media = media_message(2, sid, "inbound", 1, 0, bytes(160))
    media["media"]["track"] = huge
    out = alongside(
        server,
        speech,
        *(exchange(server, "/v1/twilio", connected_message(), start) for start in cases),
        exchange(server, "/v1/twilio", connected_message(), twilio_start(sid), media),
    )
    texts = [
        "streamSid must be 1-64 characters",
        "callSid must be 1-64 characters",
        "customParameters['caller'] must be a string of at most 512 characters",
        "customParameters names must be at most 64 characters",
        f"customParameters has {MAX_CUSTOM_PARAMETERS + 1} entries",
        f"customParameters has {MB // 20:,} entries",
        "tracks must be a list of",
        "mediaFormat must be",
    ]
    for (messages, code, _), text in zip(out, texts, strict=False):
        check_refused(messages, "bad_start", (code, 1008), text)
    messages, code, _ = out[-1]
    assert [m["type"] for m in messages][0] == "started"
    check_failed(messages, "bad_message", "unknown track 'aaa")
    assert code == 1008
    for messages, _, reason in out:
        check_small(messages)
        assert len(reason.encode()) <= 123
    check_small_logs(log_lines)


def test_twilio_good_call_keeps_its_parameters(server, data_dir):
    """Within the bounds, a call's custom parameters still come back in ``started``."""
    custom = {f"p{i}": "v" * 512 for i in range(MAX_CUSTOM_PARAMETERS)}
    sid = new_sid("MZ")
    stop = {"event": "stop", "sequenceNumber": "3", "streamSid": sid, "stop": {}}
    media = media_message(2, sid, "inbound", 1, 0, bytes(160))
    messages, code, _ = run(
        exchange(server, "/v1/twilio", connected_message(), twilio_start(sid, custom), media, stop)
    )
    assert code == 1000 and messages[0]["type"] == "started"
    assert messages[0]["customParameters"] == custom and messages[0]["streamSid"] == sid
    assert messages[-1]["type"] == "summary"


def test_http_inputs_are_quoted_short(server, speech, log_lines):
    """POST /v1/score with a 60 KB model name or hop, POST /v1/rtc/offer with a 60 KB
    stream_id, 10,000 model names or 60 KB of unknown fields: the errors quote the start."""
    long = "m" * 60_000  # (httpx sends URLs of up to 64 KiB)
    offer = {"sdp": "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n", "type": "offer"}

    async def http():
        async with httpx.AsyncClient(timeout=60) as client:
            url = server.url("/v1/score")
            return [
                await client.post(url, params={"model": long}, content=b"RIFF"),
                await client.post(url, params={"hop": long}, content=b"RIFF"),
                await client.post(
                    server.url("/v1/rtc/offer"), json={**offer, "stream_id": "s" * 60_000}
                ),
                await client.post(
                    server.url("/v1/rtc/offer"), json={**offer, "models": ["x"] * 10_000}
                ),
                await client.post(server.url("/v1/rtc/offer"), json={**offer, "f" * 60_000: 1}),
            ]

    model, hop, stream_id, models, fields = alongside(server, speech, http())[0]
    assert model.status_code == 404 and model.json()["code"] == "unknown_model"
    assert "(60,000 characters)" in model.json()["detail"]
    assert hop.status_code == 422 and hop.json()["detail"][0]["loc"] == ["query", "hop"]
    assert stream_id.status_code == 400 and "stream_id must be" in stream_id.json()["detail"]
    assert models.status_code == 400 and f"at most {MAX_MODELS}" in models.json()["detail"]
    assert fields.status_code == 400 and "unknown field(s)" in fields.json()["detail"]
    for response in (model, hop, stream_id, models, fields):
        assert len(response.content) < SMALL, response.text[:200]
    check_small_logs(log_lines)
