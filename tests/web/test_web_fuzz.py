"""A fuzz pass over the HTTP API as its OpenAPI document describes it: schemathesis (its CLI, in a
subprocess) reads ``/openapi.json`` from a real server with a token and sends every operation
examples, boundary cases and random requests, valid and invalid. No response may be a 5xx, every
response of a declared status must match its declared schema, and the server must still be
healthy afterwards. Bounded: a few examples per operation and a fixed seed (the same requests on
every run), well under a minute on 2 busy cores.

schemathesis is in the ``test`` extra: without it this module fails to import, it is not skipped.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time

import httpx
import pytest
import schemathesis
from web_support import start_server, web_bundle

from voicescreen.web.config import ServerConfig

TOKEN = "fuzz-token"
CLI = "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())"
CHECKS = "not_a_server_error,response_schema_conformance"
SECONDS = 120  # the run is killed past this (it takes ~10-30 s)
# ``model`` is a served one in 3 requests of 4 (else an unknown model: 404 before anything else)
CONFIG = """
[dictionaries.models]
values = ["aasist-l"]

[parameters]
"query.model" = { dictionary = "models", probability = 0.75 }
"""


@pytest.fixture(scope="module")
def server(export_aasist_l):
    config = ServerConfig(
        bundles=[web_bundle(export_aasist_l)], token=TOKEN, max_upload_bytes=1 << 20
    )
    server = start_server(config)
    yield server
    server.stop()


def test_the_api_survives_a_fuzz_pass(server, tmp_path):
    assert schemathesis.__version__.startswith("4.")  # the CLI's options as of 4.32
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    command = [
        sys.executable, "-c", CLI, "--config-file", str(config), "run", server.url("/openapi.json"),
        "--header", f"Authorization: Bearer {TOKEN}",
        "--checks", CHECKS,
        "--max-examples", "25",
        "--seed", "20261207",
        "--workers", "1",
        "--request-timeout", "30",
        "--generation-database", "none",
        "--no-color",
        "--report", "junit", "--report-dir", str(tmp_path),
    ]  # fmt: skip
    start = time.monotonic()
    # in tmp_path: its crash cache (.schemathesis/) stays out of the checkout
    run = subprocess.run(command, capture_output=True, text=True, timeout=SECONDS, cwd=tmp_path)
    took = time.monotonic() - start
    out = run.stdout + run.stderr
    assert "Operations:" in out and "5 selected" in out, out[-4000:]
    assert run.returncode == 0, f"schemathesis found failures ({took:.0f} s):\n{out[-8000:]}"
    generated = re.search(r"(\d+) generated", out)
    assert generated and int(generated[1]) >= 100, out[-4000:]  # it did send requests
    print(f"schemathesis: {generated[0]} in {took:.0f} s")
    headers = {"Authorization": f"Bearer {TOKEN}"}
    health = httpx.get(server.url("/healthz"), timeout=30)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert health.json()["models"] == ["aasist-l"]
    assert httpx.get(server.url("/v1/models"), headers=headers, timeout=30).status_code == 200
