"""One verdict rule everywhere: smoothing, hysteresis, and ``uncertain`` below a minimum of speech.

Units: the rule, and the VAD's count of speech (the same however the audio is chunked, streamed
or whole). End to end with a real model (AASIST-L, official weights, exported with a threshold
far above its scores, so that every window is confidently spoof): a tenth of a second of real
speech is ``uncertain``, with the reason, through a session, offline scoring, ``voicescreen
score``, ``voicescreen monitor --exit-on-spoof`` (which then does not fire), and a real server's
``/v1/score`` and ``/v1/stream`` (through ``voicescreen tap``); a few seconds of the same voice
are spoof in each; ``--min-speech 0`` lifts the rule.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import httpx
import numpy as np
import pytest
import soundfile as sf
from web_support import dev_clip, start_server

from voicescreen.audio import SAMPLE_RATE, load_audio
from voicescreen.scoring import Scorer
from voicescreen.stream import AudioFormat, BatchOptions, Session, VadOptions, load_scorers
from voicescreen.stream.vad import VoiceGate, speech_before
from voicescreen.verdict import (
    MIN_SPEECH_SECONDS,
    Smoother,
    SmoothingOptions,
    judge,
    summarise,
    too_little_speech,
)
from voicescreen.web.config import ServerConfig

THRESHOLD = 50.0  # far above any AASIST-L logit: every window is spoof, calibrated < -40
SHORT = 0.1  # seconds


# --- the rule -----------------------------------------------------------------------------------


def test_too_little_speech_is_uncertain_whatever_the_scores() -> None:
    rule = SmoothingOptions()
    assert rule.min_speech == MIN_SPEECH_SECONDS == 1.0
    assert judge(-9.0, "uncertain", 0.1, rule) == "uncertain"
    assert judge(-9.0, "uncertain", 1.0, rule) == "spoof"
    assert judge(+9.0, "uncertain", 0.99, rule) == "uncertain"
    assert "0.10 s heard" in too_little_speech(0.1, rule)
    assert too_little_speech(1.0, rule) is None

    short = summarise([-9.0, -8.0], 0.1, rule)
    assert (short.verdict, short.mean) == ("uncertain", -8.5)
    assert "too little speech" in short.reason
    assert summarise([-9.0, -8.0], 2.0, rule) == summarise([-8.5], 2.0, rule)
    assert summarise([-8.5], 2.0, rule).verdict == "spoof"
    assert summarise([0.2], 2.0, rule).verdict == "uncertain"  # inside the hysteresis band
    assert summarise([0.2], 2.0, rule).reason is None
    assert summarise([], 2.0, rule).reason == "no window was scored"
    assert summarise([-9.0], 0.0, SmoothingOptions(min_speech=0)).verdict == "spoof"
    with pytest.raises(ValueError, match="min_speech"):
        SmoothingOptions(min_speech=-1)


def test_a_smoother_waits_for_enough_speech_then_smooths() -> None:
    s = Smoother(SmoothingOptions(windows=2))
    steps = [s.update(c, speech) for c, speech in [(-3, 0.3), (-3, 0.9), (-3, 1.2), (2, 2.0)]]
    assert [v for _, v in steps] == ["uncertain", "uncertain", "spoof", "spoof"]  # -0.5: holds
    assert s.update(2, 3.0) == (2.0, "bonafide")


# --- speech, counted the same way whole or in chunks ----------------------------------------------


def test_speech_is_counted_alike_in_chunks_with_forgetting_and_whole(speech_clips) -> None:
    x = speech_clips["bonafide"]
    whole = speech_before(x)
    assert 0.5 < whole(x.size) <= x.size / SAMPLE_RATE
    gate = VoiceGate()
    rng = np.random.default_rng(0)
    i = 0
    while i < x.size:
        step = int(rng.integers(1, 4000))
        gate.process(x[i : i + step])
        i += step
        assert gate.voiced_seconds(i) == pytest.approx(whole(i))
        gate.forget_before(max(0, i - 8000))
    assert gate.voiced_seconds() == pytest.approx(whole(x.size))
    with pytest.raises(ValueError, match="forgotten"):
        gate.voiced_seconds(0)
    off = speech_before(x, VadOptions(enabled=False))
    assert off(16000) == 1.0 and off(10**9) == x.size / SAMPLE_RATE


# --- end to end ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle(export_aasist_l):
    return export_aasist_l(threshold=THRESHOLD, scale=1.0, name="always-spoof")


@pytest.fixture(scope="module")
def clips(data_dir, tmp_path_factory):
    """A few seconds of a real bona fide voice, and the loudest tenth of a second of it."""
    folder = tmp_path_factory.mktemp("verdict")
    x = load_audio(dev_clip(data_dir, "bonafide", 3.0, 5.0))
    n = int(SHORT * SAMPLE_RATE)
    energy = np.convolve(x.astype(np.float64) ** 2, np.ones(n), "valid")
    start = int(np.argmax(energy))
    paths = {"long": folder / "long.wav", "short": folder / "short.wav"}
    sf.write(paths["long"], x, SAMPLE_RATE, subtype="PCM_16")
    sf.write(paths["short"], x[start : start + n], SAMPLE_RATE, subtype="PCM_16")
    return paths


def _session_summary(bundle, path, rule: SmoothingOptions):
    async def go():
        workers = load_scorers([bundle], "onnx", BatchOptions())
        try:
            session = Session(workers, fmt=AudioFormat("float32", SAMPLE_RATE, 1), smoothing=rule)
            x = load_audio(path)
            for i in range(0, x.size, 3200):
                session.push(x[i : i + 3200])
            return await session.close()
        finally:
            for w in workers.values():
                await w.close()

    events = asyncio.run(asyncio.wait_for(go(), 120))
    return events, events[-1].models[bundle.name]


def test_a_tenth_of_a_second_is_uncertain_in_a_session_and_offline(bundle, clips) -> None:
    rule = SmoothingOptions()
    events, summary = _session_summary(bundle, clips["short"], rule)
    scores = [e for e in events if e.type == "score"]
    assert scores and all(e.calibrated < -40 for e in scores)  # scored, confidently spoof...
    assert all(e.verdict == "uncertain" for e in scores)  # ...and still not called
    assert not [e for e in events if e.type == "verdict"]
    assert summary.verdict == "uncertain" and "too little speech" in summary.reason
    assert summary.speech <= SHORT

    scorer = Scorer(bundle)
    offline = scorer.score_file(clips["short"])
    assert (offline.verdict, offline.reason) == (summary.verdict, summary.reason)
    assert offline.speech == pytest.approx(summary.speech)
    assert [w.verdict for w in offline.windows] == ["uncertain"]

    # the same voice for a few seconds: spoof, in both
    events, summary = _session_summary(bundle, clips["long"], rule)
    assert summary.verdict == "spoof" and summary.reason is None
    assert summary.speech >= MIN_SPEECH_SECONDS
    offline = scorer.score_file(clips["long"])
    assert offline.verdict == "spoof" and offline.reason is None
    assert offline.speech == pytest.approx(summary.speech)
    # the rule lifted: the tenth of a second is called
    lifted = Scorer(bundle, smoothing=SmoothingOptions(min_speech=0)).score_file(clips["short"])
    assert lifted.verdict == "spoof"
    _, summary = _session_summary(bundle, clips["short"], SmoothingOptions(min_speech=0))
    assert summary.verdict == "spoof"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "voicescreen", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        timeout=300,
    )


def test_score_and_monitor_do_not_call_a_tenth_of_a_second(bundle, clips) -> None:
    p = _cli("score", "--bundle", str(bundle.source), "--json", str(clips["short"]))
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    assert got["verdict"] == "uncertain" and "too little speech" in got["reason"]
    p = _cli("score", "--bundle", str(bundle.source), str(clips["short"]), str(clips["long"]))
    assert p.returncode == 0, p.stderr
    short, long = p.stdout.splitlines()
    assert " uncertain " in short and "too little speech" in short
    assert " spoof " in long
    assert short.index(" uncertain") == long.index(" spoof")  # one column, paths of any length
    p = _cli("score", "--bundle", str(bundle.source), "--min-speech", "0", str(clips["short"]))
    assert " spoof " in p.stdout

    # monitor: no spoof verdict, so --exit-on-spoof does not fire; the summary says why
    args = ["monitor", "--bundle", str(bundle.source), "--fast", "--jsonl", "--exit-on-spoof"]
    p = _cli(*args, "--input", str(clips["short"]))
    assert p.returncode == 0, p.stderr
    events = [json.loads(line) for line in p.stdout.splitlines()]
    assert not [e for e in events if e["type"] == "verdict"]
    summary = events[-1]["models"]["always-spoof"]
    assert summary["verdict"] == "uncertain" and "too little speech" in summary["reason"]
    p = _cli(*args, "--input", str(clips["long"]))
    assert p.returncode == 3, p.stderr  # the long clip does fire


@pytest.fixture(scope="module")
def server(bundle):
    server = start_server(ServerConfig(bundles=[bundle]))
    yield server
    server.stop()


def test_the_server_does_not_call_a_tenth_of_a_second(server, clips) -> None:
    rule = httpx.get(server.url("/v1/models"), timeout=30).json()["smoothing"]
    assert rule["min_speech"] == MIN_SPEECH_SECONDS  # the rule the server states, and uses
    for name, verdict in (("short", "uncertain"), ("long", "spoof")):
        with open(clips[name], "rb") as f:
            r = httpx.post(server.url("/v1/score"), files={"file": (f"{name}.wav", f)}, timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["verdict"] == verdict
        assert ("too little speech" in (r.json()["reason"] or "")) == (name == "short")

        p = _cli("tap", "--url", server.ws_url("/v1/stream"), "--fast", "--json", str(clips[name]))
        assert p.returncode == 0, p.stderr
        summary = json.loads(p.stdout.splitlines()[-1])
        assert summary["type"] == "summary"
        assert summary["models"]["always-spoof"]["verdict"] == verdict
        p = _cli("tap", "--url", server.ws_url("/v1/stream"), "--fast", str(clips[name]))
        assert p.returncode == 0, p.stderr
        last = p.stdout.splitlines()[-1]
        assert verdict.upper() in last
        assert ("too little speech" in last) == (name == "short")
