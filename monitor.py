"""``voicescreen monitor``: screen a local input device live, from the terminal.

    source ──▶ Session (resample, VAD gate, windows, shared worker, smoothing) ──▶ events ──▶ sink
    (sound card via stream.mic, or --input FILE)                         spoof turns ──▶ --alert-cmd

The monitor only chooses where audio comes from and where events go; everything between is the
same ``voicescreen.stream.Session`` and ``InferenceWorker`` the server uses. Sinks: a live
terminal view (rich: input level, voiced/silent, per-model verdict, score sparkline, latency), plain
text lines when stdout is not a terminal, or ``--jsonl`` (one event per line, as in
docs/events.md). Ctrl-C ends the stream cleanly: its last windows are scored and the summary shown;
a second Ctrl-C stops at once.

Exit status: 0 the stream ended (``--duration``, end of ``--input``, Ctrl-C); 1 the audio was
malformed; 2 a usage, device, file or bundle error, or the device stopped mid-stream (after its
summary); 3 ``--exit-on-spoof`` saw a spoof verdict; 130 Ctrl-C before the monitor was listening.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import sys
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

import numpy as np

from voicescreen.audio import (
    CHANNELS,
    HOP_SECONDS,
    MEASURE_SECONDS,
    AudioError,
    measure_channel,
    resample,
    to_mono,
)
from voicescreen.stream import (
    AudioFormat,
    BatchOptions,
    Event,
    Session,
    SmoothingOptions,
    SummaryEvent,
    VadOptions,
    VerdictEvent,
    WindowOptions,
)
from voicescreen.stream.mic import BLOCK_SECONDS, DeviceError
from voicescreen.stream.worker import Scorer

log = logging.getLogger(__name__)

EXIT_OK, EXIT_BAD_AUDIO, EXIT_ERROR, EXIT_SPOOF, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
REFRESH_HZ = 8  # terminal view redraws per second
SPARK_WINDOWS = 40  # recent window scores in a sparkline
SPARK_RANGE = 4.0  # calibrated score drawn as a full bar (clipped beyond)
SPARK_BARS = "▁▂▃▄▅▆▇█"
METER_WIDTH = 40  # characters of the level meter
METER_FLOOR_DB = -60.0  # dBFS at the meter's left end
CLIP_LEVEL = 0.999  # a peak at or above this is clipping
ALERT_WAIT = 10.0  # seconds alert commands may still run when the monitor ends
VERDICT_STYLE = {"bonafide": "bold green", "spoof": "bold white on red", "uncertain": "bold yellow"}


# --- sources -----------------------------------------------------------------------------------


class Source(Protocol):
    """What the monitor reads: float32 chunks (frames, channels) at ``rate``, via ``async with``
    and ``async for``. ``realtime`` sources pace themselves; others are read as fast as the model
    keeps up."""

    rate: int
    channels: int | None
    realtime: bool
    label: str
    lost: bool  # the input stopped by itself before its end (a device that went away)
    overflows: int  # gaps: audio the device dropped
    dropped: int  # gaps: audio dropped because the monitor fell behind

    async def __aenter__(self) -> Source: ...
    async def __aexit__(self, *exc: object) -> None: ...
    def __aiter__(self) -> AsyncIterator[np.ndarray]: ...


class FileSource:
    """An audio file standing in for a device: chunks of ``BLOCK_SECONDS`` at the file's own rate
    and channels, at real-time pace unless ``realtime`` is False."""

    def __init__(self, path: str | Path, realtime: bool = True) -> None:
        import soundfile as sf

        self.path = Path(path)
        try:
            info = sf.info(str(self.path))
        except (sf.LibsndfileError, RuntimeError, OSError) as e:
            raise AudioError(f"{self.path}: cannot read audio ({e})") from e
        if info.frames == 0:
            raise AudioError(f"{self.path}: no audio samples")
        self.rate = int(info.samplerate)
        self.channels: int | None = int(info.channels)
        self.realtime = realtime
        self.label = f"file {self.path.name}, {self.rate} Hz, {self.channels} ch"
        self.channel = self._measure_channel(sf)
        self.overflows = self.dropped = 0
        self.lost = False
        self._file: Any = None

    def _measure_channel(self, sf: Any) -> str:
        """The file's kind of audio, measured as ``voicescreen score`` measures a file (its
        rate, and its bandwidth over the first ``MEASURE_SECONDS``), so that both calibrate it
        alike."""
        frames = int(MEASURE_SECONDS * self.rate)
        x = sf.read(str(self.path), frames=frames, dtype="float32", always_2d=True)[0]
        return measure_channel(resample(to_mono(x), self.rate), self.rate)

    async def __aenter__(self) -> FileSource:
        import soundfile as sf

        self._file = sf.SoundFile(str(self.path))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()

    async def __aiter__(self) -> AsyncIterator[np.ndarray]:
        loop = asyncio.get_running_loop()
        block = max(1, int(round(BLOCK_SECONDS * self.rate)))
        start, sent = loop.time(), 0
        while True:
            chunk = self._file.read(block, dtype="float32", always_2d=True)
            if not len(chunk):
                return
            if self.realtime:  # hand each chunk over when a device would have
                await asyncio.sleep(max(0.0, start + (sent + len(chunk)) / self.rate - loop.time()))
            sent += len(chunk)
            yield chunk


# --- what the view shows -----------------------------------------------------------------------


def level_dbfs(x: np.ndarray) -> tuple[float, float]:
    """RMS and peak of a chunk in dBFS (-inf for digital silence)."""
    if not x.size:
        return -math.inf, -math.inf
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    peak = float(np.max(np.abs(x)))

    def db(v: float) -> float:
        return 20 * math.log10(v) if v > 0 else -math.inf

    return db(rms), db(peak)


def sparkline(scores: list[float] | deque[float], limit: float = SPARK_RANGE) -> str:
    """One bar per calibrated score: empty at ``-limit``, full at ``+limit``."""
    top = len(SPARK_BARS) - 1
    out = []
    for s in scores:
        v = min(max((s + limit) / (2 * limit), 0.0), 1.0)
        out.append(SPARK_BARS[round(v * top)])
    return "".join(out)


def meter(db: float, width: int = METER_WIDTH, floor: float = METER_FLOOR_DB) -> tuple[int, int]:
    """(filled, empty) characters of a level meter from ``floor`` dBFS to 0 dBFS."""
    filled = 0 if not math.isfinite(db) else round(width * min(max(1 - db / floor, 0.0), 1.0))
    return filled, width - filled


@dataclass
class ModelView:
    """What the view shows about one model."""

    verdict: str = "uncertain"
    calibrated: float | None = None
    smoothed: float | None = None
    latency_ms: float | None = None
    scores: deque[float] = field(default_factory=lambda: deque(maxlen=SPARK_WINDOWS))
    scored: int = 0
    no_speech: int = 0
    shed: int = 0
    failed: int = 0


@dataclass
class MonitorState:
    """Everything the terminal view draws, updated from audio chunks and events."""

    source: str
    models: dict[str, ModelView]
    min_voiced: float
    rate: int = 0
    frames: int = 0  # at the source rate
    rms_db: float = -math.inf
    peak_db: float = -math.inf
    clipped: int = 0  # chunks that clipped
    voiced: float | None = None  # voiced fraction of the latest window
    voiced_at: float | None = None  # stream seconds: end of that window
    gaps: int = 0  # input overflows and dropped chunks
    status: str = "Ctrl-C to stop"

    @property
    def seconds(self) -> float:
        return self.frames / self.rate if self.rate else 0.0

    def audio(self, chunk: np.ndarray, rate: int) -> None:
        self.rate = rate
        self.frames += len(chunk)
        self.rms_db, self.peak_db = level_dbfs(chunk)
        if chunk.size and float(np.max(np.abs(chunk))) >= CLIP_LEVEL:
            self.clipped += 1

    def event(self, e: Event) -> None:
        m = self.models.get(getattr(e, "model", None) or "")
        newer = self.voiced_at is None or getattr(e, "end", -1.0) >= self.voiced_at
        if e.type in ("score", "no_speech") and e.voiced is not None and newer:
            self.voiced, self.voiced_at = e.voiced, e.end
        if m is None:
            return
        if e.type == "score":
            m.verdict, m.calibrated, m.smoothed = e.verdict, e.calibrated, e.smoothed
            m.latency_ms = e.latency_ms
            m.scores.append(e.calibrated)
            m.scored += 1
        elif e.type == "no_speech":
            m.no_speech += 1
        elif e.type == "overloaded":
            m.shed += len(e.windows)
        elif e.type == "error" and not e.fatal:
            m.failed += 1


def clock(seconds: float) -> str:
    m, s = divmod(max(seconds, 0.0), 60)
    return f"{int(m):02d}:{s:04.1f}"


def _signed(v: float | None, digits: int = 2) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{v:+.{digits}f}"


def render(state: MonitorState) -> Any:
    """The live view of ``state`` as a rich renderable."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    top = Table.grid(padding=(0, 2))
    top.add_column(style="bold", width=7)
    top.add_column()

    filled, empty = meter(state.rms_db)
    level = Text()
    colour = "red" if state.rms_db > -6 else "yellow" if state.rms_db > -18 else "green"
    level.append("█" * filled, style=colour)
    level.append("░" * empty, style="grey37")
    rms = f"{state.rms_db:6.1f}" if math.isfinite(state.rms_db) else "  -inf"
    peak = f"{state.peak_db:.1f}" if math.isfinite(state.peak_db) else "-inf"
    level.append(f" {rms} dBFS  peak {peak}")
    if state.clipped:
        level.append(f"  CLIPPED ×{state.clipped}", style="bold red")
    top.add_row("level", level)

    speech = Text()
    if state.voiced is None:
        speech.append("waiting for the first window…", style="dim")
    elif state.voiced >= state.min_voiced:
        speech.append("● voiced", style="bold green")
        speech.append(f"  {state.voiced:.0%} of the window ending at {clock(state.voiced_at)}")
    else:
        speech.append("○ silent", style="bold")
        speech.append(f"  {state.voiced:.0%} voiced in the window ending at ")
        speech.append(f"{clock(state.voiced_at)} (not scored)")
    top.add_row("speech", speech)

    models = Table(box=None, padding=(0, 2), show_edge=False, expand=False)
    models.add_column("model", style="bold")
    models.add_column("verdict")
    models.add_column("score", justify="right")
    models.add_column("smoothed", justify="right")
    models.add_column(f"last {SPARK_WINDOWS} windows", min_width=SPARK_WINDOWS)
    models.add_column("latency", justify="right")
    for name, m in state.models.items():
        spark = Text()
        for s, bar in zip(m.scores, sparkline(m.scores), strict=True):
            spark.append(bar, style="green" if s > 0 else "red")
        models.add_row(
            name,
            Text(f" {m.verdict.upper()} ", style=VERDICT_STYLE.get(m.verdict, "bold")),
            _signed(m.calibrated),
            _signed(m.smoothed),
            spark,
            "—" if m.latency_ms is None else f"{m.latency_ms:.0f} ms",
        )

    counts = Text(style="dim")
    totals = [sum(getattr(m, k) for m in state.models.values()) for k in ("scored", "no_speech")]
    shed = sum(m.shed for m in state.models.values())
    counts.append(f"{totals[0]} scored · {totals[1]} no speech · {shed} shed")
    if state.gaps:
        counts.append(f" · {state.gaps} input gaps", style="bold red")
    counts.append(f"    {state.status}")

    title = f"voicescreen monitor · {clock(state.seconds)}"
    return Panel(
        Group(top, Text(""), models, Text(""), counts),
        title=title,
        title_align="left",
        subtitle=state.source,
        subtitle_align="right",
        expand=False,
    )


def summary_lines(summary: SummaryEvent) -> list[str]:
    """A stream summary for people: a header, then two lines per model."""
    lines = [
        f"summary: {clock(summary.duration)} of audio ({summary.reason}), stream {summary.stream}"
    ]
    width = max(len(name) for name in summary.models) if summary.models else 0
    for name, m in summary.models.items():
        lat = m.latency_ms or {}
        p50 = "—" if lat.get("p50") is None else f"{lat['p50']:.0f} ms"
        worst = "—" if lat.get("max") is None else f"{lat['max']:.0f} ms"
        lines.append(
            f"  {name:<{width}}  {m.verdict.upper()}  mean score {_signed(m.mean)} "
            f"(min {_signed(m.min)}, max {_signed(m.max)})" + (f"; {m.reason}" if m.reason else "")
        )
        lines.append(
            f"  {'':<{width}}  {m.windows} windows: {m.scored} scored, {m.no_speech} no speech, "
            f"{m.shed} shed, {m.failed} failed; latency p50 {p50}, max {worst}"
        )
    return lines


# --- sinks -------------------------------------------------------------------------------------


class JsonLines:
    """``--jsonl``: every event as one JSON line on stdout."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout

    def start(self, state: MonitorState) -> None:
        print(f"voicescreen monitor: listening to {state.source}", file=sys.stderr, flush=True)

    def event(self, e: Event) -> None:
        self.out.write(e.to_json() + "\n")
        self.out.flush()

    def refresh(self) -> None:
        pass

    def stop(self, summary: SummaryEvent | None) -> None:
        pass


class PlainLines:
    """Not a terminal: one line per scored window and verdict change, then the summary."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout

    def _line(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def start(self, state: MonitorState) -> None:
        print(f"voicescreen monitor: listening to {state.source}", file=sys.stderr, flush=True)

    def event(self, e: Event) -> None:
        if e.type == "score":
            voiced = "" if e.voiced is None else f"  voiced {e.voiced:4.0%}"
            self._line(
                f"{e.end:8.2f} s  {e.model}  window {e.window:<4d} score {e.calibrated:+.3f}  "
                f"smoothed {e.smoothed:+.3f}  {e.verdict:<9} {e.latency_ms:5.0f} ms{voiced}"
            )
        elif e.type == "no_speech":
            self._line(
                f"{e.end:8.2f} s  {e.model}  window {e.window:<4d} no speech "
                f"(voiced {e.voiced:.0%})"
            )
        elif e.type == "verdict":
            self._line(f"{e.time:8.2f} s  {e.model}  verdict {e.previous} -> {e.verdict}")
        elif e.type == "overloaded":
            self._line(f"{e.end:8.2f} s  {e.model}  windows {e.windows} shed ({e.reason})")
        elif e.type == "error":
            self._line(f"error ({e.code}): {e.message}")

    def refresh(self) -> None:
        pass

    def stop(self, summary: SummaryEvent | None) -> None:
        if summary is not None:
            for line in summary_lines(summary):
                self._line(line)


class LiveView:
    """The live terminal view (rich), redrawn ``REFRESH_HZ`` times a second from the event loop;
    the summary is printed below its last frame."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console()
        self.live: Any = None

    def start(self, state: MonitorState) -> None:
        from rich.live import Live

        self.live = Live(
            get_renderable=lambda: render(state),
            console=self.console,
            auto_refresh=False,
            transient=False,
        )
        self.live.start(refresh=True)

    def event(self, e: Event) -> None:
        if e.type == "error":
            self.console.print(f"[bold red]error ({e.code}):[/] {e.message}", markup=True)

    def refresh(self) -> None:
        if self.live is not None:
            self.live.refresh()

    def stop(self, summary: SummaryEvent | None) -> None:
        if self.live is not None:
            self.live.refresh()
            self.live.stop()
        if summary is not None:
            for line in summary_lines(summary):
                self.console.print(line, markup=False, highlight=False)


class Sink(Protocol):
    def start(self, state: MonitorState) -> None: ...
    def event(self, e: Event) -> None: ...
    def refresh(self) -> None: ...
    def stop(self, summary: SummaryEvent | None) -> None: ...


# --- alerts ------------------------------------------------------------------------------------


class Alerts:
    """``--alert-cmd``: run a shell command each time a model's verdict turns ``spoof``, with the
    verdict event as one JSON line on its stdin and ``VOICESCREEN_*`` variables in its environment.
    Commands run alongside the monitor; their output is kept out of the view and logged when they
    fail."""

    def __init__(self, command: str) -> None:
        self.command = command
        self.started = 0
        self.failed = 0
        self._tasks: set[asyncio.Task] = set()

    def fire(self, event: VerdictEvent) -> None:
        self.started += 1
        task = asyncio.get_running_loop().create_task(self._run(event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, event: VerdictEvent) -> None:
        env = {
            **os.environ,
            "VOICESCREEN_EVENT": event.type,
            "VOICESCREEN_STREAM": event.stream,
            "VOICESCREEN_MODEL": event.model,
            "VOICESCREEN_VERDICT": event.verdict,
            "VOICESCREEN_TIME": f"{event.time:.3f}",
        }
        try:
            proc = await asyncio.create_subprocess_shell(
                self.command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                start_new_session=True,  # its own process group, so a stuck one can be ended
            )
        except OSError as e:
            self.failed += 1
            log.warning("--alert-cmd could not start: %s", e)
            return
        try:
            _, err = await proc.communicate((event.to_json() + "\n").encode())
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            await proc.wait()
            raise
        if proc.returncode != 0:
            self.failed += 1
            tail = err.decode(errors="replace").strip()[-500:]
            log.warning("--alert-cmd exited with status %s: %s", proc.returncode, tail)

    async def wait(self, timeout: float = ALERT_WAIT) -> None:
        """Let running commands finish; end those still running after ``timeout`` seconds."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in pending:
            log.warning("--alert-cmd still running after %.0f s; stopping it", timeout)
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task


# --- the monitor -------------------------------------------------------------------------------


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


# --- the command -------------------------------------------------------------------------------


def _fail(message: str) -> int:
    print(f"voicescreen monitor: {message}", file=sys.stderr)
    return EXIT_ERROR


def list_devices(jsonl: bool) -> int:
    from voicescreen.stream import mic

    devices = mic.all_inputs()
    if jsonl:
        for d in devices:
            print(json.dumps(asdict(d)), flush=True)
        return EXIT_OK
    if not devices:
        print("no audio input devices: PortAudio lists none", file=sys.stderr)
        return EXIT_OK
    print("Input devices (--device INDEX or NAME; * the default):")
    for d in devices:
        if d.pulse_source is None:
            mark = "*" if d.default else " "
            print(
                f" {mark}{d.index:3d}  {d.name:<32} {d.hostapi:<8} {d.channels:3d} ch  "
                f"{d.default_rate} Hz"
            )
    pulse = [d for d in devices if d.pulse_source is not None]
    if pulse:
        print(f"PulseAudio sources (--device NAME; recorded through {mic.PULSE_DEVICE!r}):")
        for d in pulse:
            print(f"       {d.name}")
    return EXIT_OK


def cmd_monitor(args: argparse.Namespace) -> int:
    from voicescreen.stream import mic

    if args.hop <= 0:
        return _fail("--hop must be positive")
    if args.duration is not None and args.duration <= 0:
        return _fail("--duration must be positive")
    if not 0 <= args.min_voiced <= 1:
        return _fail("--min-voiced must be between 0 and 1")
    if not args.min_speech >= 0:
        return _fail("--min-speech must be >= 0 seconds")
    try:
        if args.list_devices:
            return list_devices(args.jsonl)
        if args.input is not None:
            if args.device is not None or args.rate is not None:
                return _fail("--input replaces the device: leave out --device and --rate")
            source: Source = FileSource(args.input, realtime=not args.fast)
        else:
            if args.fast:
                return _fail("--fast applies to --input only")
            source = mic.MicSource(mic.find_device(args.device), rate=args.rate)
            source.check()  # a busy device or an unsupported rate fails before the model loads
    except (DeviceError, AudioError) as e:
        return _fail(str(e))
    try:
        workers = _load_workers(args)
        if isinstance(workers, str):
            return _fail(workers)
        return asyncio.run(_run(args, source, workers))
    except KeyboardInterrupt:  # before the monitor listens (loading the model): nothing to sum up
        return EXIT_INTERRUPTED


def _load_workers(args: argparse.Namespace) -> dict[str, Scorer] | str:
    """A worker per ``--bundle``, or what is wrong with them."""
    from voicescreen.cli import plan_bundles, runtime_options
    from voicescreen.models.bundle import BundleError, load_bundle
    from voicescreen.models.runtime import describe_text
    from voicescreen.models.store import resolve_bundle
    from voicescreen.stream import load_workers

    try:
        bundles = [load_bundle(resolve_bundle(b)) for b in args.bundle or [None]]
        bundles = plan_bundles(bundles, args, streams=True, command="monitor")
        workers = load_workers(bundles, "onnx", BatchOptions(), **runtime_options(args))
    except (BundleError, FileNotFoundError, ValueError) as e:  # FastPathError is a ValueError
        return str(e)
    for name, worker in workers.items():  # what it runs on and why (the view does not say)
        print(
            f"voicescreen monitor: {name} on {describe_text(worker.runtime)}",
            file=sys.stderr,
            flush=True,
        )
    return workers


async def _run(args: argparse.Namespace, source: Source, workers: dict[str, Scorer]) -> int:
    from voicescreen.cli import verdict_options

    if args.jsonl:
        sink: Sink = JsonLines()
    elif sys.stdout.isatty():
        sink = LiveView()
    else:
        sink = PlainLines()
    try:
        outcome = await monitor(
            source,
            workers,
            sink,
            window=WindowOptions(hop_seconds=args.hop),
            vad=VadOptions(min_voiced=args.min_voiced),
            smoothing=verdict_options(args),
            duration=args.duration,
            alerts=Alerts(args.alert_cmd) if args.alert_cmd else None,
            exit_on_spoof=args.exit_on_spoof,
            channel=args.channel,
        )
    except DeviceError as e:
        return _fail(str(e))
    finally:
        for w in workers.values():
            await w.close()
    if outcome.spoofed:
        print("voicescreen monitor: spoof verdict; stopped (--exit-on-spoof)", file=sys.stderr)
    if outcome.lost:
        _fail(f"{source.label} stopped delivering audio (unplugged, or its sound server is gone)")
    return outcome.exit_code


def add_parsers(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``monitor`` on the ``voicescreen`` command's subparsers."""
    from voicescreen.cli import add_runtime_arguments, add_verdict_arguments

    s = subparsers.add_parser(
        "monitor",
        help="screen a local input device live (terminal view, or --jsonl)",
        description="Screen a microphone, line-in or a sink's monitor live for audio deepfakes.",
    )
    src = s.add_argument_group("input")
    src.add_argument(
        "--device",
        metavar="NAME|INDEX",
        help="input device: PortAudio index or name, a PulseAudio source name "
        "(e.g. a sink's .monitor), or a unique part of one "
        "(default: the system's default input)",
    )
    src.add_argument("--list-devices", action="store_true", help="list input devices and exit")
    src.add_argument(
        "--rate",
        type=int,
        metavar="HZ",
        help="record at this rate (default: the device's native rate)",
    )
    src.add_argument(
        "--input",
        metavar="FILE",
        help="screen an audio file as if it were a device, at real-time pace",
    )
    src.add_argument(
        "--fast",
        action="store_true",
        help="with --input: read the file as fast as the model scores it",
    )
    src.add_argument(
        "--duration",
        type=float,
        metavar="S",
        help="stop after S seconds of audio (default: until Ctrl-C)",
    )
    m = s.add_argument_group("screening")
    m.add_argument(
        "--bundle",
        action="append",
        metavar="PATH|NAME",
        help="bundle to screen with; repeat for several models side by side "
        "(default: the shipped one)",
    )
    m.add_argument(
        "--hop",
        type=float,
        default=HOP_SECONDS,
        help="window hop, seconds (default: %(default)g)",
    )
    m.add_argument(
        "--channel",
        choices=CHANNELS,
        help="the input's kind of audio, whose calibration of each bundle the scores get "
        "(default: from the device's rate; say narrowband for a phone line on a sound card)",
    )
    m.add_argument(
        "--min-voiced",
        type=float,
        default=0.3,
        metavar="F",
        help="voiced fraction a window needs to be scored (default 0.3)",
    )
    add_verdict_arguments(m)
    add_runtime_arguments(m, streams=True)
    o = s.add_argument_group("output")
    o.add_argument(
        "--jsonl",
        action="store_true",
        help="print every event as one JSON line (docs/events.md) instead of the view",
    )
    o.add_argument(
        "--alert-cmd",
        metavar="CMD",
        help="shell command run when a verdict turns spoof; the verdict event is "
        "on its stdin as JSON",
    )
    o.add_argument(
        "--exit-on-spoof",
        action="store_true",
        help="stop at the first spoof verdict, exit status 3",
    )
    s.set_defaults(func=cmd_monitor)
    return s


def main(argv: list[str] | None = None) -> int:
    """``python -m voicescreen.monitor ARGS``: the ``monitor`` subcommand on its own."""
    parser = argparse.ArgumentParser(prog="voicescreen")
    s = add_parsers(parser.add_subparsers(dest="command", required=True))
    s.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    args = parser.parse_args(["monitor", *(sys.argv[1:] if argv is None else argv)])
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
