"""The monitor's parts that need no sound card nor model: view, error messages, alerts, wiring."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import sys

import numpy as np
import pytest
from rich.console import Console

from voicescreen import monitor as mon
from voicescreen.cli import monitor as monitor_command
from voicescreen.stream import (
    ModelSummary,
    NoSpeechEvent,
    ScoreEvent,
    SummaryEvent,
    VerdictEvent,
    mic,
)


def score(window: int, calibrated: float, verdict: str, voiced: float = 0.9) -> ScoreEvent:
    return ScoreEvent(
        stream="s",
        model="aasist-l",
        window=window,
        start=max(0.0, window - 3.0),
        end=window + 1.0,
        early=False,
        voiced=voiced,
        raw=calibrated,
        calibrated=calibrated,
        smoothed=calibrated,
        verdict=verdict,
        latency_ms=120.0 + window,
        batch=1,
        scored_by="aasist-l",
    )


def test_sparkline_spans_the_score_range():
    assert mon.sparkline([-4.0, 0.0, 4.0]) == "▁▅█"
    assert mon.sparkline([-100.0, 100.0]) == "▁█"  # clipped
    bars = mon.sparkline(np.linspace(-4, 4, 50).tolist())
    assert [mon.SPARK_BARS.index(b) for b in bars] == sorted(mon.SPARK_BARS.index(b) for b in bars)


def test_level_and_meter():
    t = np.arange(16000) / 16000
    rms, peak = mon.level_dbfs(np.sin(2 * np.pi * 440 * t).astype(np.float32))
    assert rms == pytest.approx(-3.01, abs=0.01) and peak == pytest.approx(0.0, abs=0.01)
    assert mon.level_dbfs(np.zeros(100, np.float32)) == (-math.inf, -math.inf)
    assert mon.meter(-math.inf) == (0, mon.METER_WIDTH)
    assert mon.meter(0.0) == (mon.METER_WIDTH, 0)
    assert mon.meter(-30.0) == (mon.METER_WIDTH // 2, mon.METER_WIDTH // 2)
    assert mon.meter(-90.0) == (0, mon.METER_WIDTH)


def test_view_shows_level_speech_verdict_sparkline_and_latency():
    state = mon.MonitorState(
        source="test input", models={"aasist-l": mon.ModelView()}, min_voiced=0.3
    )
    t = np.arange(800) / 16000
    state.audio((0.1 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)[:, None], 16000)
    for i, s in enumerate([2.0, 1.5, -1.0, -3.0, -3.5]):
        state.event(score(i, s, "bonafide" if s > 0 else "spoof"))
    state.event(
        NoSpeechEvent(
            stream="s",
            model="aasist-l",
            window=5,
            start=2.0,
            end=6.0,
            early=False,
            voiced=0.1,
            min_voiced=0.3,
        )
    )
    console = Console(width=120, record=True, color_system=None, file=io.StringIO())
    console.print(mon.render(state))
    text = console.export_text()
    assert "level" in text and "-23.0 dBFS" in text and "█" in text
    assert "○ silent" in text and "10% voiced" in text  # the latest window was not speech
    assert "SPOOF" in text and "-3.50" in text
    assert mon.sparkline([2.0, 1.5, -1.0, -3.0, -3.5]) in text
    assert "124 ms" in text
    assert "5 scored · 1 no speech · 0 shed" in text


def test_summary_lines():
    summary = SummaryEvent(
        stream="abc",
        reason="end",
        duration=12.5,
        models={
            "aasist-l": ModelSummary(
                windows=10,
                scored=8,
                no_speech=2,
                mean=-2.5,
                min=-4.0,
                max=1.0,
                verdict="spoof",
                latency_ms={"p50": 110.0, "max": 250.0},
            )
        },
    )
    text = "\n".join(mon.summary_lines(summary))
    assert "00:12.5 of audio (end)" in text
    assert "aasist-l  SPOOF  mean score -2.50 (min -4.00, max +1.00)" in text
    assert "10 windows: 8 scored, 2 no speech, 0 shed, 0 failed; latency p50 110 ms" in text


def test_portaudio_errors_become_advice():
    sd = mic.load_sounddevice()
    dev = mic.InputDevice(3, "USB mic", "ALSA", 1, 48000)
    busy = sd.PortAudioError("Error opening InputStream: Device unavailable", -9985)
    assert "busy" in str(mic.explain(busy, dev, 48000, 1))
    host = sd.PortAudioError("Unanticipated host error", -9999, (0, -16, "Device or resource busy"))
    assert "busy" in str(mic.explain(host, dev, 48000, 1))
    rate = sd.PortAudioError("Error opening InputStream: Invalid sample rate", -9997)
    message = str(mic.explain(rate, dev, 11025, 1))
    assert "does not support 11025 Hz" in message and "native rate is 48000 Hz" in message
    channels = sd.PortAudioError("Invalid number of channels", -9998)
    assert "cannot record 2 channel(s)" in str(mic.explain(channels, dev, 48000, 2))


def test_missing_sounddevice_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "sounddevice", None)
    with pytest.raises(mic.DeviceError, match="pip install sounddevice"):
        mic.load_sounddevice()


def test_alert_command_gets_the_event(tmp_path, caplog):
    event = VerdictEvent(
        stream="s1",
        model="aasist-l",
        window=7,
        time=8.04,
        verdict="spoof",
        previous="bonafide",
        smoothed=-1.2,
    )

    async def go() -> mon.Alerts:
        alerts = mon.Alerts(f"cat > {tmp_path}/in.json; echo $VOICESCREEN_TIME > {tmp_path}/t")
        alerts.fire(event)
        failing = mon.Alerts("echo oops >&2; exit 4")
        failing.fire(event)
        await alerts.wait()
        await failing.wait()
        return failing

    failing = asyncio.run(go())
    assert json.loads((tmp_path / "in.json").read_text()) == event.to_dict()
    assert (tmp_path / "t").read_text().strip() == "8.040"
    assert failing.failed == 1 and "exited with status 4: oops" in caplog.text


def test_a_stuck_alert_command_is_ended(tmp_path):
    event = VerdictEvent(
        stream="s",
        model="m",
        window=0,
        time=1.0,
        verdict="spoof",
        previous="uncertain",
        smoothed=-1.0,
    )

    async def go() -> None:
        alerts = mon.Alerts(f"sleep 60; touch {tmp_path}/late")
        alerts.fire(event)
        await alerts.wait(timeout=0.5)

    asyncio.run(asyncio.wait_for(go(), 30))
    assert not (tmp_path / "late").exists()


def test_add_parsers_registers_monitor():
    parser = argparse.ArgumentParser(prog="voicescreen")
    monitor_command.add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        [
            "monitor",
            "--device",
            "pulse",
            "--jsonl",
            "--duration",
            "3",
            "--bundle",
            "a",
            "--bundle",
            "b",
            "--exit-on-spoof",
        ]
    )
    assert args.func is monitor_command.cmd_monitor
    assert (args.device, args.jsonl, args.duration, args.bundle) == ("pulse", True, 3.0, ["a", "b"])
    assert args.exit_on_spoof and args.alert_cmd is None and args.input is None
