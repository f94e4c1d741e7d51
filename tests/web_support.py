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
import os
import re
from dataclasses import replace
from pathlib import Path

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
