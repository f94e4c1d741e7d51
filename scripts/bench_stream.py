#!/usr/bin/env python
"""Benchmark live streaming: how many real-time streams one machine screens.

N simulated streams are fed at real-time pace (PCM16 packets every ``--chunk-ms``) from real speech
of the corpus' dev split, with silence between clips to reach ``--speech`` (about half speech, like
a conversation), through the whole streaming path: decode, resample, VAD, windows, worker, events.
For each bundle and backend it finds the largest N that stays real time (every window scored
within one hop of being complete, none shed, the feeders on schedule) with one shared batched
worker, and the same for unbatched per-stream scoring (each stream calls the model itself, as a
server with one model call per connection would), in the same run; and reports p50/p95/p99 latency
and CPU use at that N.

    python scripts/bench_stream.py [--bundle PATH ...] [--backend default onnx torch ...]
        [--seconds 20] [--max-streams 256] [--p99-ms 500] [--budget 900] [--no-write]

Without ``--backend``: the capacity of ``voicescreen serve`` with no runtime flags on this machine
(the runtime it chooses, batched) against unbatched eager PyTorch, on the shipped bundle.

``--backend ray`` scores on a Ray Serve deployment instead (a local Ray instance on loopback,
``--replicas`` 1 2 ...: one row per replica count, batched only), in the same run as the in-process
backends named beside it, e.g. ``--backend onnx ray --replicas 1 2 --modes batched``; the CPU
column then shows this process (ingest) + the replicas' processes.

Bounded in time: each trial lasts ``--seconds`` of stream time (and stops as soon as it fails), and
the whole run stops searching when ``--budget`` seconds are spent. Writes the table into
docs/benchmarks.md (section "stream", or "stream-ray" when Ray is in the run) and prints it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from benchlib import command_line, machine, versions, write_section

from voicescreen.audio import SAMPLE_RATE
from voicescreen.models.bundle import load_bundle
from voicescreen.models.store import resolve_bundle
from voicescreen.runtimes import describe_text, open_runtime, plan_runtime
from voicescreen.runtimes.reuse import aligned_hop
from voicescreen.stream import (
    AudioFormat,
    BatchOptions,
    Cascade,
    InferenceWorker,
    Session,
    VadOptions,
    WindowOptions,
)
from voicescreen.stream.worker import percentile
from voicescreen.train.conversations import conversation

log = logging.getLogger("bench_stream")


@dataclass
class Trial:
    mode: str
    streams: int
    windows: int = 0
    scored: int = 0
    no_speech: int = 0
    shed: int = 0
    failed: int = 0
    latencies: list[float] = field(default_factory=list)  # ms
    max_lag: float = 0.0  # s a feeder fell behind its schedule
    cpu: float = 0.0  # cores busy on average in this process (ingest, and the in-process model)
    cpu_replicas: float = 0.0  # cores busy on average in the Ray replicas' processes
    wall: float = 0.0
    aborted: str = ""
    escalated: int = 0  # cascade: windows the expert scored
    busy: float = 0.0  # share of wall time a model call was running (summed over workers)
    mean_batch: float | None = None
    encoder_share: float | None = None  # reuse: encoder input per window / a whole window's
    hop_ms: float = 0.0  # the hop the sessions ran at (reuse moves it onto the encoder grid)
    p99_limit_ms: float | None = None  # real time also needs p99 latency within this

    def ok(self) -> bool:
        late = max(self.latencies, default=0.0) > self.hop_ms
        if self.p99_limit_ms is not None and self.latencies:
            late = late or self.pct(0.99) > self.p99_limit_ms
        return not (
            self.aborted or self.shed or self.failed or late or self.max_lag * 1000 > self.hop_ms
        )

    def pct(self, p: float) -> float | None:
        return percentile(self.latencies, p)


def process_cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of other processes (Ray replicas), from /proc."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


async def run_trial(
    mode: str,
    n: int,
    make_worker,
    audio: list[bytes],
    args: argparse.Namespace,
    replica_pids: list[int] = (),
) -> Trial:
    trial = Trial(mode, n, p99_limit_ms=args.p99_ms or None)
    chunk = int(SAMPLE_RATE * args.chunk_ms / 1000) * 2  # bytes of PCM16
    shared = make_worker() if mode != "unbatched" else None
    workers = [shared] * n if shared else [make_worker() for _ in range(n)]
    stride = workers[0].stride
    trial.hop_ms = hop_ms = 1000 * (aligned_hop(args.hop, stride) if stride else args.hop)
    sessions = [
        Session(
            w,
            fmt=AudioFormat("pcm16", SAMPLE_RATE),
            window=WindowOptions(hop_seconds=args.hop),
            vad=VadOptions(min_voiced=args.min_voiced),
            stream_id=f"s{k}",
        )
        for k, w in enumerate(workers)
    ]
    stop = asyncio.Event()

    def fail(why: str) -> None:
        if not trial.aborted:
            trial.aborted = why
            stop.set()

    async def consume(session: Session) -> None:
        async for e in session.events():
            if e.type == "score":
                trial.latencies.append(e.latency_ms)
                if e.latency_ms > hop_ms:
                    fail(f"latency {e.latency_ms:.0f} ms")
            elif e.type == "overloaded":
                fail("shed")
            elif e.type == "summary":
                s = next(iter(e.models.values()))
                trial.windows += s.windows
                trial.scored += s.scored
                trial.no_speech += s.no_speech
                trial.shed += s.shed
                trial.failed += s.failed

    async def feed(k: int, session: Session, data: bytes, start: float) -> None:
        loop = asyncio.get_running_loop()
        # a new call every `arrival` seconds, or the starts spread evenly over `stagger`
        spread = args.arrival * n if args.arrival else args.stagger or args.hop
        offset = spread * k / n
        # every stream lasts `seconds` more than the starts take, so that all N run at once for
        # `seconds` (and they end as they started, one by one: a call's end costs a window too)
        length = args.seconds + spread * (n - 1) / n
        data = data[: int(length * SAMPLE_RATE) * 2]
        for i, pos in enumerate(range(0, len(data), chunk)):
            due = start + offset + i * args.chunk_ms / 1000
            delay = due - loop.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                session.cancel()
                return
            trial.max_lag = max(trial.max_lag, -delay)
            if -delay > args.hop:
                fail(f"feeder {-delay:.1f} s behind")
            session.push(data[pos : pos + chunk])
        session.end()

    loop = asyncio.get_running_loop()
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    p0 = process_cpu_seconds(replica_pids)
    reuse0 = reuse_counts(workers)
    start = loop.time() + 0.05
    consumers = [asyncio.create_task(consume(s)) for s in sessions]
    await asyncio.gather(
        *(feed(k, s, audio[k % len(audio)], start) for k, s in enumerate(sessions))
    )
    await asyncio.gather(*consumers)
    r1, trial.wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - t0
    trial.cpu = (r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime) / trial.wall
    trial.cpu_replicas = (process_cpu_seconds(replica_pids) - p0) / trial.wall
    unique = {id(w): w for w in workers}.values()
    parts = worker_parts(workers)
    for part in parts:
        await part.close()
    trial.busy = sum(p.metrics.busy_s for p in parts) / trial.wall
    batches = sum(p.metrics.batches for p in parts)
    trial.mean_batch = sum(p.metrics.scored for p in parts) / batches if batches else None
    trial.encoder_share = reuse_share(workers, reuse0)
    trial.escalated = sum(w.metrics.escalated for w in unique if isinstance(w, Cascade))
    return trial


def worker_parts(workers: list) -> list[InferenceWorker]:
    """The distinct inference workers behind ``workers`` (a cascade's screen and expert)."""
    unique = {id(w): w for w in workers}.values()
    return [p for w in unique for p in ((w.screen, w.expert) if isinstance(w, Cascade) else (w,))]


def _reuse_stats(workers: list) -> list:
    """The ``ReuseStats`` of every encoder-reuse runtime behind ``workers`` (a fusion's members
    included)."""
    runtimes = [
        r for p in worker_parts(workers) for r in (p.runtime, *getattr(p.runtime, "members", ()))
    ]
    return [r.stats for r in {id(r): r for r in runtimes}.values() if hasattr(r, "stats")]


def reuse_counts(workers: list) -> list[tuple[int, int]]:
    """(windows, encoder input samples) so far of each reuse runtime behind ``workers``."""
    return [(s.windows, s.encoder_samples) for s in _reuse_stats(workers)]


def reuse_share(workers: list, before: list[tuple[int, int]]) -> float | None:
    """Encoder input per window since ``before``, as a share of a whole window (None: no reuse
    runtime)."""
    after = reuse_counts(workers)
    windows = sum(a[0] - b[0] for a, b in zip(after, before, strict=True))
    samples = sum(a[1] - b[1] for a, b in zip(after, before, strict=True))
    size = workers[0].input_samples
    return samples / windows / size if windows else None


def log_trial(trial: Trial) -> None:
    """One line on a trial: its verdict and where the time went."""
    log.info(
        "  %s N=%d: %s (scored %d, shed %d, p99 %s ms, cpu %.2f + %.2f cores, model busy "
        "%.2f, mean batch %s, encoder share %s%s)",
        trial.mode,
        trial.streams,
        "real time" if trial.ok() else "FAILS",
        trial.scored,
        trial.shed,
        _ms(trial.pct(0.99)),
        trial.cpu,
        trial.cpu_replicas,
        trial.busy,
        "-" if trial.mean_batch is None else f"{trial.mean_batch:.1f}",
        "-" if trial.encoder_share is None else f"{trial.encoder_share:.2f}",
        f", {trial.aborted}" if trial.aborted else "",
    )


def largest_realtime(
    mode: str, make_worker, audio, args, deadline: float, replica_pids: list[int] = ()
) -> tuple[Trial, list]:
    """Double N until a trial fails (or time runs out), then bisect; the best passing trial."""
    tried: list[Trial] = []
    best: Trial | None = None
    lo, hi, n = 0, None, 1
    while time.monotonic() + (args.seconds + 2 * (args.arrival or 0) * n) * 1.2 < deadline:
        trial = asyncio.run(run_trial(mode, n, make_worker, audio, args, replica_pids))
        tried.append(trial)
        ok = trial.ok()
        log_trial(trial)
        if ok:
            lo, best = n, trial
        else:
            hi = n
        if hi is None:
            if n >= args.max_streams:
                break
            n = min(2 * n, args.max_streams)
        elif hi - lo <= max(1, lo // 8):  # within 12 %: good enough
            break
        else:
            n = (lo + hi) // 2
    return best or Trial(mode, 0, aborted="no N ran in real time"), tried


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def _cpu(trial: Trial, backend: str) -> str:
    if backend.startswith("ray"):
        return f"{trial.cpu:.2f} + {trial.cpu_replicas:.2f}"
    return f"{trial.cpu:.2f}"


def ray_runtime(bundle, replicas: int, args: argparse.Namespace):
    """``bundle`` deployed as ``replicas`` Ray Serve replicas on the local Ray instance (started
    on first use), its runtime and the replicas' process ids."""
    from voicescreen.runtimes import RayOptions
    from voicescreen.runtimes import ray as rayserve

    options = RayOptions(
        address="local",
        replicas=replicas,
        cpus_per_replica=args.cpus_per_replica,
        max_batch=args.replica_max_batch,
    )
    runtime = rayserve.open_ray({bundle.name: bundle}, options)[bundle.name]
    handle = rayserve.serve.get_app_handle(rayserve.app_name(bundle.name))
    pids: set[int] = set()
    for _ in range(50 * replicas):
        pids.add(rayserve.describe(handle)["pid"])
        if len(pids) == replicas:
            break
    return runtime, sorted(pids)


# Backends in this process: (backend, Bundle.runtime options); "default" is what `serve` with no
# runtime flags chooses on this machine (runtimes.plan_runtime)
LOCAL_VARIANTS = {
    "default": ("auto", {}),
    "onnx": ("onnx", {}),
    "torch": ("torch", {}),
    "onnx+exact": ("onnx", {"fast_path": "exact"}),
    "onnx+reuse": ("onnx", {"reuse": True}),
    "onnx+exact+reuse": ("onnx", {"fast_path": "exact", "reuse": True}),
    "torch+bf16": ("torch", {"fast_path": "bf16"}),
    "torch+bf16+reuse": ("torch", {"fast_path": "bf16", "reuse": True}),
}


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--bundle",
        action="append",
        help="bundle path or installed name (repeatable; default: the shipped one)",
    )
    p.add_argument(
        "--backend",
        nargs="+",
        default=None,
        choices=list(LOCAL_VARIANTS) + ["ray"],
        help="default (what `serve` chooses here), onnx, torch, or a variant: +exact / +bf16 "
        "fast path, +reuse (encoder reuse). Without it: the default command, batched, against "
        "unbatched eager PyTorch",
    )
    p.add_argument(
        "--cascade",
        action="append",
        default=[],
        metavar="SCREEN",
        help="also measure SCREEN > each --bundle as a cascade (batched; repeatable)",
    )
    p.add_argument("--band", type=float, default=1.0, help="cascade: escalate |screen| <= band")
    p.add_argument(
        "--cascade-on",
        nargs="+",
        default=None,
        help="the --backend(s) cascades run on (default: the last one named)",
    )
    p.add_argument(
        "--skip",
        nargs="*",
        default=[],
        metavar="BACKEND:MODE",
        help="leave out these combinations, e.g. torch:batched",
    )
    p.add_argument(
        "--replicas", type=int, nargs="+", default=[1, 2], help="ray: replica counts to measure"
    )
    p.add_argument("--cpus-per-replica", type=float, default=1.0, help="ray: CPUs per replica")
    p.add_argument("--replica-max-batch", type=int, default=64, help="ray: windows per call")
    p.add_argument("--providers", default=None, help="ONNX Runtime providers, e.g. cuda,cpu")
    p.add_argument(
        "--modes", nargs="+", default=["batched", "unbatched"], choices=["batched", "unbatched"]
    )
    p.add_argument("--seconds", type=float, default=20.0, help="stream seconds per trial")
    p.add_argument("--speech", type=float, default=0.5, help="fraction of speech in the audio")
    p.add_argument("--hop", type=float, default=1.0, help="window hop, seconds")
    p.add_argument("--chunk-ms", type=float, default=20.0, help="packet size, ms")
    p.add_argument(
        "--arrival",
        type=float,
        default=None,
        help="seconds between stream starts (instead of --stagger): N streams start over "
        "N x ARRIVAL seconds, as calls arriving at a busy server",
    )
    p.add_argument(
        "--stagger",
        type=float,
        default=None,
        help="seconds over which the streams' starts are spread (default: one hop); calls "
        "start at different times, and each start costs whole windows (early windows, the "
        "first regular one) that a running stream does not",
    )
    p.add_argument("--min-voiced", type=float, default=0.3)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--max-wait-ms", type=float, default=20.0)
    p.add_argument("--max-queue", type=int, default=256)
    p.add_argument("--max-streams", type=int, default=256)
    p.add_argument(
        "--streams",
        type=int,
        help="measure one trial at exactly N streams (latency at a given load) instead of "
        "searching for the largest real-time N; the streams column then shows N either way",
    )
    p.add_argument(
        "--p99-ms",
        type=float,
        default=500.0,
        help="real time also needs p99 latency within this (0: only every window within a hop)",
    )
    p.add_argument("--budget", type=float, default=900.0, help="seconds for the whole run")
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument("--section", help="docs/benchmarks.md section (default stream or stream-ray)")
    args = p.parse_args()
    args.bundle = args.bundle or [None]
    if args.backend is None:  # the capacity of `voicescreen serve` as it starts, against eager
        args.backend = ["default", "torch"]
        args.skip += ["default:unbatched", "torch:batched"]
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("voicescreen").setLevel(logging.WARNING)

    most = args.streams or args.max_streams
    longest = args.seconds + (args.arrival * most if args.arrival else args.stagger or args.hop)
    audio_f = [conversation(longest + 1, args.speech, seed) for seed in range(8)]
    audio = [
        np.round(np.clip(a, -1, 32767 / 32768) * 32768).astype("<i2").tobytes() for a in audio_f
    ]
    configs = []
    for b in args.bundle:
        for backend in args.backend:
            if backend == "ray":  # Serve batches: one row per replica count
                configs += [(b, "ray", "batched", r) for r in args.replicas]
            else:
                configs += [
                    (b, backend, mode, None)
                    for mode in args.modes
                    if f"{backend}:{mode}" not in args.skip
                ]
                if backend in (args.cascade_on or args.backend[-1:]):
                    configs += [(b, backend, "cascade", screen) for screen in args.cascade]
    load_before = load_average()
    t_start = time.monotonic()
    rows = []
    for i, (path, backend, mode, replicas) in enumerate(configs):
        bundle = load_bundle(resolve_bundle(path))
        label = backend if replicas is None else f"ray x{replicas}"
        pids: list[int] = []
        if backend == "ray":
            runtime, pids = ray_runtime(bundle, replicas, args)
        else:
            base, options = LOCAL_VARIANTS[backend]
            if base == "auto":
                plan = plan_runtime(bundle, providers=args.providers or "auto")
                log.info("default on this machine: %s", plan)
                bundle, base = bundle.with_plan(plan), plan.backend
            if base == "onnx" and args.providers:
                options = {**options, "providers": args.providers}
            runtime = open_runtime(bundle, base, **options)
            if backend == "default":  # what it chose, without the why (logged above)
                label = f"default: {describe_text(runtime).split(' (chosen')[0]}"
        runtime(np.zeros((1, bundle.input_samples), np.float32))  # warm up
        batch = BatchOptions(args.max_batch, args.max_wait_ms, args.max_queue)
        if mode == "unbatched":
            batch = BatchOptions(1, 0.0, args.max_queue)

        def make_worker(runtime=runtime, bundle=bundle, batch=batch):
            return InferenceWorker(
                runtime,
                name=bundle.name,
                input_samples=bundle.input_samples,
                score=bundle.score,
                options=batch,
            )

        if mode == "cascade":
            screen = load_bundle(resolve_bundle(replicas))
            screen_runtime = open_runtime(screen, "onnx")
            label = f"{screen.name} (onnx) > {backend}, band {args.band:g}"

            def make_worker(
                expert=make_worker, screen=screen, screen_runtime=screen_runtime, batch=batch
            ):
                first = InferenceWorker(
                    screen_runtime,
                    name=screen.name,
                    input_samples=screen.input_samples,
                    score=screen.score,
                    options=batch,
                )
                return Cascade(first, expert(), args.band)

        share = (args.budget - (time.monotonic() - t_start)) / (len(configs) - i)
        log.info("%s / %s / %s (%.0f s of budget)", bundle.name, label, mode, share)
        if args.streams:  # one trial at a given load instead of the search
            trial = asyncio.run(run_trial(mode, args.streams, make_worker, audio, args, pids))
            log_trial(trial)
            best, tried = trial, [trial]
        else:
            best, tried = largest_realtime(
                mode, make_worker, audio, args, time.monotonic() + share, pids
            )
        rows.append((bundle.name, label, " ".join(runtime.providers), mode, best, tried))
    load_after = load_average()

    streams_column = "streams" if args.streams else "real-time streams"
    lines = [
        f"Streams fed at real-time pace ({args.chunk_ms:g} ms PCM16 packets) from dev-split "
        f"speech, {args.speech:.0%} speech; window hop {args.hop:g} s (with +reuse the nearest "
        f"whole number of 2187-sample encoder strides: 7 = 0.957 s); VAD min_voiced "
        f"{args.min_voiced}; batched: max_batch {args.max_batch}, max_wait {args.max_wait_ms:g} "
        "ms; "
        + (
            f"one stream starting every {args.arrival:g} s"
            if args.arrival
            else f"stream starts spread over {args.stagger or args.hop:g} s"
        )
        + f", each lasting {args.seconds:g} s more than the starts take (all N at once for "
        f"{args.seconds:g} s, then ending one by one). Real time = every window scored within "
        "one hop of being complete"
        + (f" and p99 within {args.p99_ms:g} ms" if args.p99_ms else "")
        + ", none shed. Latency: window complete -> score.",
        "",
        f"Machine: {machine()}; {versions()}. Load average (1, 5, 15 min) before: "
        f"{load_before}; after: {load_after}.",
        "",
        f"| model | backend | runs on | scoring | {streams_column} | windows scored/s "
        "| p50 ms | p95 ms | p99 ms | CPU cores | trials (N: ok?) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, backend, providers, mode, best, tried in rows:
        trials = ", ".join(f"{t.streams}:{'y' if t.ok() else 'n'}" for t in tried)
        rate = best.scored / best.wall if best.wall else 0
        if mode == "cascade" and best.scored:
            mode = f"batched cascade, {best.escalated / best.scored:.0%} escalated"
        lines.append(
            f"| {name} | {backend} | {providers} | {mode} | {best.streams} | {rate:.1f} | "
            f"{_ms(best.pct(0.5))} | {_ms(best.pct(0.95))} | {_ms(best.pct(0.99))} | "
            f"{_cpu(best, backend)} | {trials} |"
        )
    body = "\n".join(lines)
    command = command_line()
    section = args.section or ("stream-ray" if "ray" in args.backend else "stream")
    if not args.no_write:
        write_section(section, f"`{command}`\n\n{body}")
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
