"""What the monitor shows: the state drawn from audio chunks and events, the live terminal view of
it (rich), and a stream summary for people."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from voicescreen.stream import Event, SummaryEvent

REFRESH_HZ = 8  # terminal view redraws per second
SPARK_WINDOWS = 40  # recent window scores in a sparkline
SPARK_RANGE = 4.0  # calibrated score drawn as a full bar (clipped beyond)
SPARK_BARS = "▁▂▃▄▅▆▇█"
METER_WIDTH = 40  # characters of the level meter
METER_FLOOR_DB = -60.0  # dBFS at the meter's left end
CLIP_LEVEL = 0.999  # a peak at or above this is clipping
VERDICT_STYLE = {"bonafide": "bold green", "spoof": "bold white on red", "uncertain": "bold yellow"}


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
