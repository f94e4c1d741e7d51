"""A call-tap client: stream an audio file to ``/v1/stream`` or ``/v1/twilio`` at real-time pace
(or as fast as the socket takes it) and collect the messages the server sends back.

This is ``voicescreen tap``, and what the tests and ``scripts/load_test.py`` speak through.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from voicescreen.audio import SAMPLE_RATE, TELEPHONE_RATE, load_audio
from voicescreen.stream.codecs import encode_alaw, encode_mulaw
from voicescreen.web.config import SAMPLE_RATES
from voicescreen.web.twilio import (
    FRAME_BYTES,
    connected_message,
    media_message,
    new_sid,
    start_message,
    stop_message,
)

log = logging.getLogger(__name__)

Outgoing = tuple[bytes | dict[str, Any], float]  # a message and the seconds of audio it holds


def check_url(url: str) -> None:
    """A ``ws://`` or ``wss://`` URL with a host, or a ``TapError`` saying what to give instead
    (an ``http://`` URL gets its WebSocket form)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and parts.netloc:
        scheme = "wss" if parts.scheme == "https" else "ws"
        path = parts.path if parts.path not in ("", "/") else "/v1/stream"
        raise TapError(f"{url}: a WebSocket URL is needed: {scheme}://{parts.netloc}{path}")
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        raise TapError(
            f"{url}: not a WebSocket URL; give one like ws://127.0.0.1:8000/v1/stream "
            "(or /v1/twilio with --twilio)"
        )


class TapError(RuntimeError):
    """The server refused the connection (HTTP status and its message) or could not be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class TapResult:
    """What came back: every JSON message in order, and how the server closed the socket."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""
    sent_seconds: float = 0.0

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == kind]

    @property
    def summaries(self) -> list[dict[str, Any]]:
        return self.of_type("summary")

    @property
    def errors(self) -> list[dict[str, Any]]:
        return self.of_type("error")


def _int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype("<i2")


def pcm_messages(
    path: str | Path,
    *,
    encoding: str = "pcm16",
    chunk_ms: float = 20.0,
    models: list[str] | None = None,
    stream_id: str | None = None,
    stop: bool = True,
    channel: str | None = None,
) -> list[Outgoing]:
    """``/v1/stream`` messages for a file: ``start``, audio frames of ``chunk_ms``, ``stop``;
    ``channel`` (wideband or narrowband) declared in the start when given.

    PCM16 and float32 go at the file's own rate and channels (resampled to 16 kHz mono when the
    rate is not one a server takes); mu-law and A-law at 8 kHz mono, as telephony sends them."""
    import soundfile as sf

    if encoding in ("mulaw", "alaw"):
        rate, channels = TELEPHONE_RATE, 1
        pcm = _int16(load_audio(path, rate))
        data = encode_mulaw(pcm) if encoding == "mulaw" else encode_alaw(pcm)
    elif encoding in ("pcm16", "float32"):
        info = sf.info(str(path))
        rate, channels = info.samplerate, info.channels
        if rate in SAMPLE_RATES:
            x, _ = sf.read(str(path), dtype="float32", always_2d=True)
        else:
            rate, channels = SAMPLE_RATE, 1
            x = load_audio(path)[:, None]
        data = (_int16(x) if encoding == "pcm16" else x.astype("<f4")).tobytes()
    else:
        raise ValueError(f"unknown encoding {encoding!r}")
    width = {"pcm16": 2, "float32": 4, "mulaw": 1, "alaw": 1}[encoding] * channels
    step = max(1, int(rate * chunk_ms / 1000)) * width
    start: dict[str, Any] = {
        "type": "start",
        "sample_rate": rate,
        "encoding": encoding,
        "channels": channels,
    }
    if models:
        start["models"] = list(models)
    if stream_id:
        start["stream_id"] = stream_id
    if channel:
        start["channel"] = channel
    out: list[Outgoing] = [(start, 0.0)]
    out += [
        (data[i : i + step], len(data[i : i + step]) / width / rate)
        for i in range(0, len(data), step)
    ]
    if stop:
        out.append(({"type": "stop"}, 0.0))
    return out


def mulaw_frames(path: str | Path) -> list[bytes]:
    """A file as Twilio would carry it: 8 kHz mu-law in 20 ms (160-byte) frames."""
    data = encode_mulaw(_int16(load_audio(path, TELEPHONE_RATE)))
    return [data[i : i + FRAME_BYTES] for i in range(0, len(data), FRAME_BYTES)]


def twilio_messages(
    tracks: dict[str, list[bytes]],
    *,
    stream_sid: str | None = None,
    call_sid: str | None = None,
    account_sid: str | None = None,
    custom_parameters: dict[str, str] | None = None,
    stop: bool = True,
) -> list[Outgoing]:
    """Twilio Media Streams messages for a call: ``connected``, ``start``, the ``media`` of each
    track interleaved 20 ms by 20 ms (as Twilio sends ``both_tracks``), ``stop``."""
    stream_sid = stream_sid or new_sid("MZ")
    call_sid = call_sid or new_sid("CA")
    account_sid = account_sid or new_sid("AC")
    out: list[Outgoing] = [(connected_message(), 0.0)]
    sequence = 1
    out.append(
        (
            start_message(
                sequence, stream_sid, call_sid, account_sid, list(tracks), custom_parameters
            ),
            0.0,
        )
    )
    longest = max((len(frames) for frames in tracks.values()), default=0)
    for i in range(longest):
        for n, (track, frames) in enumerate(tracks.items()):
            if i >= len(frames):
                continue
            sequence += 1
            msg = media_message(sequence, stream_sid, track, i + 1, 20 * i, frames[i])
            # the frame's 20 ms of time passes once per round of tracks
            out.append((msg, len(frames[i]) / TELEPHONE_RATE if n == 0 else 0.0))
    if stop:
        sequence += 1
        out.append((stop_message(sequence, stream_sid, call_sid, account_sid), 0.0))
    return out


async def converse(
    url: str,
    outgoing: Iterable[Outgoing],
    *,
    realtime: bool = True,
    token: str | None = None,
    on_message: Callable[[dict[str, Any]], None] | None = None,
    open_timeout: float = 30.0,
    headers: Mapping[str, str] | None = None,
) -> TapResult:
    """Send ``outgoing`` (dicts as JSON text, bytes as binary), at the pace of the audio they hold
    when ``realtime``, while collecting what the server sends, until it closes the socket.
    ``headers`` go with the WebSocket upgrade request (besides the ``token``'s)."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    check_url(url)
    headers = {**(headers or {}), **({"Authorization": f"Bearer {token}"} if token else {})}
    result = TapResult()
    try:
        ws = await connect(
            url, additional_headers=headers, open_timeout=open_timeout, max_size=None
        )
    except InvalidStatus as e:
        body = e.response.body.decode(errors="replace").strip() if e.response.body else ""
        with contextlib.suppress(json.JSONDecodeError, AttributeError):
            body = json.loads(body).get("detail", body)
        body = body or e.response.reason_phrase or "refused"
        raise TapError(
            f"{url}: HTTP {e.response.status_code}: {body}", e.response.status_code
        ) from e
    except (OSError, TimeoutError) as e:
        raise TapError(f"{url}: cannot connect ({e})") from e

    async def send() -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for item, seconds in outgoing:
            try:
                await ws.send(json.dumps(item) if isinstance(item, dict) else item)
            except ConnectionClosed:
                return
            result.sent_seconds += seconds
            if realtime:
                delay = t0 + result.sent_seconds - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            else:
                await asyncio.sleep(0)

    sender = asyncio.create_task(send())
    try:
        async for raw in ws:
            message = json.loads(raw)
            result.messages.append(message)
            if on_message is not None:
                on_message(message)
    except ConnectionClosed:
        pass
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        await ws.close()
    if ws.close_code is not None:
        result.close_code = ws.close_code
        result.close_reason = ws.close_reason or ""
    return result


def tap_messages(
    path: str | Path,
    *,
    twilio: bool = False,
    encoding: str = "pcm16",
    chunk_ms: float = 20.0,
    models: list[str] | None = None,
    stream_id: str | None = None,
    channel: str | None = None,
) -> Iterator[Outgoing]:
    if twilio:
        yield from twilio_messages({"inbound": mulaw_frames(path)})
    else:
        yield from pcm_messages(
            path,
            encoding=encoding,
            chunk_ms=chunk_ms,
            models=models,
            stream_id=stream_id,
            channel=channel,
        )
