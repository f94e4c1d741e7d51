#!/usr/bin/env python
"""Benchmark encoder reuse window by window: what each window of a live call costs on the path
``voicescreen serve`` gives an AASIST bundle (``runtimes/reuse.py``).

One stream of continuous dev-split speech is cut as a session cuts it (early windows at 1.5 s and
every hop until the first full window, then regular windows at the hop aligned to the encoder's
stride) and every window goes through the reuse runtime as a one-window batch, in order, with a
fresh stream state each repeat. For each window: the share of a whole window's samples that went
through the encoder, and its wall and CPU time (CPU: this process, every thread), median over
repeats; next to a whole window through the same runtime without reuse, in the same run. Then
what those costs make of a call: the CPU of a 20 s and of a 120 s call of continuous speech, and
how much of it the early windows and the call's first regular window take.

    python scripts/bench_reuse.py [--bundle models/default] [--fast-path exact bf16]
        [--threads 1 2] [--repeats 5] [--no-write]

Writes the table into docs/benchmarks.md (section "reuse-windows", or ``--section``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
from benchlib import command_line, machine, versions, write_section

from voicescreen.audio import SAMPLE_RATE
from voicescreen.models.bundle import load_bundle
from voicescreen.models.store import resolve_bundle
from voicescreen.runtimes.reuse import IncrementalRuntime, Job, StreamFrames, aligned_hop
from voicescreen.stream.windows import StreamWindow, Windower, WindowOptions
from voicescreen.train.conversations import conversation


def cut(audio: np.ndarray, input_samples: int, hop_seconds: float) -> list[StreamWindow]:
    """The windows a session cuts from ``audio`` arriving in 20 ms packets."""
    windower = Windower(WindowOptions(input_samples, hop_seconds))
    packet = SAMPLE_RATE // 50
    return [w for i in range(0, audio.size, packet) for w in windower.push(audio[i : i + packet])]


def label(w: StreamWindow, regular: int) -> str:
    if w.early:
        return f"early, {w.end / SAMPLE_RATE:.2f} s of audio"
    if regular == 0:
        return "first regular"
    return f"regular {regular + 1}"


def clocked(fn) -> tuple[float, float]:
    """Wall and CPU seconds (this process, every thread) of one call of ``fn``."""
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def run(runtime: IncrementalRuntime, windows: list[StreamWindow], repeats: int) -> list[dict]:
    """Each window's encoder share and median wall / CPU seconds, replaying the stream."""
    size = runtime.input_samples
    times: list[list[tuple[float, float]]] = [[] for _ in windows]
    shares = []
    for r in range(repeats + 1):  # the first pass warms every encoder length up
        frames = StreamFrames()
        for i, w in enumerate(windows):
            audio = w.end - w.start
            job = Job(w.samples, w.start, frames, audio if audio < size else None)
            before = runtime.stats.encoder_samples
            took = clocked(lambda job=job: runtime([job]))
            if r:
                times[i].append(took)
            else:
                shares.append((runtime.stats.encoder_samples - before) / size)
    return [
        {
            "share": share,
            "wall": statistics.median(t[0] for t in ts),
            "cpu": statistics.median(t[1] for t in ts),
        }
        for share, ts in zip(shares, times, strict=True)
    ]


def whole(runtime: IncrementalRuntime, window: np.ndarray, repeats: int) -> dict:
    x = window[None, :]
    runtime(x)
    walls, cpus = zip(*(clocked(lambda: runtime(x)) for _ in range(repeats)), strict=True)
    return {"share": 1.0, "wall": statistics.median(walls), "cpu": statistics.median(cpus)}


def call_cpu(rows: list[dict], kinds: list[str], seconds: float, hop: float, size: int) -> tuple:
    """CPU seconds of a call of ``seconds`` of continuous speech, and the early windows' and the
    first regular window's share of it (the steady window's cost for every later one)."""
    early = sum(r["cpu"] for r, k in zip(rows, kinds, strict=True) if k.startswith("early"))
    first = next(r["cpu"] for r, k in zip(rows, kinds, strict=True) if k == "first regular")
    steady = statistics.median(
        r["cpu"] for r, k in zip(rows, kinds, strict=True) if k.startswith("regular")
    )
    later = int((seconds * SAMPLE_RATE - size) // (hop * SAMPLE_RATE))  # regular windows after
    total = early + first + later * steady
    return total, early / total, first / total


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default=None, help="an AASIST bundle (default: the shipped one)")
    p.add_argument("--fast-path", nargs="+", default=["exact"], choices=["exact", "bf16"])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seconds", type=float, default=12.0, help="speech to cut windows from")
    p.add_argument("--section", default="reuse-windows")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()

    bundle = load_bundle(resolve_bundle(args.bundle))
    audio = conversation(args.seconds, 1.0, 0)
    lines = []
    for fast_path, threads in [(f, t) for f in args.fast_path for t in args.threads]:
        runtime = IncrementalRuntime(bundle, fast_path=fast_path, threads=threads)
        hop = aligned_hop(1.0, runtime.stride)
        windows = cut(audio, bundle.input_samples, hop)
        kinds, regular = [], 0
        for w in windows:
            kinds.append(label(w, regular))
            regular += not w.early
        base = whole(runtime, windows[-1].samples, args.repeats)
        rows = run(runtime, windows, args.repeats)
        print(f"{bundle.name}, {fast_path} path, {threads} thread(s)", file=sys.stderr)
        lines += [
            f"**{fast_path} path, {threads} thread{'s' if threads > 1 else ''}** (hop "
            f"{hop:.3f} s):",
            "",
            "| window | encoder input, share of a window | wall ms | CPU ms | CPU against a whole "
            "window |",
            "|---|---|---|---|---|",
        ]
        for kind, r in [("whole window, no reuse", base), *zip(kinds, rows, strict=True)]:
            lines.append(
                f"| {kind} | {r['share']:.2f} | {1000 * r['wall']:.1f} | {1000 * r['cpu']:.1f} "
                f"| {r['cpu'] / base['cpu']:.2f} |"
            )
        lines.append("")
        for seconds in (20, 120):
            total, early, first = call_cpu(rows, kinds, seconds, hop, bundle.input_samples)
            lines.append(
                f"- A {seconds} s call of continuous speech: {total:.2f} CPU s "
                f"({total / seconds:.3f} cores); the early windows {100 * early:.0f} % of it, the "
                f"first regular window {100 * first:.0f} %."
            )
        lines.append("")
        for line in lines[-(len(rows) + 9) :]:
            print(line)

    header = [
        f"`{command_line()}`",
        "",
        f"{bundle.name} on the {' and '.join(args.fast_path)} path, one stream of "
        f"{args.seconds:g} s of continuous dev-split speech cut as a session cuts it, each window "
        f"a one-window batch (median of {args.repeats} replays of the stream, each from a "
        "fresh stream state).",
        "",
        f"Machine: {machine()}; {versions()}.",
        "",
    ]
    if not args.no_write:
        write_section(args.section, "\n".join(header + lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
