"""What every transport shares: the start of a stream, per-client limits, and relaying a session's
events to wherever the transport sends them. Transports convert frames to audio and events to
messages; the session (``voicescreen.stream.Session``) does the rest."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import reprlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from voicescreen.audio import SAMPLE_RATE, check_channel
from voicescreen.stream import (
    AudioFormat,
    DecodeError,
    Event,
    InferenceWorker,
    Session,
    SummaryEvent,
)
from voicescreen.stream.codecs import ENCODINGS
from voicescreen.web.config import ServerConfig
from voicescreen.web.metrics import ServerMetrics

log = logging.getLogger(__name__)

STREAM_ID = re.compile(r"^[A-Za-z0-9._:/@-]{1,128}$")
TRANSPORTS = ("stream", "twilio", "rtc")

# What a client may name at the start of a stream; each is echoed back (in ``started``, in every
# event's ``stream``) and logged, so each is bounded. A list of models names each model at most
# once, and a server serves a few.
MAX_MODELS = 32  # names in a stream's (or an offer's) list of models
MAX_MODEL_NAME = 128  # characters of one model name
QUOTE_LIMIT = 80  # characters of a client's value quoted back in an error message or a log line


class _Quote(reprlib.Repr):
    def __init__(self, limit: int) -> None:
        super().__init__()
        self.maxstring = self.maxother = self.maxlong = limit
        self.maxlist = self.maxtuple = self.maxdict = self.maxset = 8
        self.maxlevel = 3


def quote(value: Any, limit: int = QUOTE_LIMIT) -> str:
    """``value``, a client's input, as ``repr`` shows it, cut to about ``limit`` characters: the
    start, and how long the whole was (``'aaaa...' (1,048,576 characters)``). Every error message
    and log line that repeats what a client sent quotes it through here, so what the server says
    back (and logs) stays small, however much was sent."""
    if isinstance(value, str | bytes) and len(value) > limit:
        text = repr(value[:limit])  # the start, not reprlib's start and end
    else:
        text = _Quote(limit).repr(value)
    cut = len(text) > limit
    if cut:
        text = text[:limit] + "..."
    if isinstance(value, str | bytes) and (cut or len(value) > limit):
        return f"{text} ({len(value):,} characters)"
    if isinstance(value, list | tuple | dict | set) and (cut or "..." in text):
        return f"{text} ({len(value):,} item{'s' if len(value) != 1 else ''})"
    return text


# WebSocket close codes (RFC 6455 section 7.4.1 and the IANA registry).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_INVALID_DATA = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN = 1013

# Error codes of the transports (``docs/server.md``), with the close code each ends a socket with.
# ``bad_input`` and ``model_error`` come from the session itself (``docs/events.md``).
CLOSE_CODES = {
    "bad_input": CLOSE_INVALID_DATA,
    "bad_message": CLOSE_POLICY,
    "bad_start": CLOSE_POLICY,
    "missing_start": CLOSE_POLICY,
    "unauthorized": CLOSE_POLICY,
    "frame_too_large": CLOSE_TOO_BIG,
    "stream_too_long": CLOSE_POLICY,
    "idle_timeout": CLOSE_POLICY,
    "rate_limited": CLOSE_POLICY,
    "too_many_streams": CLOSE_TRY_AGAIN,
    "connection_lost": CLOSE_INTERNAL,  # (the socket is gone: no one reads it)
    "internal": CLOSE_INTERNAL,
}


# The reason of the ``websocket.disconnect`` the server's protocol gives a WebSocket whose peer
# left a keep-alive ping unanswered (``voicescreen.web.server``): the connection was lost, the
# client did not close it.
KEEPALIVE_LOST = "keepalive ping timeout"


class StreamError(Exception):
    """A reason, at the transport, to refuse or end a stream: an error ``code`` from
    ``CLOSE_CODES`` and a message for the client."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def close_code(self) -> int:
        return CLOSE_CODES.get(self.code, CLOSE_POLICY)


class ClientGone(Exception):
    """The transport's peer went away; events can no longer be delivered."""


def close_reason(message: str) -> str:
    """A WebSocket close reason: at most 123 UTF-8 bytes."""
    data = message.encode()
    if len(data) <= 123:
        return message
    return data[:120].decode(errors="ignore") + "..."


@dataclass(frozen=True)
class StreamStart:
    """What a client declares when a stream begins."""

    format: AudioFormat
    models: tuple[str, ...] | None = None  # None: every model the server serves
    stream_id: str | None = None
    channel: str | None = None  # wideband / narrowband as declared; None: what the format implies
    parts: bool = False  # score events carry a fusion's members' scores


START_FIELDS = (
    "type", "sample_rate", "encoding", "channels", "stream_id", "models", "channel", "parts"
)  # fmt: skip


def check_stream_id(value: Any) -> str:
    if not isinstance(value, str) or not STREAM_ID.match(value):
        raise StreamError(
            "bad_start",
            "stream_id must be 1-128 characters of letters, digits and ._:/@-, got " + quote(value),
        )
    return value


def check_models(value: Any, known: Mapping[str, Any]) -> tuple[str, ...]:
    """A client's choice of models (a name, or a list of up to ``MAX_MODELS`` names of up to
    ``MAX_MODEL_NAME`` characters), each one ``known``; StreamError ``bad_start`` otherwise."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(m, str) for m in value):
        raise StreamError(
            "bad_start", f"models must be a non-empty list of names, got {quote(value)}"
        )
    if len(value) > MAX_MODELS or any(len(m) > MAX_MODEL_NAME for m in value):
        raise StreamError(
            "bad_start",
            f"models must list at most {MAX_MODELS} names of at most {MAX_MODEL_NAME} "
            f"characters, got {quote(value)}",
        )
    unknown = [m for m in value if m not in known]
    if unknown:
        raise StreamError(
            "bad_start", f"unknown model(s) {quote(unknown)}; this server serves {list(known)}"
        )
    return tuple(dict.fromkeys(value))


def parse_start(
    message: Mapping[str, Any], config: ServerConfig, known: Mapping[str, Any]
) -> StreamStart:
    """Check a ``{"type": "start", ...}`` message of ``/v1/stream`` (already decoded JSON)."""
    unknown = [k for k in message if k not in START_FIELDS]
    if unknown:
        raise StreamError(
            "bad_start",
            f"unknown field(s) {quote(unknown)} in start; known: {list(START_FIELDS)}",
        )
    rate = message.get("sample_rate", SAMPLE_RATE)
    if isinstance(rate, float) and rate.is_integer():
        rate = int(rate)
    if not isinstance(rate, int) or isinstance(rate, bool) or rate not in config.sample_rates:
        raise StreamError(
            "bad_start",
            f"sample_rate must be one of {list(config.sample_rates)} Hz, got {quote(rate)}",
        )
    encoding = message.get("encoding", "pcm16")
    if encoding not in ENCODINGS:
        raise StreamError(
            "bad_start", f"unknown encoding {quote(encoding)}; use one of {list(ENCODINGS)}"
        )
    channels = message.get("channels", 1)
    if (
        not isinstance(channels, int)
        or isinstance(channels, bool)
        or not 1 <= channels <= config.max_channels
    ):
        raise StreamError(
            "bad_start",
            f"channels must be an integer 1-{config.max_channels}, got {quote(channels)}",
        )
    try:
        fmt = AudioFormat(encoding, rate, channels)
    except DecodeError as e:
        raise StreamError("bad_start", str(e)) from None
    models = message.get("models")
    stream_id = message.get("stream_id")
    try:
        channel = check_channel(message.get("channel"))
    except ValueError as e:
        raise StreamError("bad_start", str(e)) from None
    parts = message.get("parts", False)
    if not isinstance(parts, bool):
        raise StreamError("bad_start", f"parts must be true or false, got {quote(parts)}")
    return StreamStart(
        fmt,
        None if models is None else check_models(models, known),
        None if stream_id is None else check_stream_id(stream_id),
        channel,
        parts,
    )


class RateLimit:
    """One stream's audio against the wall clock, as a token bucket of audio seconds: it holds
    up to ``burst`` seconds and refills at ``factor`` seconds per wall-clock second. A live
    stream (real time) never empties it; a stream sent faster than ``factor`` times real time
    empties it once it is ``burst`` seconds of audio ahead, and ``charge`` then says how long it
    must wait to be back within its pace."""

    def __init__(
        self, factor: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.factor = factor
        self.burst = burst
        self.clock = clock
        self.credit = burst
        self.last: float | None = None
        self.held = 0.0  # wall seconds this stream was made to wait

    def charge(self, seconds: float) -> float:
        """Count ``seconds`` of audio received now; the wall-clock seconds the stream is ahead
        of its pace (0.0 when within it)."""
        now = self.clock()
        if self.last is not None:
            self.credit = min(self.burst, self.credit + (now - self.last) * self.factor)
        self.last = now
        self.credit -= seconds
        return max(0.0, -self.credit / self.factor)


Deliver = Callable[[Event], Awaitable[None]]


class Streams:
    """The server's streams: who has how many open, how sessions are built, and the relay of
    their events (counted in ``metrics`` on the way)."""

    def __init__(
        self, config: ServerConfig, workers: Mapping[str, InferenceWorker], metrics: ServerMetrics
    ) -> None:
        self.config = config
        self.workers = workers
        self.metrics = metrics
        self.clients: Counter[str] = Counter()
        self.open = 0  # streams open, all clients together

    @contextlib.contextmanager
    def slot(self, transport: str, client: str) -> Iterator[None]:
        """Hold one of ``client``'s stream slots while the block runs; StreamError
        ``too_many_streams`` when the client already has ``max_streams_per_client`` streams
        open, or the server ``max_streams``. (The refusal is counted where it is delivered.)"""
        limit = self.config.max_streams_per_client
        if self.clients[client] >= limit:
            raise StreamError(
                "too_many_streams", f"{client} already has {limit} streams open (the limit)"
            )
        if self.open >= self.config.max_streams:
            raise StreamError(
                "too_many_streams",
                f"the server already has {self.config.max_streams} streams open (its limit)",
            )
        self.clients[client] += 1
        self.open += 1
        self.metrics.active[transport] += 1
        try:
            yield
        finally:
            self.metrics.active[transport] -= 1
            self.open -= 1
            self.clients[client] -= 1
            if self.clients[client] <= 0:
                del self.clients[client]

    def rate_limit(self) -> RateLimit | None:
        """A new stream's rate limit (None when the server has none)."""
        factor = self.config.max_realtime_factor
        return None if factor is None else RateLimit(factor, self.config.realtime_burst_seconds)

    async def keep_pace(
        self, limit: RateLimit | None, seconds: float, transport: str, stream_id: str
    ) -> None:
        """After a stream received ``seconds`` more audio: when it is ahead of its pace, wait
        until it is not (``throttle``: the stream is not read meanwhile, so the client's sends
        wait) or raise StreamError ``rate_limited`` (``close``)."""
        if limit is None:
            return
        wait = limit.charge(seconds)
        if wait <= 0:
            return
        if self.config.rate_limit == "close":
            raise StreamError(
                "rate_limited",
                f"audio is arriving faster than {limit.factor:g}x real time "
                f"(beyond a {limit.burst:g} s burst)",
            )
        if not limit.held:
            log.info(
                "stream %s: audio faster than %gx real time; reading it at that pace",
                stream_id,
                limit.factor,
            )
        limit.held += wait
        self.metrics.throttled[transport] += wait
        await asyncio.sleep(wait)

    def session(
        self,
        fmt: AudioFormat,
        models: tuple[str, ...] | None,
        stream_id: str | None,
        channel: str | None = None,
        parts: bool = False,
        client: str | None = None,
    ) -> Session:
        """A session for a new stream; ``channel`` None: the one ``fmt`` implies; ``parts``:
        its score events carry a fusion's members' scores; ``client``: its address, whose
        streams share one turn at the workers."""
        names = models or tuple(self.workers)
        return Session(
            {name: self.workers[name] for name in names},
            fmt=fmt,
            window=self.config.window,
            vad=self.config.vad,
            smoothing=self.config.smoothing,
            stream_id=stream_id,
            channel=channel,
            parts=parts,
            client=client,
        )

    def started(self, session: Session, models: tuple[str, ...] | None) -> dict[str, Any]:
        """The ``started`` message that acknowledges a stream: its id, models and format."""
        return {
            "type": "started",
            "stream": session.stream_id,
            "models": {
                name: self._model_start(name, session.channel) for name in models or self.workers
            },
            "channel": session.channel,
            "format": {
                "encoding": session.format.encoding,
                "sample_rate": session.format.sample_rate,
                "channels": session.format.channels,
            },
            "hop_seconds": self.config.window.hop_seconds,
            "smoothing": {
                "windows": self.config.smoothing.windows,
                "enter": self.config.smoothing.enter,
                "leave": self.config.smoothing.leave,
                "min_speech": self.config.smoothing.min_speech,
            },
        }

    def _model_start(self, name: str, channel: str) -> dict[str, Any]:
        spec, calibration = self.workers[name].calibration(channel)
        return {
            "input_samples": self.workers[name].input_samples,
            "threshold": spec.threshold,
            "calibration": calibration,
        }

    async def relay(
        self, session: Session, transport: str, deliver: Deliver | None
    ) -> SummaryEvent | None:
        """Every event of ``session`` to ``deliver`` (while the peer is there), the summary last;
        returns the summary. Events are counted in the metrics whether delivered or not."""
        async for event in session.events():
            self.metrics.observe(event, transport)
            if deliver is None:
                continue
            try:
                await deliver(event)
            except ClientGone:
                log.info("stream %s: client gone, finishing without it", session.stream_id)
                deliver = None
        summary = session.summary
        if summary is not None:
            log.info(
                "stream %s (%s) ended: %s, %.1f s, %s",
                session.stream_id,
                transport,
                summary.reason,
                summary.duration,
                ", ".join(
                    f"{m} {s.verdict} ({s.scored}/{s.windows} scored)"
                    for m, s in summary.models.items()
                ),
            )
        return summary
