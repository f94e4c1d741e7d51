"""What every request passes before an endpoint sees it: the ``Host`` it names must be one the
server answers to (``host_ok``: a page on a rebound DNS name names its own), and the server must
have room for one more connection (``max_connections`` HTTP requests and WebSockets in progress
at once). A refusal is an HTTP error in the endpoints' form, ``{"detail", "code"}``: 400
``bad_host`` or 503 ``too_many_connections`` (a WebSocket gets it as the handshake's answer),
counted in ``/metrics`` as ``voicescreen_streams_rejected_total``."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from voicescreen.web.auth import host_ok
from voicescreen.web.streams import quote

if TYPE_CHECKING:
    from voicescreen.web.state import AppState

log = logging.getLogger(__name__)

TRANSPORT_PATHS = {"/v1/stream": "stream", "/v1/twilio": "twilio", "/v1/rtc/offer": "rtc"}
WEBSOCKET_PATHS = ("/v1/stream", "/v1/twilio")
CLOSE_BAD_HOST = 1008
CLOSE_TRY_AGAIN = 1013


class Guard:
    """ASGI middleware over the whole app, for ``state``'s config."""

    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app = app
        self.state = state
        self.open = 0  # HTTP requests and WebSockets in progress

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        config = self.state.config
        host = Headers(scope=scope).get("host")
        server = scope.get("server")
        if not host_ok(config, host, server[0] if server else None):
            await self.refuse(
                scope, receive, send, 400, "bad_host", f"host {quote(host)} is not served here"
            )
            return
        if self.open >= config.max_connections:
            await self.refuse(
                scope,
                receive,
                send,
                503,
                "too_many_connections",
                f"the server has {config.max_connections} connections open (its limit); "
                "try again later",
            )
            return
        if scope["type"] == "websocket" and scope.get("path") not in WEBSOCKET_PATHS:
            # Starlette would refuse it as 403, which reads as "not allowed"; say what it is
            await self.refuse(
                scope,
                receive,
                send,
                404,
                "no_such_endpoint",
                f"no WebSocket endpoint at {quote(scope.get('path', ''))}; the server has "
                + " and ".join(WEBSOCKET_PATHS),
            )
            return
        self.open += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.open -= 1

    async def refuse(
        self, scope: Scope, receive: Receive, send: Send, status: int, code: str, message: str
    ) -> None:
        transport = TRANSPORT_PATHS.get(scope.get("path", ""), "http")
        self.state.metrics.rejected[transport, code] += 1
        client = scope.get("client")
        log.info("%s from %s refused: %s", transport, client[0] if client else "?", message)
        response = JSONResponse({"detail": message, "code": code}, status_code=status)
        if scope["type"] == "http":
            await response(scope, receive, send)
        elif "websocket.http.response" in scope.get("extensions", {}):
            await response(scope, receive, send)  # Starlette sends it as the denial
        else:  # no denial extension: accept nothing, close
            await receive()  # websocket.connect
            close = CLOSE_TRY_AGAIN if status == 503 else CLOSE_BAD_HOST
            await send({"type": "websocket.close", "code": close, "reason": message[:120]})
