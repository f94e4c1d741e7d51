"""Running a server: in the foreground (``voicescreen serve``) or in a background thread on a free
loopback port (tests, load tests, embedding)."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import threading
import time
from typing import Any

import uvicorn

from voicescreen.web.app import create_app
from voicescreen.web.config import ServerConfig
from voicescreen.web.streams import KEEPALIVE_LOST

log = logging.getLogger(__name__)

STARTUP_TIMEOUT = 120.0  # seconds: loading bundles on a busy machine


class _DenialLogFilter(logging.Filter):
    """uvicorn's websockets-sansio protocol logs "ASGI callable returned without completing
    handshake" at ERROR after every HTTP denial of a WebSocket (401/403), though the client got
    the denial (Kludex/uvicorn#3138, open). Our endpoints always accept or deny, so the line is
    always that false alarm here; drop it until uvicorn is fixed."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "ASGI callable returned without completing handshake."


def _quiet_denials() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DenialLogFilter) for f in logger.filters):
        logger.addFilter(_DenialLogFilter())


TOKEN_IN_QUERY = re.compile(r"([?&]token=)[^&\s]*", re.IGNORECASE)


class _TokenLogFilter(logging.Filter):
    """An access log line names the request's path and query: a ``?token=`` there (a browser's
    WebSocket, the demo page's URL) is shown as ``token=...``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                TOKEN_IN_QUERY.sub(r"\1...", a) if isinstance(a, str) else a for a in record.args
            )
        return True


def _redact_access_log() -> None:
    logger = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _TokenLogFilter) for f in logger.filters):
        logger.addFilter(_TokenLogFilter())


def header_deadline_protocol(seconds: float) -> type[asyncio.Protocol] | str:
    """uvicorn's HTTP protocol (httptools), with a deadline on request headers: a connection
    that has not sent a whole request head within ``seconds`` of opening, or of the end of its
    previous response, is closed. uvicorn waits for headers for ever (its keep-alive timeout
    stops at the first byte), so a client that trickled headers held a connection for good.
    (Without httptools: uvicorn's own choice, and no deadline, said in the log.)"""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # pragma: no cover - uvicorn[standard] brings httptools
        log.warning("httptools is missing: request headers have no deadline")
        return "auto"

    class HeaderDeadline(HttpToolsProtocol):
        _header_deadline: asyncio.TimerHandle | None = None

        def _busy(self) -> bool:
            return self.cycle is not None and not self.cycle.response_complete

        def _arm(self) -> None:
            self._disarm()
            if not self._busy():  # (a pipelined request may already be running)
                self._header_deadline = self.loop.call_later(seconds, self._headers_late)

        def _disarm(self) -> None:
            if self._header_deadline is not None:
                self._header_deadline.cancel()
                self._header_deadline = None

        def _headers_late(self) -> None:
            self._header_deadline = None
            if self.transport.is_closing() or self._busy():
                return
            client = self.client[0] if self.client else "?"
            log.info("closing a connection from %s: no request headers in %g s", client, seconds)
            self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # the next request on this connection gets as long

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderDeadline


def keepalive_protocol() -> type[asyncio.Protocol] | str:
    """uvicorn's WebSocket protocol (websockets, sans-I/O), telling the app when it drops a
    connection for an unanswered keep-alive ping: the ``websocket.disconnect`` it then gives
    says so (code 1011, reason ``KEEPALIVE_LOST``) instead of the 1005 of any lost connection,
    so the stream is not taken for one its client closed."""
    try:
        from uvicorn.protocols.websockets.websockets_sansio_impl import (
            WebSocketsSansIOProtocol,
        )
    except ImportError:  # pragma: no cover - uvicorn[standard] brings websockets
        return "auto"

    class KeepaliveAware(WebSocketsSansIOProtocol):
        def keepalive_timeout(self) -> None:
            if not (self.close_sent or self.transport.is_closing()):
                lost = {"type": "websocket.disconnect", "code": 1011, "reason": KEEPALIVE_LOST}
                self.queue.put_nowait(lost)
            super().keepalive_timeout()

    return KeepaliveAware


def uvicorn_config(app: Any, config: ServerConfig, **options: Any) -> uvicorn.Config:
    """uvicorn's settings for ``app``: WebSocket messages a little above the app's own frame
    limit (so an oversize frame gets the app's clear error, and a huge one is cut by the
    protocol), a deadline on request headers, forwarded headers believed from the trusted
    proxies only, no access log unless asked for (streams log themselves)."""
    _quiet_denials()
    _redact_access_log()
    options.setdefault("log_config", None)
    options.setdefault("access_log", config.access_log)
    return uvicorn.Config(
        app,
        http=header_deadline_protocol(config.header_timeout),
        proxy_headers=bool(config.trusted_proxies),
        forwarded_allow_ips=list(config.trusted_proxies),
        ws_max_size=max(2 * config.max_frame_bytes + 4096, 1 << 16),
        ws=keepalive_protocol(),
        ws_ping_interval=config.ws_ping_interval,
        ws_ping_timeout=config.ws_ping_timeout,
        timeout_graceful_shutdown=5,
        **options,
    )


def listen(host: str = "127.0.0.1", port: int = 8000) -> socket.socket:
    """A socket bound to ``host``:``port`` for ``serve``, made before anything slow starts so
    that a port in use is said at once; raises ``OSError`` (EADDRINUSE, ...) as ``bind`` does."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def serve(
    config: ServerConfig,
    host: str = "127.0.0.1",
    port: int = 8000,
    sock: socket.socket | None = None,
) -> list[int]:
    """Serve until interrupted, on ``sock`` (from ``listen``) when given; the signals that
    stopped it (uvicorn shuts down gracefully on SIGINT or SIGTERM, then raises the signal
    again, but a Ctrl-C raised again while ``asyncio.run``'s own SIGINT handler is in place may
    only cancel a task that has already finished: the caller cannot rely on seeing it)."""
    app = create_app(config)
    server = uvicorn.Server(uvicorn_config(app, config, host=host, port=port))
    server.run(sockets=[sock] if sock is not None else None)
    return list(getattr(server, "_captured_signals", ()))


class BackgroundServer:
    """A server in a thread on ``host`` and a free port::

    with BackgroundServer(config) as server:
        server.url("/healthz"), server.ws_url("/v1/stream")
    """

    def __init__(self, config: ServerConfig, host: str = "127.0.0.1") -> None:
        self.config = config
        self.host = host
        self.app = create_app(config)
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, 0))
        self.port = self._socket.getsockname()[1]
        self._server = uvicorn.Server(uvicorn_config(self.app, config, loop="asyncio"))
        self._thread = threading.Thread(
            target=self._run, name=f"voicescreen :{self.port}", daemon=True
        )
        self._error: BaseException | None = None

    @property
    def state(self) -> Any:
        return self.app.state.voicescreen

    def url(self, path: str = "/") -> str:
        return f"http://{self.host}:{self.port}{path}"

    def ws_url(self, path: str) -> str:
        return f"ws://{self.host}:{self.port}{path}"

    def _run(self) -> None:
        try:
            self._server.run(sockets=[self._socket])
        except BaseException as e:  # surfaced by start()
            self._error = e
            raise

    def start(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server did not start: {self._error!r}")
            time.sleep(0.02)
        log.info("serving on %s", self.url())
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(STARTUP_TIMEOUT)
        self._socket.close()

    def __enter__(self) -> BackgroundServer:
        return self if self._thread.is_alive() else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
