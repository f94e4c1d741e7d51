"""The server end to end on loopback: /healthz, /metrics, /v1/score, WS /v1/stream, `tap`.

A real uvicorn server (a thread, a free port) and real WebSocket clients (``websockets``); the
window scores a stream gets must be those of the offline scorer on the same audio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import urllib.request

import httpx
import numpy as np
import pytest
import soundfile as sf
from web_support import dev_clip, parse_metrics, run, start_server, web_bundle

from voicescreen.audio import load_audio
from voicescreen.cli.serve import add_parsers
from voicescreen.scoring import Scorer
from voicescreen.stream import WindowOptions
from voicescreen.web.client import converse, pcm_messages
from voicescreen.web.config import ServerConfig


@pytest.fixture(scope="module")
def bundle(export_aasist_l):
    return web_bundle(export_aasist_l)


@pytest.fixture(scope="module")
def server(bundle):
    server = start_server(ServerConfig(bundles=[bundle]))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def scorer(bundle):
    return Scorer(bundle)


@pytest.fixture(scope="module")
def clips(data_dir):
    return {
        "bonafide": dev_clip(data_dir, "bonafide", 5.5, 6.5),
        "spoof": dev_clip(data_dir, "spoof", 5.5, 6.5),
    }


def check_stream(result, offline, model="aasist-l"):
    """Events in order, the summary last, and the regular windows scored as offline."""
    kinds = [m["type"] for m in result.messages]
    assert kinds[0] == "started" and kinds[-1] == "summary" and kinds.count("summary") == 1
    assert result.close_code == 1000, result.close_reason
    assert "error" not in kinds
    windows = [m for m in result.messages if m["type"] in ("score", "no_speech")]
    assert [m["window"] for m in windows] == list(range(len(windows)))  # in order, none missing
    assert [m["end"] for m in windows] == sorted(m["end"] for m in windows)
    summary = result.messages[-1]
    s = summary["models"][model]
    assert summary["reason"] == "end" and s["windows"] == len(windows)
    assert s["scored"] == kinds.count("score") and s["shed"] == s["failed"] == 0
    assert summary["duration"] == pytest.approx(offline.duration, abs=1e-3)
    regular = {(m["start"], m["end"]): m for m in windows if not m["early"]}
    assert len(regular) == len(offline.windows)
    compared = 0
    for w in offline.windows:
        m = regular[(w.start, w.end)]
        if m["type"] == "score":
            assert m["raw"] == pytest.approx(w.score, abs=1e-4)
            assert m["calibrated"] == pytest.approx(w.calibrated, abs=1e-4)
            compared += 1
    assert compared >= 2
    # a verdict event announces each change of the smoothed verdict, right after its score
    verdicts = [m["verdict"] for m in result.messages if m["type"] == "score"]
    changes = [v for prev, v in zip(["uncertain", *verdicts], verdicts, strict=False) if v != prev]
    assert [m["verdict"] for m in result.messages if m["type"] == "verdict"] == changes


def test_health_models_page_and_openapi(server):
    assert httpx.get(server.url("/healthz")).json() == {
        "status": "ok",
        "version": "0.1.0",
        "models": ["aasist-l"],
    }
    models = httpx.get(server.url("/v1/models")).json()
    assert models["default"] == "aasist-l" and models["models"][0]["input_samples"] == 64600
    assert models["models"][0]["threshold"] == 0.5 and models["auth"] is False
    page = httpx.get(server.url("/"))
    assert page.status_code == 200 and "<title>voicescreen" in page.text
    for asset in ("app.js", "style.css", "worklet.js"):
        assert httpx.get(server.url(f"/static/{asset}")).status_code == 200
    spec = httpx.get(server.url("/openapi.json")).json()
    assert {"/healthz", "/metrics", "/v1/score", "/v1/rtc/offer"} <= set(spec["paths"])
    assert httpx.get(server.url("/docs")).status_code == 200


@pytest.mark.parametrize("label", ["bonafide", "spoof"])
def test_a_stream_scores_like_the_offline_scorer(server, scorer, clips, label):
    offline = scorer.score_signal(load_audio(clips[label]))
    result = run(
        converse(
            server.ws_url("/v1/stream"),
            pcm_messages(clips[label], stream_id=f"call-{label}"),
            realtime=False,
        )
    )
    assert {m["stream"] for m in result.messages} == {f"call-{label}"}
    started = result.messages[0]
    assert started["format"] == {"encoding": "pcm16", "sample_rate": 16000, "channels": 1}
    assert started["models"] == {
        "aasist-l": {"input_samples": 64600, "threshold": 0.5, "calibration": "pooled"}
    }
    assert started["channel"] == "wideband"  # 16 kHz PCM; the bundle has only its pooled one
    check_stream(result, offline)


def test_a_44k_stereo_float_stream_is_resampled_like_the_file(server, scorer, clips, tmp_path):
    """Another rate, channel count and encoding: the server resamples as `load_audio` does."""
    x = load_audio(clips["bonafide"], 44100)
    path = tmp_path / "stereo44k.wav"
    sf.write(path, np.stack([x, 0.5 * x], axis=1), 44100, subtype="FLOAT")
    offline = scorer.score_file(path)
    result = run(
        converse(
            server.ws_url("/v1/stream"),
            pcm_messages(path, encoding="float32", chunk_ms=37),
            realtime=False,
        )
    )
    started = result.messages[0]
    assert started["format"] == {"encoding": "float32", "sample_rate": 44100, "channels": 2}
    check_stream(result, offline)


def test_score_endpoint_returns_what_the_cli_prints(server, bundle, clips, capsys):
    from voicescreen.cli import main

    path = clips["spoof"]
    assert main(["score", "--bundle", str(bundle.source), "--json", "--windows", str(path)]) == 0
    cli = json.loads(capsys.readouterr().out)
    with open(path, "rb") as f:
        response = httpx.post(
            server.url("/v1/score"), files={"file": (str(path), f, "audio/flac")}, timeout=120
        )
    assert response.status_code == 200, response.text
    api = response.json()
    assert api.keys() == cli.keys() and len(api["windows"]) == len(cli["windows"]) >= 2
    assert {k: v for k, v in api.items() if k != "windows"} == pytest.approx(
        {k: v for k, v in cli.items() if k != "windows"}, abs=1e-6
    )
    for a, c in zip(api["windows"], cli["windows"], strict=True):
        assert a == pytest.approx(c, abs=1e-6)
    # the raw file as the body works too, named by ?filename=
    raw = httpx.post(
        server.url("/v1/score?filename=clip.flac&hop=2"), content=path.read_bytes(), timeout=120
    )
    assert raw.status_code == 200 and raw.json()["file"] == "clip.flac"
    assert len(raw.json()["windows"]) < len(api["windows"])


def test_twenty_concurrent_streams_all_complete(bundle, scorer, data_dir):
    """20 call-taps at once on one server: every one gets all its windows, scored as offline."""
    config = ServerConfig(bundles=[bundle], window=WindowOptions(min_audio=None))
    paths = [
        dev_clip(data_dir, kind, 4.0, 4.3, i) for kind in ("bonafide", "spoof") for i in (0, 1)
    ]
    offline = {p: scorer.score_signal(load_audio(p)) for p in paths}
    with start_server(config) as server:

        async def main():
            return await asyncio.gather(
                *(
                    converse(
                        server.ws_url("/v1/stream"),
                        pcm_messages(paths[k % len(paths)], stream_id=f"s{k}", chunk_ms=100),
                        realtime=False,
                    )
                    for k in range(20)
                )
            )

        results = run(main())
        metrics = parse_metrics(httpx.get(server.url("/metrics")).text)
    for k, result in enumerate(results):
        assert {m["stream"] for m in result.messages} == {f"s{k}"}
        check_stream(result, offline[paths[k % len(paths)]])
    assert metrics['voicescreen_streams_total{transport="stream",reason="end"}'] == 20
    assert metrics['voicescreen_streams_active{transport="stream"}'] == 0
    scored = sum(r.messages[-1]["models"]["aasist-l"]["scored"] for r in results)
    assert metrics['voicescreen_worker_scored_total{model="aasist-l"}'] == scored
    assert metrics['voicescreen_worker_shed_total{model="aasist-l"}'] == 0
    assert metrics['voicescreen_window_latency_seconds_count{model="aasist-l"}'] == scored
    assert metrics['voicescreen_worker_batch_size_count{model="aasist-l"}'] < scored  # batched


def test_metrics_are_prometheus_text(server):
    response = httpx.get(server.url("/metrics"))
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    metrics = parse_metrics(response.text)
    assert metrics['voicescreen_streams_total{transport="stream",reason="end"}'] >= 3
    assert metrics['voicescreen_stream_windows_total{model="aasist-l",outcome="scored"}'] >= 6
    assert metrics['voicescreen_window_latency_seconds_bucket{model="aasist-l",le="+Inf"}'] >= 6
    assert metrics["process_resident_memory_bytes"] > 0
    assert metrics['voicescreen_score_requests_total{status="200"}'] >= 1


def tap(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="voicescreen")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_tap_streams_a_file_at_real_time_pace(server, data_dir, capsys):
    path = dev_clip(data_dir, "bonafide", 4.0, 4.3)
    assert tap("tap", str(path), "--url", server.ws_url("/v1/stream")) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("started, models aasist-l")
    assert any("calibrated" in line for line in out)
    assert "summary (end, " in out[-1]
    assert tap("tap", str(path), "--url", server.ws_url("/v1/stream"), "--fast", "--json") == 0
    messages = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert messages[0]["type"] == "started" and messages[-1]["type"] == "summary"


def test_tap_reports_an_unreachable_server(data_dir, capsys):
    path = dev_clip(data_dir, "bonafide", 4.0, 4.3)
    assert tap("tap", str(path), "--url", "ws://127.0.0.1:9/v1/stream") == 2
    assert "cannot connect" in capsys.readouterr().err


def test_tap_explains_a_wrong_url_in_one_line(server, data_dir):
    """Through the real command: an http:// URL, one without a scheme, and a path the server
    has no WebSocket at (which it answers 404, not 403) each get one line saying what to do."""
    import subprocess
    import sys

    path = str(dev_clip(data_dir, "bonafide", 4.0, 4.3))
    http = server.url("/").rstrip("/")
    ws = server.ws_url("/v1/stream")
    cases = {
        http: f"a WebSocket URL is needed: {ws}",
        ws.removeprefix("ws://"): "not a WebSocket URL; give one like ws://",
        server.ws_url("/v1/nope"): "HTTP 404: no WebSocket endpoint at '/v1/nope'",
    }
    for url, says in cases.items():
        p = subprocess.run(
            [sys.executable, "-m", "voicescreen", "tap", path, "--url", url, "--fast"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert p.returncode == 2, (url, p.stderr)
        assert says in p.stderr and "Traceback" not in p.stderr, (url, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_the_server_logs_no_errors_for_good_streams(server):
    """Every stream above ended normally: no error events were counted."""
    text = urllib.request.urlopen(server.url("/metrics")).read().decode()
    assert "voicescreen_stream_errors_total{" not in text


def test_the_shipped_default_bundle_is_served_when_none_is_named(bundle, monkeypatch):
    from voicescreen.models import store
    from voicescreen.web import create_app
    from voicescreen.web.state import ConfigError

    monkeypatch.setattr(store, "DEFAULT_BUNDLE", bundle.source.parent / "not-shipped-yet")
    with pytest.raises(ConfigError, match="no default bundle shipped .* pass --bundle PATH"):
        create_app(ServerConfig())
    monkeypatch.setattr(store, "DEFAULT_BUNDLE", bundle.source)
    app = create_app(ServerConfig())
    assert list(app.state.voicescreen.workers) == ["aasist-l"]


def test_several_models_side_by_side(bundle, data_dir, tmp_path):
    """Two bundles served at once: a stream gets both unless its start names one."""
    import shutil

    twin = tmp_path / "twin"
    shutil.copytree(bundle.source, twin)
    card = json.loads((twin / "card.json").read_text())
    (twin / "card.json").write_text(json.dumps({**card, "name": "twin"}))
    config = ServerConfig(bundles=[bundle, str(twin)], window=WindowOptions(min_audio=None))
    path = dev_clip(data_dir, "spoof", 4.0, 4.3)
    with start_server(config) as server:
        assert httpx.get(server.url("/healthz")).json()["models"] == ["aasist-l", "twin"]
        both = run(converse(server.ws_url("/v1/stream"), pcm_messages(path), realtime=False))
        one = run(
            converse(
                server.ws_url("/v1/stream"), pcm_messages(path, models=["twin"]), realtime=False
            )
        )
    assert set(both.messages[0]["models"]) == {"aasist-l", "twin"}
    assert set(both.messages[-1]["models"]) == {"aasist-l", "twin"}
    scores = {
        m: [e["raw"] for e in both.of_type("score") if e["model"] == m]
        for m in ("aasist-l", "twin")
    }
    assert scores["aasist-l"] == pytest.approx(scores["twin"], abs=1e-4) and scores["twin"]
    assert set(one.messages[-1]["models"]) == {"twin"}
    assert {e["model"] for e in one.of_type("score")} == {"twin"}
