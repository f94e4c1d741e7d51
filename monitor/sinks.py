"""Where the monitor's events go: the live terminal view, plain lines when stdout is not a
terminal, or ``--jsonl`` (one event per line, as in docs/events.md)."""

from __future__ import annotations

import sys
from typing import Any, Protocol, TextIO

from voicescreen.monitor.view import MonitorState, render, summary_lines
from voicescreen.stream import Event, SummaryEvent


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
