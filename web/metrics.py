"""Server counters and their Prometheus text form (exposition format 0.0.4), without a client
library: the workers count windows and batches themselves (``WorkerMetrics``); the server counts
streams, errors and the window -> score latency of the events it relays."""

from __future__ import annotations

import bisect
import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from voicescreen.stream import Cascade, Event, InferenceWorker

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)  # seconds
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
OUTCOMES = ("scored", "no_speech", "shed", "failed", "cancelled")


@dataclass
class Histogram:
    """A cumulative Prometheus histogram."""

    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float, n: int = 1) -> None:
        i = bisect.bisect_left(self.buckets, value)
        if i < len(self.counts):
            self.counts[i] += n
        self.total += value * n
        self.count += n

    def cumulative(self) -> list[int]:
        out, running = [], 0
        for c in self.counts:
            running += c
            out.append(running)
        return out


@dataclass
class ServerMetrics:
    """What the transports count. Keys are label tuples."""

    active: Counter[str] = field(default_factory=Counter)  # transport
    streams: Counter[tuple[str, str]] = field(default_factory=Counter)  # transport, reason
    rejected: Counter[tuple[str, str]] = field(default_factory=Counter)  # transport, code
    errors: Counter[tuple[str, str]] = field(default_factory=Counter)  # transport, code
    windows: Counter[tuple[str, str]] = field(default_factory=Counter)  # model, outcome
    verdicts: Counter[tuple[str, str]] = field(default_factory=Counter)  # model, verdict
    latency: dict[str, Histogram] = field(default_factory=dict)  # model
    score_requests: Counter[str] = field(default_factory=Counter)  # HTTP status
    webhook: Counter[str] = field(default_factory=Counter)  # delivered | failed | dropped
    throttled: Counter[str] = field(default_factory=Counter)  # transport -> seconds held back

    def observe(self, event: Event, transport: str) -> None:
        """Count one event a transport relays."""
        if event.type == "score":
            h = self.latency.get(event.model)
            if h is None:
                h = self.latency[event.model] = Histogram(LATENCY_BUCKETS)
            h.observe(event.latency_ms / 1000)
        elif event.type == "error":
            self.errors[transport, event.code] += 1
        elif event.type == "summary":
            self.streams[transport, event.reason] += 1
            for model, s in event.models.items():
                for outcome in OUTCOMES:
                    self.windows[model, outcome] += getattr(s, outcome)
                self.verdicts[model, s.verdict] += 1


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Mapping[str, object]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"


def _number(value: float | int | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "NaN"
    if isinstance(value, float) and math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value) if isinstance(value, float) else str(value)


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(
        self, name: str, kind: str, doc: str, samples: Iterable[tuple[dict, float | int | None]]
    ) -> None:
        self.lines += [f"# HELP {name} {doc}", f"# TYPE {name} {kind}"]
        for labels, value in samples:
            self.lines.append(f"{name}{_labels(labels)} {_number(value)}")

    def histogram(self, name: str, doc: str, series: Iterable[tuple[dict, Histogram]]) -> None:
        self.lines += [f"# HELP {name} {doc}", f"# TYPE {name} histogram"]
        for labels, h in series:
            for le, c in zip(h.buckets, h.cumulative(), strict=True):
                self.lines.append(f"{name}_bucket{_labels({**labels, 'le': _number(le)})} {c}")
            self.lines.append(f"{name}_bucket{_labels({**labels, 'le': '+Inf'})} {h.count}")
            self.lines.append(f"{name}_sum{_labels(labels)} {_number(h.total)}")
            self.lines.append(f"{name}_count{_labels(labels)} {h.count}")


def resident_memory_bytes() -> int | None:
    """This process's resident set size (Linux /proc), None elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def render(
    metrics: ServerMetrics,
    workers: Mapping[str, InferenceWorker],
    transports: Iterable[str],
    clients: int,
    cascades: Mapping[str, Cascade] | None = None,
) -> str:
    """The Prometheus text for the server's counters, its workers' and its cascades'."""
    w = _Writer()
    p = "voicescreen"
    w.family(
        f"{p}_streams_active",
        "gauge",
        "Streams open now, by transport.",
        [({"transport": t}, metrics.active[t]) for t in transports],
    )
    w.family(
        f"{p}_clients_active", "gauge", "Client addresses with a stream open.", [({}, clients)]
    )
    w.family(
        f"{p}_streams_total",
        "counter",
        "Streams ended, by transport and reason (end, error, cancelled).",
        [({"transport": t, "reason": r}, n) for (t, r), n in sorted(metrics.streams.items())],
    )
    w.family(
        f"{p}_streams_rejected_total",
        "counter",
        "Connections refused before a stream began, by transport and error code.",
        [({"transport": t, "code": c}, n) for (t, c), n in sorted(metrics.rejected.items())],
    )
    w.family(
        f"{p}_stream_errors_total",
        "counter",
        "Error events sent, by transport and code.",
        [({"transport": t, "code": c}, n) for (t, c), n in sorted(metrics.errors.items())],
    )
    w.family(
        f"{p}_stream_throttled_seconds_total",
        "counter",
        "Seconds streams were held back for sending audio faster than the rate limit allows, "
        "by transport.",
        [({"transport": t}, n) for t, n in sorted(metrics.throttled.items())],
    )
    w.family(
        f"{p}_stream_windows_total",
        "counter",
        "Windows of ended streams, by model and outcome (scored, no_speech, shed, failed, "
        "cancelled).",
        [({"model": m, "outcome": o}, n) for (m, o), n in sorted(metrics.windows.items())],
    )
    w.family(
        f"{p}_stream_verdicts_total",
        "counter",
        "Final verdicts of ended streams, by model.",
        [({"model": m, "verdict": v}, n) for (m, v), n in sorted(metrics.verdicts.items())],
    )
    w.histogram(
        f"{p}_window_latency_seconds",
        "Window complete -> score ready, per scored window relayed, by model.",
        [({"model": m}, h) for m, h in sorted(metrics.latency.items())],
    )
    snaps = {name: worker.metrics.snapshot() for name, worker in workers.items()}
    for key, doc in (
        ("submitted", "Windows submitted to the model's worker."),
        ("scored", "Windows the worker scored."),
        (
            "shed",
            "Windows shed: the worker's queue was full, or a remote backend refused them.",
        ),
        ("failed", "Windows whose model call failed."),
        ("cancelled", "Windows withdrawn before they were scored."),
        ("batches", "Model calls."),
    ):
        w.family(
            f"{p}_worker_{key}_total",
            "counter",
            doc,
            [({"model": m}, s[key]) for m, s in snaps.items()],
        )
    w.family(
        f"{p}_worker_busy_seconds_total",
        "counter",
        "Seconds spent in model calls.",
        [({"model": m}, s["busy_s"]) for m, s in snaps.items()],
    )
    w.family(
        f"{p}_worker_queue_windows",
        "gauge",
        "Windows waiting for a batch.",
        [({"model": m}, worker.queued) for m, worker in workers.items()],
    )
    series = []
    for m, s in snaps.items():
        h = Histogram(BATCH_BUCKETS)
        for size, n in s["batch_sizes"].items():
            h.observe(size, n)
        series.append(({"model": m}, h))
    w.histogram(f"{p}_worker_batch_size", "Windows per model call.", series)
    w.family(
        f"{p}_worker_queue_latency_seconds",
        "gauge",
        "Window submitted -> scored, over the worker's recent windows.",
        [
            ({"model": m, "quantile": q}, None if v is None else v / 1000)
            for m, s in snaps.items()
            for q, v in (
                ("0.5", s["latency_ms"]["p50"]),
                ("0.95", s["latency_ms"]["p95"]),
                ("0.99", s["latency_ms"]["p99"]),
            )
        ],
    )
    cascades = cascades or {}
    w.family(
        f"{p}_cascade_screened_total",
        "counter",
        "Windows the cascade's screen scored, by model asked for.",
        [({"model": m}, c.metrics.submitted) for m, c in cascades.items()],
    )
    w.family(
        f"{p}_cascade_escalated_total",
        "counter",
        "Windows the screen found close and sent on to the model asked for, by model.",
        [({"model": m}, c.metrics.escalated) for m, c in cascades.items()],
    )
    w.family(
        f"{p}_cascade_escalations_shed_total",
        "counter",
        "Escalations the model's queue refused (overloaded): those windows kept the screen's "
        "score, by model.",
        [({"model": m}, c.metrics.escalations_shed) for m, c in cascades.items()],
    )
    w.family(
        f"{p}_score_requests_total",
        "counter",
        "POST /v1/score requests, by HTTP status.",
        [({"status": s}, n) for s, n in sorted(metrics.score_requests.items())],
    )
    w.family(
        f"{p}_webhook_posts_total",
        "counter",
        "Events posted to the webhook, by outcome (delivered, failed, dropped).",
        [({"outcome": o}, n) for o, n in sorted(metrics.webhook.items())],
    )
    w.family(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        [({}, resident_memory_bytes())],
    )
    return "\n".join(w.lines) + "\n"
