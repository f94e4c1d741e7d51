"""The demo page in a real browser: Debian's headless Chromium, driven by Playwright, with a fake
microphone that plays a real clip of the corpus. Needs ``/usr/bin/chromium`` (apt: chromium) and
the ``playwright`` Python package (its bundled browsers are never downloaded or used).

Set ``VOICESCREEN_DOCS_SCREENSHOT=1`` to also write the screenshot used by docs/server.md.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from web_support import dev_clip, start_server, web_bundle

from voicescreen.audio import load_audio
from voicescreen.web.config import ServerConfig

CHROMIUM = Path("/usr/bin/chromium")
DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img" / "demo.png"
WAIT_MS = 120_000  # generous: two shared cores, a model call per window


@pytest.fixture(scope="module")
def server(export_aasist_l):
    server = start_server(ServerConfig(bundles=[web_bundle(export_aasist_l)]))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mic_clip(tmp_path_factory, data_dir) -> Path:
    """The fake microphone's input: a synthetic (Festival) clip of the dev split and a short
    pause, 48 kHz PCM16 WAV (Chromium loops it)."""
    x = load_audio(dev_clip(data_dir, "spoof", 5.5, 6.5), 48000)
    x = np.concatenate([x, np.zeros(24000, np.float32)])
    path = tmp_path_factory.mktemp("mic") / "mic.wav"
    sf.write(path, x, 48000, subtype="PCM_16")
    return path


@pytest.fixture()
def browser(tmp_path, mic_clip):
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            user_data_dir=str(tmp_path / "profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            viewport={"width": 1180, "height": 1000},
            device_scale_factor=1,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                "--disable-sync",
                "--use-fake-device-for-media-stream",
                "--use-fake-ui-for-media-stream",
                f"--use-file-for-fake-audio-capture={mic_clip}",
                "--autoplay-policy=no-user-gesture-required",
            ],
        )
        try:
            yield context
        finally:
            context.close()


def console_of(page) -> list[str]:
    lines: list[str] = []
    page.on("console", lambda m: lines.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: lines.append(f"pageerror: {e}"))
    return lines


def screen_a_voice(page, url: str, tmp_path: Path, name: str, windows: int) -> dict:
    """Open the page, press Start, wait for ``windows`` scored windows, screenshot, press Stop,
    wait for the summary; returns the page's state."""
    console = console_of(page)
    page.goto(url)
    page.wait_for_selector('body[data-state="ready"]', timeout=WAIT_MS)
    # the served model by name and architecture, on its chip and in the footer
    assert page.inner_text("#models").split() == ["aasist-l", "aasist-l"]
    assert page.inner_text("#footer-models") == "aasist-l (aasist-l)"
    hint = page.inner_text("#chart-hint")
    assert "hollow dots are the early windows" in hint and "dashed line" in hint
    page.click("#start")
    page.wait_for_function(f"window.voicescreen.windows >= {windows}", timeout=WAIT_MS, polling=200)
    verdict = page.get_attribute("#verdict", "data-verdict")
    assert verdict in ("bonafide", "spoof", "uncertain"), console
    assert page.inner_text("#verdict-label") != "Ready"
    assert page.inner_text("#stat-latency").endswith(("ms", " s"))
    assert int(page.inner_text("#stat-windows")) >= windows
    page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)
    assert page.inner_text("#verdict-score-label") == "smoothed score"
    page.click("#start")  # Stop
    page.wait_for_selector('body[data-state="done"]', timeout=WAIT_MS)
    assert page.inner_text("#verdict-score-label") == "mean score"  # the summary's, not smoothed
    # every score on the chart's scale (it grows with them, up to +-40)
    top = max(
        abs(p["score"]) for s in page.evaluate("window.voicescreen.series").values() for p in s
    )
    assert page.evaluate("window.voicescreen.yMax") >= min(top, 40)
    state = page.evaluate(
        "({transport: window.voicescreen.transport, summary: window.voicescreen.summary,"
        " events: window.voicescreen.events})"
    )
    assert page.is_hidden("#alert"), page.inner_text("#alert")
    assert not [c for c in console if c.startswith(("error", "pageerror"))], console
    return state


def check_session(state: dict, transport: str, encoding: str) -> None:
    assert state["transport"] == transport
    events = state["events"]
    assert events[0]["type"] == "started" and events[0]["format"]["encoding"] == encoding
    assert events[-1]["type"] == "summary" and events[-1]["reason"] == "end"
    model = state["summary"]["models"]["aasist-l"]
    assert model["scored"] >= 3 and model["verdict"] in ("bonafide", "spoof", "uncertain")
    scores = [e for e in events if e["type"] == "score"]
    assert [e["window"] for e in scores] == sorted(e["window"] for e in scores)


def test_the_page_screens_the_microphone_over_webrtc(server, browser, tmp_path):
    page = browser.new_page()
    state = screen_a_voice(page, server.url("/"), tmp_path, "demo-webrtc", windows=6)
    check_session(state, "webrtc", "pcm16")  # Opus decoded to PCM on the server
    assert state["events"][0]["format"]["sample_rate"] == 48000
    assert (tmp_path / "demo-webrtc.png").stat().st_size > 20_000
    if os.environ.get("VOICESCREEN_DOCS_SCREENSHOT"):
        DOCS_IMG.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp_path / "demo-webrtc.png", DOCS_IMG)


def test_the_page_falls_back_to_a_websocket_and_audio_worklet(server, browser, tmp_path):
    page = browser.new_page()
    state = screen_a_voice(page, server.url("/?transport=ws"), tmp_path, "demo-ws", windows=3)
    check_session(state, "websocket", "float32")


def test_a_denied_microphone_is_explained(server, browser):
    page = browser.new_page()
    page.add_init_script(
        "navigator.mediaDevices.getUserMedia = () =>"
        " Promise.reject(new DOMException('Permission denied', 'NotAllowedError'));"
    )
    page.goto(server.url("/"))
    page.wait_for_selector('body[data-state="ready"]', timeout=WAIT_MS)
    page.click("#start")
    page.wait_for_selector("#alert:not([hidden])", timeout=WAIT_MS)
    assert page.inner_text("#alert-title") == "Microphone access was denied"
    assert "Allow microphone access" in page.inner_text("#alert-text")
    assert page.get_attribute("body", "data-state") == "ready"  # can try again
    assert page.get_attribute("#verdict", "data-verdict") == "idle"


def test_an_unreachable_server_is_explained(server, browser):
    page = browser.new_page()
    page.route("**/healthz", lambda route: route.abort("connectionrefused"))
    page.goto(server.url("/"))
    page.wait_for_selector("#alert:not([hidden])", timeout=WAIT_MS)
    assert page.inner_text("#alert-title") == "Cannot reach the voicescreen server"
    assert page.inner_text("#status-text") == "Server unreachable"
    assert page.is_disabled("#start")
