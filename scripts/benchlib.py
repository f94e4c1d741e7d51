"""Small helpers shared by the scripts/bench_*.py benchmarks: timing, machine facts, and writing a
section of docs/benchmarks.md between markers so each benchmark owns its own table."""

from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = ROOT / "docs" / "benchmarks.md"


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def spread(xs: list[float]) -> tuple[float, float, float]:
    """Median, min and max."""
    return statistics.median(xs), min(xs), max(xs)


def machine() -> str:
    """The CPU (model, the flags the runtimes choose by, torch's dispatch level), cores, memory."""
    from voicescreen.models.cpu import cpu_info

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cpu = cpu_info()
    return f"{cpu.describe()}, class {cpu.isa}, {len(os.sched_getaffinity(0))} cores, {mem:.0f} GiB"


def versions() -> str:
    import numpy
    import onnxruntime
    import torch

    return (
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"onnxruntime {onnxruntime.__version__}, numpy {numpy.__version__}"
    )


def git_rev() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "unknown"


def command_line() -> str:
    """How this script was run, for the table it writes: ``python scripts/NAME ARGS``, with
    absolute paths written portably (``../shared/...``, ``~/...``), never a machine's own."""
    from voicescreen.models.store import portable_path

    args = [portable_path(a) if a.startswith("/") else a for a in sys.argv[1:]]
    return " ".join(["python", f"scripts/{Path(sys.argv[0]).name}", *args])


def write_section(key: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace (or append) the section between ``<!-- bench:KEY -->`` markers."""
    start, end = f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"
    stamp = f"_Measured {dt.date.today().isoformat()} at commit {git_rev()}._\n\n"
    block = f"{start}\n{stamp}{body.strip()}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
