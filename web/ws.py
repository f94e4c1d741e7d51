"""``WS /v1/stream``: the generic call-tap.

A client sends one JSON ``start`` message, then binary audio frames in the declared format, then
``{"type": "stop"}``. The server answers ``started``, then the session's events as JSON text
messages (``docs/events.md``), the ``summary`` last, and closes. Errors are ``error`` events
followed by the close; see ``docs/server.md`` for the codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Coroutine
from typing import Any

from fastapi import WebSocket
from starlette.responses import JSONResponse
from starlette.websockets import WebSocketDisconnect, WebSocketState

from voicescreen.stream import ErrorEvent, Event, Session
from voicescreen.web.auth import origin_ok, presented_token, token_ok
from voicescreen.web.state import AppState
from voicescreen.web.streams import (
    CLOSE_CODES,
    CLOSE_NORMAL,
    KEEPALIVE_LOST,
    ClientGone,
    Deliver,
    StreamError,
    close_reason,
    parse_start,
    quote,
)

log = logging.getLogger(__name__)


class Peer:
    """One accepted WebSocket: JSON out, messages in with an idle timeout, and a record of
    whether the client is still there."""

    def __init__(self, websocket: WebSocket, state: AppState, transport: str) -> None:
        self.ws = websocket
        self.state = state
        self.config = state.config
        self.transport = transport
        self.client = websocket.client.host if websocket.client else "unknown"
        self.id = uuid.uuid4().hex[:12]  # the stream id until a start message names one
        self.gone = False

    async def admit(self, defer_token: bool = False) -> bool | None:
        """Check origin and token before the handshake completes; refuse with an HTTP error
        (403, 401) when they fail. With ``defer_token``, a request carrying no token at all is
        let in (returns None) for the protocol to present one later."""
        ws = self.ws
        if not origin_ok(
            self.config, ws.headers.get("origin"), ws.headers.get("host"), ws.url.scheme
        ):
            await self.deny(
                403, "forbidden_origin", f"origin {quote(ws.headers.get('origin'))} not allowed"
            )
            return False
        token = presented_token(ws.headers, ws.query_params)
        if token is None and defer_token and self.config.token is not None:
            return None
        if not token_ok(self.config, token):
            await self.deny(401, "unauthorized", "missing or wrong bearer token")
            return False
        return True

    async def deny(self, status: int, code: str, message: str) -> None:
        self.state.metrics.rejected[self.transport, code] += 1
        log.info("%s from %s refused: %s", self.transport, self.client, message)
        response = JSONResponse({"detail": message, "code": code}, status_code=status)
        if status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        try:
            await self.ws.send_denial_response(response)
        except RuntimeError:  # the server lacks the denial extension: a bare refusal
            await self.ws.close(CLOSE_CODES.get(code, 1008))

    async def send_json(self, message: dict[str, Any]) -> None:
        await self.send_text(json.dumps(message, separators=(",", ":"), allow_nan=False))

    async def send_text(self, text: str) -> None:
        if self.gone:
            raise ClientGone()
        try:
            await self.ws.send_text(text)
        except (WebSocketDisconnect, RuntimeError, OSError) as e:
            self.gone = True
            raise ClientGone() from e

    async def send_event(self, event: Event) -> None:
        await self.send_text(event.to_json())

    async def receive(self, deadline: float | None = None) -> dict[str, Any]:
        """The next message; StreamError ``idle_timeout`` when none comes in time, and
        ``unauthorized`` when the loop's clock passes ``deadline`` (the time an unauthenticated
        socket has to authenticate, whatever it sends meanwhile) first."""
        timeout, code = self.config.idle_timeout, "idle_timeout"
        why = f"no message for {timeout:g} s"
        if deadline is not None:
            left = max(deadline - asyncio.get_running_loop().time(), 0.0)
            if left < timeout:
                timeout, code, why = left, "unauthorized", AUTH_TIMEOUT_MESSAGE
        try:
            message = await asyncio.wait_for(self.ws.receive(), timeout)
        except TimeoutError:
            raise StreamError(code, why) from None
        if message["type"] == "websocket.disconnect":
            self.gone = True
            if message.get("reason") == KEEPALIVE_LOST:
                log.info("%s from %s: connection lost (keep-alive)", self.transport, self.client)
                raise StreamError(
                    "connection_lost",
                    f"no answer to a keep-alive ping in {self.config.ws_ping_timeout:g} s",
                )
        return message

    async def refuse(self, error: StreamError, stream: str | None = None) -> None:
        """Send a fatal ``error`` event for a stream that never began, and close."""
        self.state.metrics.rejected[self.transport, error.code] += 1
        log.info("%s from %s: %s: %s", self.transport, self.client, error.code, error.message)
        event = ErrorEvent(stream=stream or self.id, code=error.code, message=error.message)
        with contextlib.suppress(ClientGone):
            await self.send_event(event)
        await self.close(error.close_code, error.message)

    async def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        if self.gone or self.ws.application_state == WebSocketState.DISCONNECTED:
            return
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
            await self.ws.close(code, close_reason(reason))


AUTH_SECONDS = 10.0  # an unauthenticated socket's time to authenticate (Twilio: its start)
AUTH_TIMEOUT_MESSAGE = f"no authenticated start within {AUTH_SECONDS:g} s"


def decode_json(text: str) -> dict[str, Any]:
    """A text message as a JSON object; StreamError ``bad_message`` otherwise."""
    try:
        message = json.loads(text)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, and an integer of more digits
        # than Python converts (``ValueError: Exceeds the limit (4300 digits) ...``)
        raise StreamError("bad_message", f"text message is not valid JSON ({e})") from None
    if not isinstance(message, dict):
        raise StreamError("bad_message", "a text message must be a JSON object")
    return message


def ended_by(event: Event) -> str | None:
    """The error code of a fatal error event, else None."""
    if event.type == "error" and event.fatal:
        return event.code
    return None


async def read_start(peer: Peer) -> dict[str, Any]:
    """The first message, which must be the JSON ``start``."""
    message = await peer.receive()
    if message["type"] == "websocket.disconnect":
        raise ClientGone()
    if message.get("bytes") is not None:
        raise StreamError(
            "missing_start", 'audio before the start message: send {"type": "start", ...} first'
        )
    start = decode_json(message.get("text") or "")
    if start.get("type") != "start":
        raise StreamError(
            "missing_start",
            f"the first message must be of type 'start', got {quote(start.get('type'))}",
        )
    return start


async def pump(peer: Peer, session: Session, deadline: float) -> None:
    """Audio frames into the session until ``stop``, a disconnect or an error."""
    config = peer.config
    loop = asyncio.get_running_loop()
    limit = peer.state.streams.rate_limit()
    while True:
        try:
            message = await peer.receive()
        except StreamError as e:
            session.fail(e.code, e.message)
            return
        if message["type"] == "websocket.disconnect":
            log.info("stream %s: client closed the socket without stop", session.stream_id)
            session.end()
            return
        data = message.get("bytes")
        if data is not None:
            if len(data) > config.max_frame_bytes:
                session.fail(
                    "frame_too_large",
                    f"a {len(data)}-byte frame; the limit is {config.max_frame_bytes} bytes",
                )
                return
            before = session.duration
            session.push(data)
            if session.duration > config.max_stream_seconds or loop.time() > deadline:
                session.fail(
                    "stream_too_long",
                    f"the stream passed the {config.max_stream_seconds:g} s limit",
                )
                return
            try:
                await peer.state.streams.keep_pace(
                    limit, session.duration - before, peer.transport, session.stream_id
                )
            except StreamError as e:
                session.fail(e.code, e.message)
                return
            continue
        try:
            control = decode_json(message.get("text") or "")
            kind = control.get("type")
            if kind != "stop":
                raise StreamError(
                    "bad_message", f"unknown message type {quote(kind)} (after start only 'stop')"
                )
        except StreamError as e:
            session.fail(e.code, e.message)
            return
        session.end()
        return


async def stream_endpoint(websocket: WebSocket) -> None:
    """``WS /v1/stream``."""
    state: AppState = websocket.app.state.voicescreen
    peer = Peer(websocket, state, "stream")
    if not await peer.admit():
        return
    await websocket.accept()
    try:
        with state.streams.slot("stream", peer.client):
            await run_stream(peer, state)
    except StreamError as e:  # the per-client limit
        await peer.refuse(e)
    except ClientGone:
        pass


async def run_stream(peer: Peer, state: AppState) -> None:
    try:
        start = parse_start(await read_start(peer), state.config, state.workers)
    except StreamError as e:
        await peer.refuse(e)
        return
    session = state.streams.session(
        start.format,
        start.models,
        start.stream_id or peer.id,
        start.channel,
        start.parts,
        client=peer.client,
    )
    with contextlib.suppress(ClientGone):
        await peer.send_json(state.streams.started(session, start.models))
    await drive(peer, session, "stream", pump(peer, session, _deadline(state)), peer.send_event)


def _deadline(state: AppState) -> float:
    return asyncio.get_running_loop().time() + state.config.max_stream_seconds


async def drive(
    peer: Peer,
    session: Session,
    transport: str,
    reader: Coroutine[Any, Any, None],
    deliver: Deliver,
) -> None:
    """Run a session: ``reader`` (a coroutine feeding it) against the relay of its events to
    ``deliver``; close the socket when the summary is out, with the close code of the error
    that ended the stream, if one did."""
    state = peer.state
    ended: list[str] = []

    async def relay_to_peer(event: Event) -> None:
        code = ended_by(event)
        if code is not None:
            ended.append(code)
        await deliver(event)

    relay = asyncio.create_task(state.streams.relay(session, transport, relay_to_peer))
    reading = asyncio.create_task(reader)
    try:
        await asyncio.wait({relay, reading}, return_when=asyncio.FIRST_COMPLETED)
        if not reading.done():  # the session ended itself (malformed audio)
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
        elif reading.exception() is not None:
            log.error("stream %s: reader failed", session.stream_id, exc_info=reading.exception())
            session.fail("internal", "the server failed reading this stream")
        await relay
    finally:
        for task in (reading, relay):
            if not task.done():
                task.cancel()
        if not session.finished:
            session.cancel()
    code = ended[0] if ended else None
    await peer.close(
        CLOSE_CODES.get(code, CLOSE_NORMAL) if code else CLOSE_NORMAL,
        f"stream ended: {code}" if code else "stream ended",
    )
