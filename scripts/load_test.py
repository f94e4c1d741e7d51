#!/usr/bin/env python
"""Load test a running voicescreen server: N concurrent call-taps for M minutes at real-time pace.

Each call-tap streams a conversation (dev-split clips of ../shared/data separated by silences,
about half speech; ``--noise-dbfs`` puts low-level noise in the gaps) over ``/v1/stream`` (PCM16,
16 kHz, 20 ms frames) or ``/v1/twilio`` (8 kHz mu-law, Twilio's messages), each from a different
point of the conversation, started over a ramp.
Reported per N:

- windows cut, scored, without speech, **shed** (the server said it was overloaded) and **lost**
  (windows never accounted for: a stream's summary counts more windows than its score,
  no_speech and overloaded events name, or, for a stream that never got its summary, the windows
  its audio should have made); below capacity shed and lost must be 0;
- the server's window latency (window complete -> score, from the events) and the end-to-end
  latency (the client sent the window's last frame -> the client got its score), percentiles;
- the server's memory (``process_resident_memory_bytes`` from ``/metrics``) and open streams
  over time.

    python scripts/load_test.py --url ws://127.0.0.1:8000 --streams 4 8 16 --minutes 2
        [--twilio] [--token TOKEN] [--ramp 5] [--noise-dbfs -60] [--write]

Loopback only, and bounded: at most 512 streams and 30 minutes per N. ``--write`` puts the table
into docs/benchmarks.md (section "load").
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import ipaddress
import json
import logging
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from voicescreen.audio import SAMPLE_RATE, TELEPHONE_RATE, WINDOW_SAMPLES, resample
from voicescreen.stream.codecs import encode_mulaw
from voicescreen.stream.worker import percentile
from voicescreen.train.conversations import conversation
from voicescreen.web.client import TapError, converse
from voicescreen.web.twilio import (
    connected_message,
    media_message,
    new_sid,
    start_message,
    stop_message,
)

log = logging.getLogger("load_test")
MAX_STREAMS = 512
MAX_MINUTES = 30.0
FRAME_MS = 20
METRICS_EVERY = 5.0  # seconds between /metrics samples
WINDOW_SECONDS = WINDOW_SAMPLES / SAMPLE_RATE


def int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype("<i2")


def pcm_outgoing(x: np.ndarray, stream_id: str) -> list[tuple[bytes | dict, float]]:
    data = int16(x).tobytes()
    step = SAMPLE_RATE * FRAME_MS // 1000 * 2
    out: list[tuple[bytes | dict, float]] = [({"type": "start", "stream_id": stream_id}, 0.0)]
    out += [(data[i : i + step], FRAME_MS / 1000) for i in range(0, len(data), step)]
    return [*out, ({"type": "stop"}, 0.0)]


def twilio_outgoing(x: np.ndarray) -> list[tuple[bytes | dict, float]]:
    codes = encode_mulaw(int16(resample(x, SAMPLE_RATE, TELEPHONE_RATE)))
    sid, call, account = new_sid("MZ"), new_sid("CA"), new_sid("AC")
    out: list[tuple[bytes | dict, float]] = [
        (connected_message(), 0.0),
        (start_message(1, sid, call, account, ["inbound"]), 0.0),
    ]
    for k, i in enumerate(range(0, len(codes), 160)):
        out.append((media_message(k + 2, sid, "inbound", k + 1, 20 * k, codes[i : i + 160]), 0.02))
    out.append((stop_message(len(out), sid, call, account), 0.0))
    return out


def expected_windows(seconds: float, hop: float = 1.0, min_audio: float = 1.5) -> int:
    """Windows a stream of ``seconds`` makes with the default window options (an estimate
    for streams that never reported their own count)."""
    if seconds <= 0:
        return 0
    early = 0 if seconds < min_audio else int((min(seconds, WINDOW_SECONDS) - min_audio) // hop) + 1
    if seconds <= WINDOW_SECONDS:
        return early + 1
    regular = int((seconds - WINDOW_SECONDS) // hop) + 1
    tail = (seconds - WINDOW_SECONDS) % hop > 1e-9
    return early + regular + int(tail)


@dataclass
class StreamStats:
    seconds: float = 0.0
    windows: int = 0
    scored: int = 0
    no_speech: int = 0
    shed: int = 0
    failed: int = 0
    lost: int = 0
    summary: bool = False
    error: str = ""
    latency_ms: list[float] = field(default_factory=list)
    e2e_ms: list[float] = field(default_factory=list)


async def one_stream(url: str, outgoing, token: str | None, delay: float) -> StreamStats:
    """A call-tap: send at real-time pace, and time each score from the moment its window's last
    frame was sent."""
    await asyncio.sleep(delay)
    stats = StreamStats()
    sent: list[tuple[float, float]] = []  # (stream seconds sent so far, wall time)
    accounted = 0

    def timed():
        seconds = 0.0
        for item, dur in outgoing:
            seconds += dur
            sent.append((seconds, time.perf_counter()))  # sent right after this
            yield item, dur

    def on_message(m: dict) -> None:
        nonlocal accounted
        kind = m.get("type")
        if kind == "score":
            accounted += 1
            stats.latency_ms.append(m["latency_ms"])
            i = bisect.bisect_left(sent, (m["end"] - 1e-6, 0.0))
            if i < len(sent):
                stats.e2e_ms.append(1000 * (time.perf_counter() - sent[i][1]))
        elif kind == "no_speech":
            accounted += 1
        elif kind == "overloaded":
            accounted += len(m["windows"])
        elif kind == "error":
            stats.error = f"{m['code']}: {m['message']}"
            accounted += m.get("window") is not None
        elif kind == "summary":
            stats.summary = True
            s = next(iter(m["models"].values()))
            stats.windows, stats.scored, stats.no_speech = s["windows"], s["scored"], s["no_speech"]
            stats.shed, stats.failed = s["shed"], s["failed"]
            stats.seconds = m["duration"]

    try:
        result = await converse(url, timed(), realtime=True, token=token, on_message=on_message)
        if not stats.summary:
            stats.error = stats.error or f"closed without summary ({result.close_code})"
    except TapError as e:
        stats.error = str(e)
    if stats.summary:
        stats.lost = max(0, stats.windows - accounted)
    else:
        stats.seconds = sent[-1][0] if sent else 0.0
        stats.lost = expected_windows(stats.seconds)
    return stats


async def sample_metrics(url: str, token: str | None, stop: asyncio.Event, out: list) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    t0 = time.perf_counter()

    def fetch() -> dict[str, float]:
        request = urllib.request.Request(url, headers=headers)
        text = urllib.request.urlopen(request, timeout=10).read().decode()
        values: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, value = line.rsplit(" ", 1)
                values[key] = float(value) if value not in ("NaN",) else float("nan")
        return values

    while not stop.is_set():
        try:
            m = await asyncio.to_thread(fetch)
            out.append(
                {
                    "t": time.perf_counter() - t0,
                    "rss_mib": m.get("process_resident_memory_bytes", float("nan")) / 2**20,
                    "streams": sum(
                        v for k, v in m.items() if k.startswith("voicescreen_streams_active")
                    ),
                    "queued": sum(
                        v for k, v in m.items() if k.startswith("voicescreen_worker_queue_windows")
                    ),
                }
            )
        except OSError as e:
            log.warning("metrics: %s", e)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), METRICS_EVERY)


async def run_level(n: int, args: argparse.Namespace, audio: np.ndarray) -> dict:
    base = args.url.rstrip("/")
    url = f"{base}/v1/twilio" if args.twilio else f"{base}/v1/stream"
    metrics_url = base.replace("ws://", "http://", 1).replace("wss://", "https://", 1) + "/metrics"
    length = int(args.minutes * 60 * SAMPLE_RATE)
    stride = max(1, (audio.size - length) // max(n, 1))
    plans = []
    for k in range(n):
        x = np.roll(audio, -k * stride)[:length]
        plans.append(twilio_outgoing(x) if args.twilio else pcm_outgoing(x, f"load-{k}"))
    samples: list[dict] = []
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_metrics(metrics_url, args.token, stop, samples))
    t0 = time.perf_counter()
    stats = await asyncio.gather(
        *(one_stream(url, p, args.token, args.ramp * k / max(n, 1)) for k, p in enumerate(plans))
    )
    wall = time.perf_counter() - t0
    stop.set()
    await sampler
    lat = [v for s in stats for v in s.latency_ms]
    e2e = [v for s in stats for v in s.e2e_ms]

    def pct(xs: list[float]) -> list[float | None]:
        return [percentile(xs, p) for p in (0.5, 0.95, 0.99)] + [max(xs, default=None)]

    return {
        "streams": n,
        "minutes": args.minutes,
        "transport": "twilio" if args.twilio else "stream",
        "wall_s": wall,
        "windows": sum(s.windows for s in stats),
        "scored": sum(s.scored for s in stats),
        "no_speech": sum(s.no_speech for s in stats),
        "shed": sum(s.shed for s in stats),
        "failed": sum(s.failed for s in stats),
        "lost": sum(s.lost for s in stats),
        "without_summary": sum(not s.summary for s in stats),
        "errors": sorted({s.error for s in stats if s.error})[:5],
        "latency_ms": pct(lat),
        "e2e_ms": pct(e2e),
        "memory": samples,
    }


def _ms(values: list[float | None]) -> str:
    return " / ".join("–" if v is None else f"{v:.0f}" for v in values)


def report(results: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"`python scripts/load_test.py --url {args.url} --streams "
        f"{' '.join(str(r['streams']) for r in results)} --minutes {args.minutes:g}"
        f"{' --twilio' if args.twilio else ''}`",
        "",
        "| streams | transport | windows | scored | no speech | shed | lost | failed | "
        "window latency p50 / p95 / p99 / max (ms) | end to end p50 / p95 / p99 / max (ms) | "
        "server RSS start → max (MiB) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for r in results:
        rss = [m["rss_mib"] for m in r["memory"]]
        memory = f"{rss[0]:.0f} → {max(rss):.0f}" if rss else "–"
        lines.append(
            f"| {r['streams']} | {r['transport']} | {r['windows']} | {r['scored']} | "
            f"{r['no_speech']} | {r['shed']} | {r['lost']} | {r['failed']} | "
            f"{_ms(r['latency_ms'])} | {_ms(r['e2e_ms'])} | {memory} |"
        )
    for r in results:
        if r["errors"]:
            lines += ["", f"N={r['streams']}: errors: " + "; ".join(r["errors"])]
    lines += ["", "Server memory and open streams over time:", ""]
    for r in results:
        points = ", ".join(
            f"{m['t']:.0f} s: {m['streams']:.0f} streams, {m['rss_mib']:.0f} MiB"
            for m in r["memory"]
        )
        lines.append(f"- N={r['streams']}: {points or 'no samples'}")
    return "\n".join(lines)


def loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--url", default="ws://127.0.0.1:8000", help="the server (loopback only)")
    p.add_argument("--streams", type=int, nargs="+", default=[4], help="N values to try, in turn")
    p.add_argument("--minutes", type=float, default=1.0, help="audio per stream")
    p.add_argument("--twilio", action="store_true", help="Twilio Media Streams instead of PCM16")
    p.add_argument("--token", help="the server's bearer token")
    p.add_argument("--ramp", type=float, default=5.0, help="seconds over which streams start")
    p.add_argument(
        "--noise-dbfs",
        type=float,
        help="fill the gaps between clips with white noise at this RMS level (e.g. -60), "
        "not digital silence",
    )
    p.add_argument("--json", help="also write the raw results here")
    p.add_argument("--write", action="store_true", help="write docs/benchmarks.md (section load)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not loopback(args.url):
        p.error("the load test only runs against a loopback server (127.0.0.1, ::1, localhost)")
    if any(not 1 <= n <= MAX_STREAMS for n in args.streams):
        p.error(f"--streams must be 1-{MAX_STREAMS}")
    if not 0 < args.minutes <= MAX_MINUTES:
        p.error(f"--minutes must be in (0, {MAX_MINUTES:g}]")

    longest = max(args.streams)
    seconds = args.minutes * 60 + min(longest, 60) * 3.0
    audio = conversation(seconds, seed=0, noise_dbfs=args.noise_dbfs)
    results = []
    for n in args.streams:
        log.info("N=%d: %g min per stream ...", n, args.minutes)
        r = asyncio.run(run_level(n, args, audio))
        log.info(
            "N=%d: %d windows, %d scored, %d shed, %d lost, latency p99 %s ms",
            n,
            r["windows"],
            r["scored"],
            r["shed"],
            r["lost"],
            _ms(r["latency_ms"][2:3]),
        )
        results.append(r)
    text = report(results, args)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if args.write:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from benchlib import machine, versions, write_section

        write_section("load", f"{machine()}; {versions()}\n\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
