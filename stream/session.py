"""One stream's session: audio in (bytes or float arrays), events out. No transport in here.

    decode -> resample to 16 kHz -> VAD -> windows -> worker (batched, shared) -> smooth -> events

A transport (WebSocket, WebRTC, a sound card, a file) ``push``es what it receives and, on its
side, iterates ``events()``; or, simpler, ``await feed(chunk)`` returns the events ready so far and
``await close()`` the rest. Each model the session scores with (a worker or a cascade) has its own
windows, smoothing and account; its events come in window order. Every window cut is accounted
for exactly once: scored, ``no_speech``, shed (``overloaded``), failed or cancelled. Malformed
input ends the stream with an ``error`` event; the ``summary`` event is always the last one.

All methods must be called from the thread running the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from voicescreen.audio import SAMPLE_RATE, AudioError, check_channel
from voicescreen.resample import Resampler
from voicescreen.runtimes.reuse import aligned_hop
from voicescreen.stream.codecs import AudioFormat, check_samples, decode
from voicescreen.stream.events import (
    ErrorEvent,
    Event,
    ModelSummary,
    NoSpeechEvent,
    OverloadedEvent,
    ScoreEvent,
    SummaryEvent,
    VerdictEvent,
)
from voicescreen.stream.vad import VadOptions, VoiceGate
from voicescreen.stream.windows import StreamWindow, Windower, WindowOptions
from voicescreen.stream.worker import Overloaded, Result, Scorer, StreamScorer, percentile
from voicescreen.verdict import Smoother, SmoothingOptions, summarise

log = logging.getLogger(__name__)


@dataclass
class _Slot:
    """A window of one model waiting for its turn to become events."""

    window: StreamWindow
    voiced: float | None
    speech: float  # seconds of speech in the stream up to the window's end
    complete: float  # clock time the window's last sample arrived
    status: str  # pending | no_speech | shed
    future: asyncio.Future[Result] | None = None
    done_at: float | None = None
    shed_reason: str = "queue full"

    @property
    def ready(self) -> bool:
        return self.status != "pending" or self.done_at is not None


@dataclass
class _Account:
    windows: int = 0
    early: int = 0
    no_speech: int = 0
    shed: int = 0
    failed: int = 0
    cancelled: int = 0
    scores: list[float] = field(default_factory=list)  # calibrated
    calibration: str | None = None  # the bundle calibration the scores got (the last one)
    latencies: list[float] = field(default_factory=list)  # seconds


class _Track:
    """Windows, smoothing and the ordered results of one model in one stream."""

    def __init__(
        self,
        name: str,
        scorer: Scorer,
        window: WindowOptions,
        smoothing: SmoothingOptions,
        channel: str,
        client: object = None,
    ) -> None:
        self.name = name
        self.scorer = scorer
        self.channel = channel
        open_stream = getattr(scorer, "open_stream", None)
        self.stream: StreamScorer | None = None
        if open_stream is not None:  # a client shares its turn at the worker between its streams
            self.stream = open_stream(channel) if client is None else open_stream(channel, client)
        stride = getattr(scorer, "stride", None)
        if stride:  # the scorer reuses work between windows that start on its grid
            window = replace(window, hop_seconds=aligned_hop(window.hop_seconds, stride))
        self.windower = Windower(window.resolve(scorer.input_samples))
        self.smoother = Smoother(smoothing)
        self.slots: deque[_Slot] = deque()
        self.account = _Account()


class Session:
    """Score one audio stream with one or more models; see the module docstring.

    ``scorers``: a worker or cascade, or a mapping name -> scorer (several models side by side).
    ``fmt``: what pushed bytes (and arrays) are: encoding, sample rate, channels.
    ``channel``: the kind of audio (``wideband`` or ``narrowband``) whose calibration the
    scores get; by default the one ``fmt`` implies (``AudioFormat.channel``: Twilio's 8 kHz
    mu-law is narrowband, a 16 kHz PCM16 stream or a 48 kHz microphone wideband).
    ``parts``: score events of a fusion bundle carry its members' raw scores (``parts``).
    ``client``: who sent the stream (e.g. an address): the workers share their turn between
    clients first, then between a client's streams.
    """

    def __init__(
        self,
        scorers: Scorer | Mapping[str, Scorer],
        *,
        fmt: AudioFormat | None = None,
        window: WindowOptions | None = None,
        vad: VadOptions | None = None,
        smoothing: SmoothingOptions | None = None,
        stream_id: str | None = None,
        channel: str | None = None,
        parts: bool = False,
        client: object = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if not isinstance(scorers, Mapping):
            scorers = {scorers.name: scorers}
        if not scorers:
            raise ValueError("a session needs at least one model")
        self.stream_id = stream_id or uuid.uuid4().hex[:12]
        self.format = fmt or AudioFormat()
        self.channel = check_channel(channel) or self.format.channel
        self.parts = parts
        self.vad = vad or VadOptions()
        self.smoothing = smoothing or SmoothingOptions()
        self._clock = clock
        self._resampler = Resampler(self.format.sample_rate, SAMPLE_RATE)
        self._gate = VoiceGate(self.vad) if self.vad.enabled else None
        window = window or WindowOptions()
        self._tracks = [
            _Track(n, s, window, self.smoothing, self.channel, client) for n, s in scorers.items()
        ]
        self._out: asyncio.Queue[Event | None] = asyncio.Queue()
        self._samples = 0  # 16 kHz samples received
        self._input_open = True
        self._reason: str | None = None  # why input ended: end | error | cancelled
        self._exhausted = False  # the consumer has taken the last event
        self.summary: SummaryEvent | None = None

    # --- input ---------------------------------------------------------------------------------

    @property
    def duration(self) -> float:
        """Stream seconds received (at 16 kHz)."""
        return self._samples / SAMPLE_RATE

    @property
    def finished(self) -> bool:
        return self.summary is not None

    def push(self, data: bytes | bytearray | memoryview | np.ndarray) -> None:
        """Take the next chunk of audio: bytes in ``fmt``, or float samples at ``fmt``'s rate
        ((n,) or (n, channels)). Malformed input ends the stream with an ``error`` event; chunks
        pushed after that are ignored."""
        if not self._input_open:
            if self._reason == "end":
                raise RuntimeError(f"stream {self.stream_id}: push after end()")
            return
        try:
            if isinstance(data, np.ndarray):
                x = check_samples(data, self.format.channels)
            else:
                x = decode(data, self.format)
        except AudioError as e:
            self.fail("bad_input", str(e))
            return
        self._ingest(self._resampler.process(x))

    def end(self) -> None:
        """The stream is over: cut its last windows; the summary follows their results."""
        if not self._input_open:
            return
        # Input stays open until the last windows are cut: with every earlier window already
        # reported, closing it first would let the summary out before the tail window.
        self._ingest(self._resampler.flush())
        now = self._clock()
        for track in self._tracks:
            for w in track.windower.finish():
                self._dispatch(track, w, now)
        self._input_open = False
        self._reason = "end"
        self._drain_all()

    def cancel(self) -> None:
        """The consumer is gone: withdraw queued windows; the summary says ``cancelled``."""
        if self._input_open:
            self._input_open = False
            self._reason = "cancelled"
        for track in self._tracks:
            for slot in track.slots:
                if slot.future is not None:
                    slot.future.cancel()
        self._drain_all()

    def fail(self, code: str, message: str) -> None:
        """End the stream on an error the transport found (oversize frame, idle, bad message):
        an ``error`` event now; windows already submitted still report, then the summary
        (reason ``error``)."""
        log.info("stream %s: %s", self.stream_id, message)
        self._input_open = False
        self._reason = "error"
        self._out.put_nowait(ErrorEvent(stream=self.stream_id, code=code, message=message))
        self._drain_all()

    def _ingest(self, x: np.ndarray) -> None:
        if x.size:
            if self._gate is not None:
                self._gate.process(x)
            self._samples += x.size
            now = self._clock()
            for track in self._tracks:
                for w in track.windower.push(x):
                    self._dispatch(track, w, now)
            if self._gate is not None:
                self._gate.forget_before(min(t.windower.keep_from for t in self._tracks))
        self._drain_all()

    def _speech(self, end: int | None = None) -> float:
        """Seconds of speech in the stream before sample ``end`` (None: all so far), as the
        verdict rule counts it: voiced frames, or every second with the VAD off."""
        if self._gate is not None:
            return self._gate.voiced_seconds(end)
        return (self._samples if end is None else min(end, self._samples)) / SAMPLE_RATE

    def _dispatch(self, track: _Track, w: StreamWindow, now: float) -> None:
        voiced = None if self._gate is None else self._gate.voiced_ratio(w.start, w.end)
        speech = self._speech(w.end)
        track.account.windows += 1
        if voiced is not None and voiced < self.vad.min_voiced:
            track.slots.append(_Slot(w, voiced, speech, now, "no_speech"))
            return
        if track.stream is not None:
            future = track.stream.submit(w)
        else:
            future = track.scorer.submit(w.samples, track.channel)
        if future is None:
            track.slots.append(_Slot(w, voiced, speech, now, "shed"))
            return
        slot = _Slot(w, voiced, speech, now, "pending", future)
        track.slots.append(slot)
        future.add_done_callback(lambda _, t=track, s=slot: self._resolved(t, s))

    def _resolved(self, track: _Track, slot: _Slot) -> None:
        slot.done_at = self._clock()
        future = slot.future
        error = None if future.cancelled() else future.exception()
        if isinstance(error, Overloaded):
            slot.status = "shed"  # too late, or refused downstream (a remote runtime at capacity)
            slot.shed_reason = error.reason
        self._drain(track)
        self._maybe_finish()

    # --- output --------------------------------------------------------------------------------

    def _drain_all(self) -> None:
        for track in self._tracks:
            self._drain(track)
        self._maybe_finish()

    def _drain(self, track: _Track) -> None:
        """Turn the ready windows at the front of ``track`` into events, in window order."""
        shed: list[_Slot] = []
        while track.slots and track.slots[0].ready:
            slot = track.slots.popleft()
            if slot.status == "shed":
                if shed and shed[-1].shed_reason != slot.shed_reason:
                    self._emit_shed(track, shed)
                    shed = []
                shed.append(slot)
                continue
            self._emit_shed(track, shed)
            shed = []
            self._emit(track, slot)
        self._emit_shed(track, shed)

    def _emit_shed(self, track: _Track, shed: list[_Slot]) -> None:
        if not shed:
            return
        track.account.shed += len(shed)
        self._out.put_nowait(
            OverloadedEvent(
                stream=self.stream_id,
                model=track.name,
                windows=[s.window.index for s in shed],
                start=shed[0].window.start / SAMPLE_RATE,
                end=shed[-1].window.end / SAMPLE_RATE,
                reason=shed[0].shed_reason,
            )
        )

    def _emit(self, track: _Track, slot: _Slot) -> None:
        w, account = slot.window, track.account
        where = {
            "stream": self.stream_id,
            "model": track.name,
            "window": w.index,
            "start": w.start / SAMPLE_RATE,
            "end": w.end / SAMPLE_RATE,
            "early": w.early,
            "voiced": slot.voiced,
        }
        if slot.status == "no_speech":
            account.no_speech += 1
            self._out.put_nowait(NoSpeechEvent(**where, min_voiced=self.vad.min_voiced))
            return
        future = slot.future
        if future.cancelled():
            account.cancelled += 1
            return
        if future.exception() is not None:
            account.failed += 1
            self._out.put_nowait(
                ErrorEvent(
                    stream=self.stream_id,
                    code="model_error",
                    message=str(future.exception()),
                    fatal=False,
                    model=track.name,
                    window=w.index,
                )
            )
            return
        result = future.result()
        latency = slot.done_at - slot.complete
        account.scores.append(result.calibrated)
        account.calibration = result.calibration
        account.latencies.append(latency)
        account.early += w.early
        previous = track.smoother.verdict
        smoothed, verdict = track.smoother.update(result.calibrated, slot.speech)
        self._out.put_nowait(
            ScoreEvent(
                **where,
                raw=result.raw,
                calibrated=result.calibrated,
                smoothed=smoothed,
                verdict=verdict,
                latency_ms=1000 * latency,
                batch=result.batch,
                scored_by=result.scored_by,
                screen=result.screen,
                calibration=result.calibration,
                parts=result.parts if self.parts else None,
            )
        )
        if verdict != previous:
            self._out.put_nowait(
                VerdictEvent(
                    stream=self.stream_id,
                    model=track.name,
                    window=w.index,
                    time=w.end / SAMPLE_RATE,
                    verdict=verdict,
                    previous=previous,
                    smoothed=smoothed,
                )
            )

    def _maybe_finish(self) -> None:
        if self._input_open or self.summary is not None:
            return
        if any(track.slots for track in self._tracks):
            return
        self.summary = SummaryEvent(
            stream=self.stream_id,
            reason=self._reason or "end",
            duration=self.duration,
            models={track.name: self._summarise(track) for track in self._tracks},
        )
        self._out.put_nowait(self.summary)
        self._out.put_nowait(None)

    def _summarise(self, track: _Track) -> ModelSummary:
        a = track.account
        scores = a.scores
        heard = self._speech()
        whole = summarise(scores, heard, self.smoothing)
        return ModelSummary(
            windows=a.windows,
            scored=len(scores),
            early=a.early,
            no_speech=a.no_speech,
            shed=a.shed,
            failed=a.failed,
            cancelled=a.cancelled,
            min=min(scores) if scores else None,
            mean=whole.mean,
            max=max(scores) if scores else None,
            verdict=whole.verdict,
            reason=whole.reason,
            speech=heard,
            channel=self.channel,
            calibration=a.calibration,
            latency_ms={
                "p50": None if not a.latencies else 1000 * percentile(a.latencies, 0.5),
                "max": None if not a.latencies else 1000 * max(a.latencies),
            },
        )

    async def events(self) -> AsyncIterator[Event]:
        """Every event of the stream as it becomes ready, ending with the summary."""
        while not self._exhausted:
            event = await self._out.get()
            if event is None:
                self._exhausted = True
                return
            yield event

    def ready(self) -> list[Event]:
        """The events ready now, without waiting."""
        out: list[Event] = []
        while not self._exhausted and not self._out.empty():
            event = self._out.get_nowait()
            if event is None:
                self._exhausted = True
            else:
                out.append(event)
        return out

    async def feed(self, data: bytes | bytearray | memoryview | np.ndarray) -> list[Event]:
        """``push`` a chunk and return the events ready now (results of earlier windows)."""
        self.push(data)
        await asyncio.sleep(0)  # let finished results call back
        return self.ready()

    async def close(self) -> list[Event]:
        """``end`` the stream and wait for the rest of its events, the summary last."""
        self.end()
        return [event async for event in self.events()]
