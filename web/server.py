"""Running a server: in the foreground (``voicescreen serve``) or in a background thread on a free
loopback port (tests, load tests, embedding)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

import uvicorn

from voicescreen.web.app import create_app
from voicescreen.web.config import ServerConfig

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


def uvicorn_config(app: Any, config: ServerConfig, **options: Any) -> uvicorn.Config:
    """uvicorn's settings for ``app``: WebSocket messages a little above the app's own frame
    limit (so an oversize frame gets the app's clear error, and a huge one is cut by the
    protocol), no access log (streams log themselves)."""
    _quiet_denials()
    options.setdefault("log_config", None)
    options.setdefault("access_log", False)
    return uvicorn.Config(
        app,
        ws_max_size=max(2 * config.max_frame_bytes + 4096, 1 << 16),
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
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
) -> None:
    """Serve until interrupted, on ``sock`` (from ``listen``) when given."""
    app = create_app(config)
    server = uvicorn.Server(uvicorn_config(app, config, host=host, port=port))
    server.run(sockets=[sock] if sock is not None else None)


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
