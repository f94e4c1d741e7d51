"""The monitor's loop: a source's audio into one ``Session``, its events to a sink (and spoof turns
to the alerts), until the source ends, a duration, Ctrl-C, or a spoof verdict."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Mapping
from dataclasses import dataclass

from voicescreen.monitor.alerts import Alerts
from voicescreen.monitor.sinks import Sink
from voicescreen.monitor.sources import Source
from voicescreen.monitor.view import REFRESH_HZ, ModelView, MonitorState
from voicescreen.stream import (
    AudioFormat,
    Session,
    SmoothingOptions,
    SummaryEvent,
    VadOptions,
    WindowOptions,
)
from voicescreen.stream.worker import Scorer

EXIT_OK, EXIT_BAD_AUDIO, EXIT_ERROR, EXIT_SPOOF, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


@dataclass
class Outcome:
    summary: SummaryEvent | None
    spoofed: bool  # --exit-on-spoof fired
    alerts: int  # alert commands run
    lost: bool = False  # the device stopped delivering audio

    @property
    def exit_code(self) -> int:
        if self.spoofed:
            return EXIT_SPOOF
        if self.lost:
            return EXIT_ERROR
        if self.summary is not None and self.summary.reason == "error":
            return EXIT_BAD_AUDIO
        return EXIT_OK


async def monitor(
    source: Source,
    scorers: Mapping[str, Scorer],
    sink: Sink,
    *,
    window: WindowOptions | None = None,
    vad: VadOptions | None = None,
    smoothing: SmoothingOptions | None = None,
    duration: float | None = None,
    alerts: Alerts | None = None,
    exit_on_spoof: bool = False,
    channel: str | None = None,
) -> Outcome:
    """Screen ``source`` with ``scorers`` until it ends, ``duration`` seconds of audio have been
    read, Ctrl-C (or SIGTERM), or, with ``exit_on_spoof``, a verdict turns spoof; every event goes
    to ``sink``. One ``Session`` does the screening; the monitor only moves audio and events.
    ``channel``: the kind of audio (wideband, narrowband) whose calibration the scores get;
    None: what the source's rate implies."""
    vad = vad or VadOptions()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    spoofed = False
    async with contextlib.AsyncExitStack() as opened:
        await opened.enter_async_context(source)
        state = MonitorState(
            source=source.label,
            models={name: ModelView() for name in scorers},
            min_voiced=vad.min_voiced if vad.enabled else 0.0,
            rate=source.rate,
        )
        session = Session(
            scorers,
            fmt=AudioFormat("float32", source.rate, source.channels or 1),
            channel=channel or getattr(source, "channel", None),  # a file's is measured
            window=window,
            vad=vad,
            smoothing=smoothing,
        )

        def interrupt() -> None:
            if stop.is_set():  # a second Ctrl-C: do not wait for the last windows
                session.cancel()
            state.status = "finishing…"
            stop.set()

        handled = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, interrupt)
                handled.append(sig)

        async def consume() -> None:
            nonlocal spoofed
            async for e in session.events():
                state.event(e)
                sink.event(e)
                if e.type == "error" and e.fatal:  # malformed audio: the stream is over
                    stop.set()
                if e.type == "verdict" and e.verdict == "spoof":
                    if alerts is not None:
                        alerts.fire(e)
                    if exit_on_spoof and not spoofed:
                        spoofed = True
                        state.status = "spoof: stopping…"
                        stop.set()

        async def feed() -> None:
            limit = None if duration is None else int(round(duration * source.rate))
            async for chunk in source:
                if limit is not None:
                    chunk = chunk[: limit - state.frames]
                state.audio(chunk, source.rate)
                state.gaps = source.overflows + source.dropped
                session.push(chunk)
                if limit is not None and state.frames >= limit:
                    return
                if not source.realtime:  # a file: wait for the model rather than shed windows
                    while _backlog(scorers) and not stop.is_set():
                        await asyncio.sleep(0.01)
                await asyncio.sleep(0)  # let results call back and the view redraw

        async def redraw() -> None:
            while True:
                sink.refresh()
                await asyncio.sleep(1 / REFRESH_HZ)

        consumer = loop.create_task(consume())
        feeder = loop.create_task(feed())
        stopper = loop.create_task(stop.wait())
        sink.start(state)
        drawer = loop.create_task(redraw())
        try:
            await asyncio.wait({feeder, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if source.lost:
                state.status = "the input device stopped: finishing…"
            elif not stop.is_set():
                state.status = "input ended: finishing…"
            for task in (feeder, stopper):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeder  # re-raises what broke the input, if anything did
            await opened.aclose()  # release the device while the last windows are scored
            session.end()
            await consumer
        finally:
            for sig in handled:
                loop.remove_signal_handler(sig)
            drawer.cancel()
            if not consumer.done():
                session.cancel()
                consumer.cancel()
            state.status = "ended"
            sink.stop(session.summary)
    if alerts is not None:
        await alerts.wait()
    return Outcome(session.summary, spoofed, alerts.started if alerts else 0, source.lost)


def _backlog(scorers: Mapping[str, Scorer]) -> bool:
    """A worker has windows waiting for the model: a file is read no further ahead of the model
    than a device would be, so no window is shed and --exit-on-spoof stops near the spoof."""
    return any(getattr(s, "queued", 0) > 0 for s in scorers.values())
