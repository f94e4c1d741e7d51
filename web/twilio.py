"""``WS /v1/twilio``: Twilio Media Streams.

Twilio (``<Start><Stream url="wss://HOST/v1/twilio">`` in TwiML, or any platform speaking the same
protocol) sends JSON text messages: ``connected``, ``start`` (``streamSid``, ``callSid``,
``tracks``, ``mediaFormat``: 8 kHz mono ``audio/x-mulaw``, ``customParameters``), ``media``
(base64 mu-law payloads of one ``track``, usually 20 ms each), ``dtmf``, ``mark`` and ``stop``.
Each track (``inbound``, ``outbound``) is screened as a stream of its own, with the stream id
``STREAMSID:TRACK``. Results go to the configured sinks: the socket itself (our ``started`` and
event messages, for clients that read them; Twilio ignores them on a one-way stream), a webhook,
and the log.

The message builders below make messages in Twilio's documented shape (``voicescreen tap
--twilio`` and the tests speak through them).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import re
import secrets
from typing import Any

from fastapi import WebSocket

from voicescreen.audio import TELEPHONE_RATE
from voicescreen.stream import AudioFormat, ErrorEvent, Event, Session
from voicescreen.web.auth import TWILIO_SIGNATURE, token_ok, twilio_signature_ok, websocket_url
from voicescreen.web.sinks import log_event
from voicescreen.web.state import AppState
from voicescreen.web.streams import (
    CLOSE_CODES,
    CLOSE_NORMAL,
    ClientGone,
    RateLimit,
    StreamError,
    quote,
)
from voicescreen.web.ws import AUTH_SECONDS, Peer, decode_json, ended_by

log = logging.getLogger(__name__)

MULAW_8K = AudioFormat("mulaw", TELEPHONE_RATE, 1)
MEDIA_FORMAT = {"encoding": "audio/x-mulaw", "sampleRate": TELEPHONE_RATE, "channels": 1}
TRACKS = ("inbound", "outbound")
FRAME_BYTES = 160  # 20 ms of 8 kHz mu-law, what Twilio sends per media message

# What a start message may carry. The SIDs name the call in every event, log line and webhook, and
# the custom parameters go back in each ``started``: all are bounded. (Twilio's SIDs are 34
# characters; a <Stream>'s <Parameter>s are a few short strings.)
SID = re.compile(r"^[A-Za-z0-9._:/@-]{1,64}$")
MAX_SID = 64  # characters of a streamSid or callSid
MAX_CUSTOM_PARAMETERS = 32  # entries of customParameters
MAX_PARAMETER_NAME = 64  # characters of a custom parameter's name
MAX_PARAMETER_VALUE = 512  # characters of its value


# --- Twilio's messages -------------------------------------------------------------------------


def new_sid(prefix: str) -> str:
    """A Twilio-style SID: two letters and 32 hex digits."""
    return prefix + secrets.token_hex(16)


def connected_message() -> dict[str, Any]:
    return {"event": "connected", "protocol": "Call", "version": "1.0.0"}


def start_message(
    sequence: int,
    stream_sid: str,
    call_sid: str,
    account_sid: str,
    tracks: list[str],
    custom_parameters: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "event": "start",
        "sequenceNumber": str(sequence),
        "start": {
            "accountSid": account_sid,
            "streamSid": stream_sid,
            "callSid": call_sid,
            "tracks": list(tracks),
            "customParameters": dict(custom_parameters or {}),
            "mediaFormat": dict(MEDIA_FORMAT),
        },
        "streamSid": stream_sid,
    }


def media_message(
    sequence: int, stream_sid: str, track: str, chunk: int, timestamp_ms: int, payload: bytes
) -> dict[str, Any]:
    return {
        "event": "media",
        "sequenceNumber": str(sequence),
        "media": {
            "track": track,
            "chunk": str(chunk),
            "timestamp": str(timestamp_ms),
            "payload": base64.b64encode(payload).decode("ascii"),
        },
        "streamSid": stream_sid,
    }


def mark_message(sequence: int, stream_sid: str, name: str) -> dict[str, Any]:
    return {
        "event": "mark",
        "sequenceNumber": str(sequence),
        "streamSid": stream_sid,
        "mark": {"name": name},
    }


def stop_message(sequence: int, stream_sid: str, call_sid: str, account_sid: str) -> dict[str, Any]:
    return {
        "event": "stop",
        "sequenceNumber": str(sequence),
        "stop": {"accountSid": account_sid, "callSid": call_sid},
        "streamSid": stream_sid,
    }


# --- the endpoint ------------------------------------------------------------------------------


def _field(message: dict[str, Any], key: str) -> dict[str, Any]:
    value = message.get(key)
    if not isinstance(value, dict):
        raise StreamError("bad_message", f"a {message.get('event')} message needs a {key!r} object")
    return value


def check_sid(value: Any, name: str) -> str:
    """A ``streamSid`` or ``callSid``: up to ``MAX_SID`` letters, digits and ``._:/@-``."""
    if not isinstance(value, str) or not value:
        raise StreamError("bad_start", f"start.{name} is missing")
    if not SID.match(value):
        raise StreamError(
            "bad_start",
            f"start.{name} must be 1-{MAX_SID} characters of letters, digits and ._:/@-, got "
            + quote(value),
        )
    return value


def check_custom_parameters(value: Any) -> dict[str, Any]:
    """``customParameters``: at most ``MAX_CUSTOM_PARAMETERS`` names of up to
    ``MAX_PARAMETER_NAME`` characters, each with a string (or a number, true, false or null) of
    up to ``MAX_PARAMETER_VALUE`` characters."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise StreamError("bad_start", "start.customParameters must be an object")
    if len(value) > MAX_CUSTOM_PARAMETERS:
        raise StreamError(
            "bad_start",
            f"start.customParameters has {len(value):,} entries; the limit is "
            f"{MAX_CUSTOM_PARAMETERS}",
        )
    for name, item in value.items():
        if len(name) > MAX_PARAMETER_NAME:
            raise StreamError(
                "bad_start",
                f"start.customParameters names must be at most {MAX_PARAMETER_NAME} "
                f"characters, got {quote(name)}",
            )
        scalar = item is None or isinstance(item, str | int | float | bool)
        if not scalar or len(str(item)) > MAX_PARAMETER_VALUE:
            raise StreamError(
                "bad_start",
                f"start.customParameters[{quote(name)}] must be a string of at most "
                f"{MAX_PARAMETER_VALUE} characters, got {quote(item)}",
            )
    return value


class TwilioCall:
    """One Twilio Media Streams connection: a session per track."""

    def __init__(self, peer: Peer, state: AppState, token_checked: bool) -> None:
        self.peer = peer
        self.state = state
        self.config = state.config
        self.sinks = frozenset(self.config.twilio_sinks)
        self.token_checked = token_checked
        self.stream_sid: str | None = None
        self.call_sid: str | None = None
        self.custom: dict[str, Any] = {}
        self.sessions: dict[str, Session] = {}
        self.relays: dict[str, asyncio.Task] = {}
        self.limits: dict[str, RateLimit | None] = {}
        self.ended: list[str] = []
        self._deadline = asyncio.get_running_loop().time() + self.config.max_stream_seconds

    @property
    def context(self) -> dict[str, Any]:
        return {"callSid": self.call_sid, "streamSid": self.stream_sid}

    # sinks

    async def deliver(self, event: Event, track: str | None) -> None:
        code = ended_by(event)
        if code is not None:
            self.ended.append(code)
        where = f"twilio call {self.call_sid} {self.stream_sid}:{track or '-'}"
        if "log" in self.sinks or event.type == "error":
            log_event(log, event, where)
        if "webhook" in self.sinks and self.state.webhook is not None:
            self.state.webhook.post(event, {**self.context, "track": track})
        if "socket" in self.sinks and not self.peer.gone:
            with contextlib.suppress(ClientGone):
                await self.peer.send_event(event)

    async def refuse(self, error: StreamError) -> None:
        self.state.metrics.rejected["twilio", error.code] += 1
        await self.deliver(
            ErrorEvent(
                stream=self.stream_sid or self.peer.id, code=error.code, message=error.message
            ),
            None,
        )
        await self.peer.close(error.close_code, error.message)

    # messages

    async def on_start(self, message: dict[str, Any]) -> None:
        if self.stream_sid is not None:
            raise StreamError("bad_message", "a second start message on one stream")
        start = _field(message, "start")
        stream_sid = check_sid(start.get("streamSid") or message.get("streamSid"), "streamSid")
        call_sid = check_sid(start.get("callSid"), "callSid")
        custom = check_custom_parameters(start.get("customParameters") or None)
        if not self.token_checked:
            token = custom.get("token")
            if not token_ok(self.config, token if isinstance(token, str) else None):
                raise StreamError("unauthorized", "missing or wrong token (customParameters.token)")
            self.token_checked = True
        media_format = start.get("mediaFormat", MEDIA_FORMAT)
        if (
            not isinstance(media_format, dict)
            or {k: media_format.get(k) for k in MEDIA_FORMAT} != MEDIA_FORMAT
        ):
            raise StreamError(
                "bad_start",
                f"mediaFormat must be {MEDIA_FORMAT} (Twilio's), got {quote(media_format)}",
            )
        tracks = start.get("tracks", ["inbound"])
        if (
            not isinstance(tracks, list)
            or not 1 <= len(tracks) <= len(TRACKS)
            or any(t not in TRACKS for t in tracks)
        ):
            raise StreamError(
                "bad_start", f"tracks must be a list of {TRACKS}, got {quote(tracks)}"
            )
        tracks = list(dict.fromkeys(tracks))
        self.stream_sid, self.call_sid = stream_sid, call_sid
        self.custom = {k: v for k, v in custom.items() if k != "token"}
        log.info("twilio call %s stream %s: tracks %s", call_sid, stream_sid, tracks)
        for track in tracks:
            await self.open_track(track)

    async def open_track(self, track: str) -> Session:
        session = self.state.streams.session(
            MULAW_8K, None, f"{self.stream_sid}:{track}", client=self.peer.client
        )
        self.sessions[track] = session
        self.limits[track] = self.state.streams.rate_limit()
        if "socket" in self.sinks and not self.peer.gone:
            started = self.state.streams.started(session, None)
            started.update(track=track, **self.context, customParameters=self.custom)
            with contextlib.suppress(ClientGone):
                await self.peer.send_json(started)

        async def deliver(event: Event) -> None:
            await self.deliver(event, track)

        self.relays[track] = asyncio.create_task(
            self.state.streams.relay(session, "twilio", deliver), name=f"relay {session.stream_id}"
        )
        return session

    async def on_media(self, message: dict[str, Any]) -> None:
        if self.stream_sid is None:
            raise StreamError("missing_start", "a media message before start")
        sid = message.get("streamSid")
        if sid is not None and sid != self.stream_sid:  # Twilio names its stream in every media
            raise StreamError(
                "bad_message",
                f"media of stream {quote(sid)}; this socket carries {self.stream_sid}",
            )
        media = _field(message, "media")
        track = media.get("track", "inbound")
        if track not in TRACKS:
            raise StreamError("bad_message", f"unknown track {quote(track)}; Twilio's are {TRACKS}")
        payload = media.get("payload")
        if not isinstance(payload, str):
            raise StreamError("bad_input", "media.payload must be a base64 string")
        if len(payload) > 4 * self.config.max_frame_bytes // 3 + 4:
            raise StreamError(
                "frame_too_large",
                f"a {len(payload)}-character payload; the limit is "
                f"{self.config.max_frame_bytes} bytes of audio",
            )
        try:
            audio = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as e:
            raise StreamError("bad_input", f"media.payload is not valid base64 ({e})") from None
        session = self.sessions.get(track) or await self.open_track(track)
        session.push(audio)
        if session.duration > self.config.max_stream_seconds or (
            asyncio.get_running_loop().time() > self._deadline
        ):
            raise StreamError(
                "stream_too_long",
                f"the stream passed the {self.config.max_stream_seconds:g} s limit",
            )
        await self.state.streams.keep_pace(
            self.limits[track], len(audio) / MULAW_8K.sample_rate, "twilio", session.stream_id
        )

    async def read(self) -> str:
        """Messages until ``stop`` or the end of the socket; returns how it ended."""
        # Without a token in the request, only an authenticated start lets the call go on: the
        # socket has AUTH_SECONDS for it, however many other messages it sends meanwhile.
        deadline = asyncio.get_running_loop().time() + AUTH_SECONDS
        while True:
            message = await self.peer.receive(None if self.token_checked else deadline)
            if message["type"] == "websocket.disconnect":
                return "disconnect"
            if message.get("bytes") is not None:
                raise StreamError("bad_message", "Twilio Media Streams send text (JSON) messages")
            text = message.get("text") or ""
            if len(text) > 2 * self.config.max_frame_bytes:
                raise StreamError("frame_too_large", f"a {len(text)}-character message")
            msg = decode_json(text)
            event = msg.get("event")
            if event == "connected":
                continue
            if event == "start":
                await self.on_start(msg)
            elif event == "media":
                await self.on_media(msg)
            elif event == "stop":
                if self.stream_sid is None:
                    raise StreamError("missing_start", "a stop message before start")
                return "stop"
            elif event in ("mark", "dtmf"):
                log.debug("twilio stream %s: %s %s", self.stream_sid, event, quote(msg.get(event)))
            elif not isinstance(event, str):
                raise StreamError("bad_message", "a Twilio message needs an 'event' field")
            else:
                log.debug("twilio stream %s: ignoring event %s", self.stream_sid, quote(event))

    async def run(self) -> None:
        try:
            how = await self.read()
        except StreamError as e:
            if not self.sessions:
                await self.refuse(e)
                return
            for session in self.sessions.values():
                session.fail(e.code, e.message)
        except asyncio.CancelledError:
            for session in self.sessions.values():
                session.cancel()
            raise
        else:
            if how == "disconnect":
                log.info("twilio stream %s: socket closed without stop", self.stream_sid)
            for session in self.sessions.values():
                session.end()
        try:
            await asyncio.gather(*self.relays.values())
        finally:
            for task in self.relays.values():
                task.cancel()
        code = self.ended[0] if self.ended else None
        await self.peer.close(
            CLOSE_CODES.get(code, CLOSE_NORMAL) if code else CLOSE_NORMAL,
            f"stream ended: {code}" if code else "stream ended",
        )


async def twilio_endpoint(websocket: WebSocket) -> None:
    """``WS /v1/twilio``."""
    state: AppState = websocket.app.state.voicescreen
    peer = Peer(websocket, state, "twilio")
    signature = websocket.headers.get(TWILIO_SIGNATURE)
    url = websocket_url(state.config, websocket.scope)
    if not twilio_signature_ok(state.config, signature, url):
        await peer.deny(
            403,
            "bad_signature",
            f"{'wrong' if signature else 'missing'} X-Twilio-Signature",
        )
        return
    admitted = await peer.admit(defer_token=True)
    if admitted is False:
        return
    await websocket.accept()
    call = TwilioCall(peer, state, token_checked=admitted is True)
    try:
        with state.streams.slot("twilio", peer.client):
            await call.run()
    except StreamError as e:
        await call.refuse(e)
