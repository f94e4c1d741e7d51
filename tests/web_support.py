"""Shared by the server tests (``tests/web/`` and others): real bundle, real clips, real server.

The bundle is AASIST-L with the official weights, exported once per pytest run (the export is the
slow part) into the run's base temp dir, where every test module finds it. Each module starts its
own uvicorn server on a free loopback port with the config it needs.

``VOICESCREEN_TEST_BACKEND=ray`` in the environment runs every server these helpers start on a
local Ray Serve deployment (loopback, two replicas) instead of the in-process worker: the same
tests, another backend (``VOICESCREEN_TEST_BACKEND=ray pytest tests/web/test_web_stream.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
import soundfile as sf

from voicescreen.models.bundle import Bundle
from voicescreen.runtimes import RayOptions
from voicescreen.web.config import ServerConfig
from voicescreen.web.server import BackgroundServer

BACKEND_ENV = "VOICESCREEN_TEST_BACKEND"
# Two replicas of half a CPU each: a second model's replicas still fit a 2-CPU machine.
TEST_RAY = RayOptions(address="local", replicas=2, cpus_per_replica=0.5)
GUARD = 180  # seconds: far beyond what any stream here takes on 2 busy cores
PROMETHEUS_LINE = re.compile(
    r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? '
    r"(NaN|[+-]Inf|-?[0-9.e+-]+)$"
)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, GUARD))


def web_bundle(export_aasist_l) -> Bundle:
    """AASIST-L (official weights), threshold 0.5 and scale 1.5 so calibration is exercised."""
    return export_aasist_l(threshold=0.5, scale=1.5)


def dev_clip(data_dir: Path, label: str, low: float, high: float, index: int = 0) -> Path:
    """The ``index``-th dev clip of ``label`` lasting ``low``-``high`` seconds."""
    rows = [
        r.split()
        for r in (data_dir / "protocols" / "VS.cm.dev.trl.txt").read_text().splitlines()
        if r.strip()
    ]
    found = [
        p
        for r in rows
        if r[4] == label
        and low <= sf.info(str(p := data_dir / "flac" / f"{r[1]}.flac")).duration <= high
    ]
    assert len(found) > index, f"need {index + 1} dev {label} clips of {low}-{high} s"
    return found[index]


@dataclass
class ServeProcess:
    """A ``voicescreen serve`` process (``serve_process``): its port, ``/v1/models`` once it
    answered, and what it has written to stderr so far (complete after it stopped)."""

    port: int
    models: dict
    log_lines: list[str] = field(default_factory=list)

    def url(self, path: str, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    @property
    def log(self) -> str:
        return "".join(self.log_lines)


@contextlib.contextmanager
def serve_process(
    args: list[str], env: dict[str, str] | None = None, guard: float = GUARD
) -> Iterator[ServeProcess]:
    """``voicescreen serve ARGS --port P`` on a free loopback port, waited for as long as its
    start-up takes (a compile can take minutes on a slow CPU), provided it keeps saying what it
    is doing: ``guard`` seconds without a new log line fail. Stopped on leaving."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "voicescreen", "serve", *args, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    proc = ServeProcess(port, {})
    reader = threading.Thread(target=lambda: proc.log_lines.extend(server.stderr), daemon=True)
    reader.start()
    try:
        heard, quiet_since = 0, time.monotonic()
        while True:
            assert server.poll() is None, proc.log
            if len(proc.log_lines) > heard:
                heard, quiet_since = len(proc.log_lines), time.monotonic()
            silent = time.monotonic() - quiet_since
            assert silent < guard, f"the server said nothing for {silent:.0f} s: {proc.log_lines}"
            try:
                proc.models = httpx.get(proc.url("/v1/models")).json()
                break
            except httpx.TransportError:
                time.sleep(0.5)
        yield proc
    finally:
        server.terminate()
        server.wait(timeout=guard)
        reader.join(timeout=guard)


def start_server(config: ServerConfig) -> BackgroundServer:
    if os.environ.get(BACKEND_ENV) == "ray" and config.backend == "onnx":
        config = replace(config, backend="ray", ray=TEST_RAY)
    return BackgroundServer(config).start()


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value}; asserts every sample line is well formed."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        assert PROMETHEUS_LINE.match(line), f"not Prometheus text: {line!r}"
        key, value = line.rsplit(" ", 1)
        out[key] = float(value)
    return out
