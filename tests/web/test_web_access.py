"""Who the server believes and how much it holds: forwarded headers only from trusted proxies,
server-wide caps on streams and connections, the Host check against DNS rebinding, the origin's
scheme, the token on the API's own description, and a deadline on request headers. Each against
a real server, with a good real-time stream alongside that must finish untouched."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os

import httpx
import numpy as np
import pytest
from web_support import dev_clip, parse_metrics, run, start_server, web_bundle
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from voicescreen.audio import load_audio
from voicescreen.web.auth import host_ok, origin_ok
from voicescreen.web.client import converse
from voicescreen.web.config import ServerConfig

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REFUSED = 'voicescreen_streams_rejected_total{transport="stream",code="too_many_streams"}'


@pytest.fixture(scope="module")
def bundle(export_aasist_l):
    return web_bundle(export_aasist_l)


@pytest.fixture(scope="module")
def speech(data_dir) -> bytes:
    """2.5 s of speech, PCM16 at 16 kHz."""
    x = load_audio(dev_clip(data_dir, "bonafide", 4.0, 4.3))[:40000]
    return np.round(x * 32767).astype("<i2").tobytes()


async def good_stream(server, speech: bytes, token: str | None = None):
    frames = [speech[i : i + 3200] for i in range(0, len(speech), 3200)]  # 100 ms each
    outgoing = [({"type": "start", "stream_id": "good"}, 0.0)]
    outgoing += [(f, len(f) / 32000) for f in frames] + [({"type": "stop"}, 0.0)]
    return await converse(server.ws_url("/v1/stream"), outgoing, token=token)


def check_good(result) -> None:
    assert result.close_code == 1000 and not result.errors, result.errors
    summary = result.messages[-1]
    assert summary["type"] == "summary" and summary["reason"] == "end"
    assert summary["models"]["aasist-l"]["scored"] >= 2


def alongside(server, speech, bad, token: str | None = None):
    """Run the coroutine ``bad`` while a good stream runs; return what ``bad`` returns."""

    async def main():
        good = asyncio.create_task(good_stream(server, speech, token))
        await asyncio.sleep(0.5)  # the good stream holds its slot and connection first
        out = await bad
        check_good(await good)
        return out

    return run(main())


def metrics(server, headers=None) -> dict[str, float]:
    return parse_metrics(httpx.get(server.url("/metrics"), headers=headers).text)


async def first_message(ws) -> dict:
    return json.loads(await ws.recv())


async def open_streams(server, forwarded_for: list[str]):
    """One stream per address, each started with its X-Forwarded-For; (socket, first message)."""
    out = []
    for address in forwarded_for:
        ws = await connect(
            server.ws_url("/v1/stream"), additional_headers={"X-Forwarded-For": address}
        )
        with contextlib.suppress(ConnectionClosed):  # a refused one is closed at once
            await ws.send(json.dumps({"type": "start"}))
        out.append((ws, await first_message(ws)))
    return out


async def stop_all(sockets):
    for ws in sockets:
        with contextlib.suppress(ConnectionClosed):
            await ws.send(json.dumps({"type": "stop"}))
        with contextlib.suppress(ConnectionClosed):
            async for _ in ws:
                pass


def test_forwarded_for_is_not_believed_without_trusted_proxies(bundle, speech):
    """Six streams, each naming another client in X-Forwarded-For, under a cap of 2 per client:
    they all come from 127.0.0.1, so beside the good stream one starts and five are refused
    (uvicorn believed the header from 127.0.0.1, and all six started). Each refusal counts
    once in /metrics (it counted twice)."""
    config = ServerConfig(bundles=[bundle], max_streams_per_client=2)
    with start_server(config) as server:

        async def six():
            opened = await open_streams(server, [f"203.0.113.{i}" for i in range(1, 7)])
            await stop_all([ws for ws, _ in opened])
            return [m for _, m in opened]

        firsts = alongside(server, speech, six())
        assert [m["type"] for m in firsts] == ["started"] + ["error"] * 5, firsts
        for m in firsts[1:]:
            assert m["code"] == "too_many_streams"
            assert "127.0.0.1 already has 2 streams open" in m["message"]
        assert metrics(server)[REFUSED] == 5


def test_trusted_proxies_and_the_global_stream_cap(bundle, speech):
    """Behind a trusted proxy (127.0.0.1) each forwarded client has its own cap of 2, and the
    server as a whole at most 4 streams (the good one included)."""
    config = ServerConfig(
        bundles=[bundle], max_streams_per_client=2, max_streams=4, trusted_proxies=("127.0.0.1",)
    )
    with start_server(config) as server:

        async def bad():
            same = await open_streams(server, ["198.51.100.7"] * 3)
            others = await open_streams(server, ["198.51.100.8", "198.51.100.9", "198.51.100.10"])
            await stop_all([ws for ws, _ in same + others])
            return [m for _, m in same], [m for _, m in others]

        same, others = alongside(server, speech, bad())
        assert [m["type"] for m in same] == ["started", "started", "error"], same
        assert "198.51.100.7 already has 2 streams open" in same[2]["message"]
        assert [m["type"] for m in others] == ["started", "error", "error"], others
        for m in others[1:]:
            assert m["code"] == "too_many_streams"
            assert "the server already has 4 streams open (its limit)" in m["message"]
        assert metrics(server)[REFUSED] == 3


def test_max_connections_holds(bundle, speech):
    """At most 3 connections in progress: the good stream and two idle WebSockets fill it, the
    next WebSocket and an HTTP request get 503 too_many_connections; room again once one
    closes."""
    config = ServerConfig(bundles=[bundle], max_connections=3)
    with start_server(config) as server:

        async def bad():
            idle = [await connect(server.ws_url("/v1/stream")) for _ in range(2)]
            with pytest.raises(InvalidStatus) as refused:
                await connect(server.ws_url("/v1/stream"))
            http = await asyncio.to_thread(httpx.get, server.url("/healthz"))
            await idle[0].close()
            await asyncio.sleep(0.2)  # the server's side of the close
            again = await asyncio.to_thread(httpx.get, server.url("/healthz"))
            await idle[1].close()
            return refused.value.response, http, again

        ws, http, again = alongside(server, speech, bad())
        assert ws.status_code == 503 and json.loads(ws.body)["code"] == "too_many_connections"
        assert http.status_code == 503 and http.json() == {
            "detail": "the server has 3 connections open (its limit); try again later",
            "code": "too_many_connections",
        }
        assert again.status_code == 200


def raw_upgrade(port: int, host: str, origin: str) -> str:
    """A WebSocket handshake to /v1/stream naming ``host`` and ``origin``; the status line."""
    import socket

    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /v1/stream HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(request.encode())
        return s.recv(4096).decode("latin-1").split("\r\n", 1)[0]


def test_dns_rebinding_and_the_origin_scheme(bundle, speech):
    """A page on evil.example that made its name resolve to 127.0.0.1 sends ``Host:
    evil.example`` and its own origin, which matched: refused (400 bad_host) on HTTP and
    WebSocket. A page from https:// on the server's name and port is another origin than the
    http:// server's own: refused (403)."""
    with start_server(ServerConfig(bundles=[bundle])) as server:
        port = server.port
        evil = {"Host": "evil.example", "Origin": "http://evil.example"}

        async def bad():
            http = await asyncio.to_thread(httpx.get, server.url("/v1/models"), headers=evil)
            ws = await asyncio.to_thread(raw_upgrade, port, "evil.example", "http://evil.example")
            scheme = await asyncio.to_thread(
                httpx.get,
                server.url("/v1/models"),
                headers={"Origin": f"https://127.0.0.1:{port}"},
            )
            fine = [
                await asyncio.to_thread(
                    httpx.get, server.url("/v1/models"), headers={"Host": f"{host}:{port}"}
                )
                for host in ("localhost", "127.0.0.1", "[::1]")
            ]
            own = await asyncio.to_thread(
                raw_upgrade, port, f"localhost:{port}", f"http://localhost:{port}"
            )
            return http, ws, scheme, fine, own

        http, ws, scheme, fine, own = alongside(server, speech, bad())
        assert http.status_code == 400 and http.json() == {
            "detail": "host 'evil.example' is not served here",
            "code": "bad_host",
        }
        assert ws.startswith("HTTP/1.1 400"), ws
        assert scheme.status_code == 403 and scheme.json()["code"] == "forbidden_origin"
        assert [r.status_code for r in fine] == [200, 200, 200]
        assert own.startswith("HTTP/1.1 101"), own
        m = metrics(server)
        assert m['voicescreen_streams_rejected_total{transport="http",code="bad_host"}'] == 1
        assert m['voicescreen_streams_rejected_total{transport="stream",code="bad_host"}'] == 1


def test_hosts_and_origins_allowed():
    config = ServerConfig(allowed_hosts=("screen.example.com", "*.calls.example"))
    assert host_ok(config, "screen.example.com:443", "10.0.0.5")
    assert host_ok(config, "eu.calls.example", None)
    assert not host_ok(config, "calls.example.evil", None)
    assert not host_ok(config, "localhost:8000", "127.0.0.1")  # a list replaces the default
    default = ServerConfig(public_url="wss://screen.example.com/voice")
    assert host_ok(default, "screen.example.com", "10.0.0.5")
    assert host_ok(default, "10.0.0.5:8000", "10.0.0.5")  # the address it was reached on
    assert host_ok(default, "[::1]:8000", "10.0.0.5") and host_ok(default, None, None)
    assert not host_ok(default, "evil.example", "10.0.0.5")
    assert host_ok(ServerConfig(allowed_hosts=("*",)), "anything.example", None)
    # the origin's scheme must be the request's (or public_url's, behind a proxy)
    assert origin_ok(default, "http://h:8000", "h:8000", "ws")
    assert not origin_ok(default, "https://h:8000", "h:8000", "ws")
    assert origin_ok(default, "https://h:8000", "h:8000", "wss")
    assert origin_ok(default, "https://screen.example.com", "10.0.0.5:8000", "http")
    with pytest.raises(ValueError, match="trusted proxies are IP addresses or networks"):
        ServerConfig(trusted_proxies=("proxy.example",))


def test_the_api_description_follows_the_token_and_urls_carry_it_only_to_websockets(
    bundle, speech, caplog
):
    """With a token, /docs and both schemas need it as the API does (they were open); a
    ``?token=`` is taken from a WebSocket's URL (browsers cannot give it headers) but not over
    HTTP, and the access log shows it as ``token=...``."""
    caplog.set_level(logging.INFO, logger="uvicorn.access")
    config = ServerConfig(bundles=[bundle], token=TOKEN, access_log=True)
    with start_server(config) as server:

        async def probe():
            got = {}
            for path in ("/docs", "/openapi.json", "/docs/openapi-3.0.json"):
                bare = await asyncio.to_thread(httpx.get, server.url(path))
                with_token = await asyncio.to_thread(httpx.get, server.url(path), headers=AUTH)
                got[path] = (bare.status_code, bare.json()["code"], with_token.status_code)
            query = await asyncio.to_thread(httpx.get, server.url(f"/v1/models?token={TOKEN}"))
            ws = await connect(server.ws_url(f"/v1/stream?token={TOKEN}"))
            await ws.send(json.dumps({"type": "start"}))
            started = await first_message(ws)
            await stop_all([ws])
            return got, query, started

        got, query, started = alongside(server, speech, probe(), token=TOKEN)
    for path, (bare, code, with_token) in got.items():
        assert (bare, code, with_token) == (401, "unauthorized", 200), path
    assert query.status_code == 401
    assert started["type"] == "started"
    lines = [r.getMessage() for r in caplog.records if r.name == "uvicorn.access"]
    assert any("/v1/models?token=... " in line for line in lines), lines
    assert not any(TOKEN in line for line in lines), lines


def test_slow_request_headers_are_cut(bundle, speech):
    """Forty connections that never finish their request headers, and a keep-alive connection
    that starts a second request and stalls: each is closed once its 1 s header deadline passes
    (they were held for good); the good stream and a prompt request are untouched."""
    config = ServerConfig(bundles=[bundle], header_timeout=1.0)
    with start_server(config) as server:

        async def hold(reader, writer, deadline):
            try:
                data = await asyncio.wait_for(reader.read(), deadline)  # until the server closes
            except TimeoutError:
                return None
            finally:
                writer.close()
            return data

        async def bad():
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            slow = []
            for _ in range(40):
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                slow.append((reader, writer))
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            first = await reader.readuntil(b'"models"')  # the first response's head and body
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: ")  # and a second one, stalled
            prompt = await asyncio.to_thread(httpx.get, server.url("/healthz"))
            closed = await asyncio.gather(*(hold(r, w, 30.0) for r, w in slow))
            keep_alive = await hold(reader, writer, 30.0)
            return closed, first, keep_alive, prompt, loop.time() - t0

        closed, first, keep_alive, prompt, took = alongside(server, speech, bad())
        assert closed == [b""] * 40  # each closed by the server, nothing answered
        assert first.startswith(b"HTTP/1.1 200") and keep_alive is not None
        assert prompt.status_code == 200
        assert took < 20.0


def test_an_unanswered_keepalive_ping_is_a_lost_connection_not_an_end(bundle, speech, caplog):
    """A client that stops reading (so never answers the server's pings) is dropped by the
    keep-alive: its stream ends with the error connection_lost and the log says the connection
    was lost (it was logged as a client close, with reason end)."""
    caplog.set_level(logging.INFO, logger="voicescreen.web.ws")
    config = ServerConfig(bundles=[bundle], ws_ping_interval=0.5, ws_ping_timeout=2.0)
    ended = 'voicescreen_streams_total{transport="stream",reason="%s"}'
    with start_server(config) as server:

        async def bad():
            ws = await connect(server.ws_url("/v1/stream"))
            await ws.send(json.dumps({"type": "start", "stream_id": "silent"}))
            assert (await first_message(ws))["type"] == "started"
            await ws.send(speech[:32000])
            ws.transport.pause_reading()  # the pings are never read, so never answered
            while True:  # until both streams ended (run() bounds the wait)
                m = await asyncio.to_thread(metrics, server)
                if m.get(ended % "end", 0) + m.get(ended % "error", 0) >= 2:
                    break
                await asyncio.sleep(0.1)
            ws.transport.abort()
            return m

        m = alongside(server, speech, bad())
    assert m.get(ended % "error") == 1 and m.get(ended % "end") == 1  # the good one
    assert m['voicescreen_stream_errors_total{transport="stream",code="connection_lost"}'] == 1
    lines = [r.getMessage() for r in caplog.records if r.name == "voicescreen.web.ws"]
    assert "stream from 127.0.0.1: connection lost (keep-alive)" in lines, lines
    assert not any("client closed the socket without stop" in line for line in lines), lines
