"""``POST /v1/rtc/offer``: the browser's microphone over WebRTC (aiortc).

The page posts an SDP offer with one audio track and a data channel, ``{"sdp", "type": "offer",
"models"?, "stream_id"?}``; the server answers. Audio frames (Opus, decoded by aiortc to 48 kHz
PCM16) go into a session as they arrive; the session resamples them like any other stream. The
session's events go back on the data channel as the same JSON text messages as ``/v1/stream``
(``started`` first, the ``summary`` last). The page ends the stream with ``{"type": "stop"}`` on
the data channel; a closed peer connection ends it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from typing import TYPE_CHECKING, Any

import numpy as np

from voicescreen.stream import AudioFormat, Event, Session
from voicescreen.web.streams import ClientGone, StreamError, check_models, check_stream_id, quote

if TYPE_CHECKING:
    from aiortc import RTCDataChannel, RTCPeerConnection
    from av import AudioFrame

    from voicescreen.web.state import AppState

log = logging.getLogger(__name__)

MAX_SDP = 64 * 1024  # characters
LINGER = 10.0  # seconds a peer connection stays open after its summary, for the page to close it


class RtcError(StreamError):
    """An offer the server cannot answer: HTTP 400 (or ``status``)."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(code, message)
        self.status = status


FORMATS = {
    "s16": ("pcm16", False),
    "s16p": ("pcm16", True),
    "flt": ("float32", False),
    "fltp": ("float32", True),
}


def frame_bytes(frame: AudioFrame) -> tuple[AudioFormat, bytes]:
    """An aiortc audio frame as (format, interleaved little-endian bytes)."""
    kind = FORMATS.get(frame.format.name)
    if kind is None:
        raise ValueError(f"unsupported audio frame format {frame.format.name}")
    encoding, planar = kind
    channels = len(frame.layout.channels)
    samples = frame.to_ndarray()
    if planar:
        samples = samples.T
    dtype = "<i2" if encoding == "pcm16" else "<f4"
    data = np.ascontiguousarray(samples.reshape(-1), dtype=dtype).tobytes()
    return AudioFormat(encoding, int(frame.sample_rate), channels), data


class RtcStream:
    """One browser's peer connection and its session."""

    def __init__(
        self,
        state: AppState,
        pc: RTCPeerConnection,
        models: tuple[str, ...] | None,
        stream_id: str,
        slot: contextlib.ExitStack,
        on_close: Any = None,
        client: str | None = None,
    ) -> None:
        self.state = state
        self.client = client
        self.on_close = on_close
        self.config = state.config
        self.pc = pc
        self.models = models
        self.stream_id = stream_id
        self.slot = slot
        self.channel: RTCDataChannel | None = None
        self.session: Session | None = None
        self.relay: asyncio.Task | None = None
        self.input_done = False
        self.pending: list[str] = []
        self.tasks: set[asyncio.Task] = set()
        self.closed = asyncio.Event()

    # --- events out ----------------------------------------------------------------------------

    def send(self, text: str) -> None:
        channel = self.channel
        if channel is None or channel.readyState == "connecting":
            self.pending.append(text)
            return
        if channel.readyState != "open":
            raise ClientGone()
        while self.pending:
            channel.send(self.pending.pop(0))
        channel.send(text)

    async def deliver(self, event: Event) -> None:
        self.send(event.to_json())

    def on_channel(self, channel: RTCDataChannel) -> None:
        self.channel = channel

        @channel.on("open")
        def flush() -> None:
            with contextlib.suppress(ClientGone):
                while self.pending:
                    channel.send(self.pending.pop(0))

        @channel.on("message")
        def on_message(message: str | bytes) -> None:
            try:
                kind = json.loads(message).get("type") if isinstance(message, str) else None
            except (json.JSONDecodeError, AttributeError):
                kind = None
            if kind == "stop":
                log.info("rtc stream %s: stop", self.stream_id)
                self.finish_input()
            else:
                log.info(
                    "rtc stream %s: ignoring data channel message %s",
                    self.stream_id,
                    quote(message),
                )

        if channel.readyState == "open":
            flush()

    # --- audio in ------------------------------------------------------------------------------

    def ensure_session(self, fmt: AudioFormat) -> Session:
        if self.session is None:
            self.session = self.state.streams.session(
                fmt, self.models, self.stream_id, client=self.client
            )
            with contextlib.suppress(ClientGone):
                started = self.state.streams.started(self.session, self.models)
                self.send(json.dumps(started, separators=(",", ":")))
            self.relay = asyncio.create_task(self._relay(), name=f"relay {self.stream_id}")
        return self.session

    async def _relay(self) -> None:
        assert self.session is not None
        try:
            await self.state.streams.relay(self.session, "rtc", self.deliver)
        finally:
            self.spawn(self.linger())

    def finish_input(self, error: StreamError | None = None) -> None:
        if self.input_done:
            return
        self.input_done = True
        session = self.ensure_session(AudioFormat("pcm16", 48000, 2))
        if error is not None:
            session.fail(error.code, error.message)
        else:
            session.end()

    async def consume(self, track: Any) -> None:
        from aiortc.mediastreams import MediaStreamError

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.max_stream_seconds
        error: StreamError | None = None
        while not self.input_done:
            try:
                frame = await asyncio.wait_for(track.recv(), self.config.idle_timeout)
            except MediaStreamError:
                break
            except TimeoutError:
                error = StreamError("idle_timeout", f"no audio for {self.config.idle_timeout:g} s")
                break
            if self.input_done:
                break
            try:
                fmt, data = frame_bytes(frame)
            except ValueError as e:
                error = StreamError("bad_input", str(e))
                break
            session = self.ensure_session(fmt)
            if fmt != session.format:
                error = StreamError("bad_input", f"the audio format changed mid-stream to {fmt}")
                break
            session.push(data)
            if session.duration > self.config.max_stream_seconds or loop.time() > deadline:
                error = StreamError(
                    "stream_too_long",
                    f"the stream passed the {self.config.max_stream_seconds:g} s limit",
                )
                break
        self.finish_input(error)

    # --- lifetime ------------------------------------------------------------------------------

    def spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def linger(self) -> None:
        """Give the page a moment to read the summary and hang up, then hang up ourselves."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closed.wait(), LINGER)
        await self.close()

    async def close(self) -> None:
        if self.session is not None and not self.session.finished and not self.input_done:
            self.input_done = True
            self.session.end()
        await self.pc.close()
        self.closed.set()
        self.slot.close()
        if self.on_close is not None:
            self.on_close(self)


class RtcPeers:
    """The server's WebRTC peer connections."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.streams: set[RtcStream] = set()

    async def offer(self, body: Any, client: str) -> dict[str, Any]:
        from aiortc import (
            RTCConfiguration,
            RTCIceServer,
            RTCPeerConnection,
            RTCRtpReceiver,
            RTCSessionDescription,
        )

        if not isinstance(body, dict):
            raise RtcError("bad_sdp", "the offer must be a JSON object {sdp, type}")
        sdp, kind = body.get("sdp"), body.get("type")
        if kind != "offer" or not isinstance(sdp, str) or not sdp.strip():
            raise RtcError("bad_sdp", 'expected {"sdp": "...", "type": "offer"}')
        if len(sdp) > MAX_SDP:
            raise RtcError("bad_sdp", f"the SDP is longer than {MAX_SDP} characters", 413)
        unknown = set(body) - {"sdp", "type", "models", "stream_id"}
        if unknown:
            raise RtcError("bad_sdp", f"unknown field(s) {quote(sorted(unknown))} in the offer")
        try:
            models = (
                None
                if body.get("models") is None
                else check_models(body["models"], self.state.workers)
            )
            stream_id = check_stream_id(body.get("stream_id") or uuid.uuid4().hex[:12])
        except StreamError as e:
            raise RtcError(e.code, e.message) from None
        if "m=audio" not in sdp:
            raise RtcError("bad_sdp", "the offer has no audio track")
        if "m=application" not in sdp:
            raise RtcError("bad_sdp", "the offer has no data channel for the events")

        slot = contextlib.ExitStack()
        try:
            slot.enter_context(self.state.streams.slot("rtc", client))
        except StreamError as e:
            raise RtcError(e.code, e.message, 429) from None
        ice = [RTCIceServer(url) for url in self.state.config.ice_servers]
        pc = RTCPeerConnection(RTCConfiguration(iceServers=ice))
        stream = RtcStream(
            self.state, pc, models, stream_id, slot, self.streams.discard, client=client
        )
        pc.on("datachannel", stream.on_channel)

        @pc.on("track")
        def on_track(track: Any) -> None:
            if track.kind == "audio" and not stream.input_done:
                stream.spawn(stream.consume(track))

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            log.debug("rtc stream %s: %s", stream_id, pc.connectionState)
            if pc.connectionState in ("failed", "closed"):
                stream.finish_input()
                stream.closed.set()

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            audio = [t for t in pc.getTransceivers() if t.kind == "audio"]
            if not audio:
                raise RtcError("bad_sdp", "the offer has no audio track")
            opus = [
                c
                for c in RTCRtpReceiver.getCapabilities("audio").codecs
                if c.mimeType.lower() == "audio/opus"
            ]
            for transceiver in audio:
                transceiver.setCodecPreferences(opus)
            await pc.setLocalDescription(await pc.createAnswer())
        except RtcError:
            await pc.close()
            slot.close()
            raise
        except Exception as e:  # aiortc raises ValueError, InvalidStateError, ... on bad SDP
            await pc.close()
            slot.close()
            reason = str(e).strip() or f"{type(e).__name__} while parsing it"  # some say nothing
            raise RtcError("bad_sdp", f"cannot answer this offer: {reason[:200]}") from None
        self.streams.add(stream)
        log.info("rtc stream %s from %s: answered", stream_id, client)
        return {
            "sdp": pc.localDescription.sdp,
            "type": pc.localDescription.type,
            "stream": stream_id,
        }

    async def close(self) -> None:
        for stream in list(self.streams):
            await stream.close()
