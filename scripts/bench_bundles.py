#!/usr/bin/env python
"""Benchmark trained bundles as the server runs them: each bundle's ``model.onnx`` in ONNX
Runtime (CPU), milliseconds per 4 s window at batch 1 and batch 8, with 1 and 2 intra-op
threads, on real speech windows; all bundles measured in the same run, one after the other.

    python scripts/bench_bundles.py default runs/w-cv2/bundle runs/fuse1/bundle [--repeats 5]

Writes the table into docs/benchmarks.md (section "bundles") and prints it.
"""

from __future__ import annotations

import argparse
import os

from bench_models import speech_windows
from benchlib import command_line, machine, spread, timed, versions, write_section

from voicescreen.models.bundle import load_bundle
from voicescreen.models.store import resolve_bundle
from voicescreen.runtimes import open_runtime

BATCHES = (1, 8)
THREADS = (1, 2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundles", nargs="+", help="bundle paths or installed names")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args()
    load0 = f"{os.getloadavg()[0]:.2f}"
    head = ["bundle", "architecture", "size MB"]
    head += [f"{t} thread{'s' * (t > 1)}, batch {b}: ms/window" for t in THREADS for b in BATCHES]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for spec in args.bundles:
        bundle = load_bundle(resolve_bundle(spec))
        x = speech_windows(max(BATCHES), bundle.input_samples)
        size = sum(len(v) for v in bundle.files.values()) / 1e6
        cells = [bundle.name, bundle.architecture, f"{size:.1f}"]
        for t in THREADS:
            runtime = open_runtime(bundle, "onnx", threads=t)
            for b in BATCHES:
                ts = timed(lambda r=runtime, w=x[:b]: r(w), args.repeats)
                med, fastest, slowest = (1000 * v / b for v in spread(ts))
                cells.append(f"{med:.1f} ({fastest:.1f}–{slowest:.1f})")
            del runtime
        print("  " + " | ".join(cells), flush=True)
        lines.append("| " + " | ".join(cells) + " |")
    body = f"""## Trained bundles: cost per 4 s window

Machine: {machine()}. {versions()}. Load average before / after: {load0} / {os.getloadavg()[0]:.2f}.
Command: `{command_line().strip()}`. Inputs: real speech windows from the dev split of
`../shared/data`. Cells: milliseconds per window, median (min–max) over {args.repeats} calls,
ONNX Runtime's CPU provider on each bundle's `model.onnx` (a fusion runs all its members).

{chr(10).join(lines)}
"""
    print(body)
    if not args.no_write:
        write_section("bundles", body)


if __name__ == "__main__":
    main()
