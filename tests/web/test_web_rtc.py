"""POST /v1/rtc/offer with a real WebRTC peer (aiortc as the client, playing a clip as its
microphone): Opus in, events back on the data channel, the summary last."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import soundfile as sf
from web_support import dev_clip, parse_metrics, run, start_server, web_bundle

from voicescreen.web.config import ServerConfig


@pytest.fixture(scope="module")
def server(export_aasist_l):
    server = start_server(ServerConfig(bundles=[web_bundle(export_aasist_l)]))
    yield server
    server.stop()


async def rtc_stream(server, path, **offer_fields):
    """Play ``path`` into a peer connection to the server; stop when it ends; all messages."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.contrib.media import MediaPlayer

    player = MediaPlayer(str(path))
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    channel = pc.createDataChannel("events")
    messages: list[dict] = []
    summary = asyncio.Event()
    ended = asyncio.Event()

    @channel.on("message")
    def on_message(message: str) -> None:
        messages.append(json.loads(message))
        if messages[-1]["type"] == "summary":
            summary.set()

    player.audio.on("ended", ended.set)
    pc.addTrack(player.audio)
    await pc.setLocalDescription(await pc.createOffer())
    offer = {"sdp": pc.localDescription.sdp, "type": "offer", **offer_fields}
    async with httpx.AsyncClient(timeout=60) as client:
        response = await client.post(server.url("/v1/rtc/offer"), json=offer)
    assert response.status_code == 200, response.text
    answer = response.json()
    await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
    await ended.wait()  # the clip has played out, in real time
    channel.send(json.dumps({"type": "stop"}))
    await summary.wait()
    await pc.close()
    return answer, messages


def test_a_webrtc_stream_is_screened_and_summarised(server, data_dir):
    path = dev_clip(data_dir, "bonafide", 4.0, 4.3)
    answer, messages = run(rtc_stream(server, path, stream_id="rtc-1", models=["aasist-l"]))
    assert answer["type"] == "answer" and answer["stream"] == "rtc-1"
    assert "opus/48000" in answer["sdp"].lower()
    kinds = [m["type"] for m in messages]
    assert kinds[0] == "started" and kinds[-1] == "summary" and "error" not in kinds
    assert messages[0]["format"] == {"encoding": "pcm16", "sample_rate": 48000, "channels": 2}
    windows = [m for m in messages if m["type"] in ("score", "no_speech")]
    assert [m["window"] for m in windows] == list(range(len(windows)))
    summary = messages[-1]
    assert summary["stream"] == "rtc-1" and summary["reason"] == "end"
    assert summary["models"]["aasist-l"]["scored"] >= 3
    # Opus and the network add at most a few frames of delay to the audio that arrives
    assert summary["duration"] == pytest.approx(sf.info(str(path)).duration, abs=0.3)


def test_the_peer_connection_is_released(server):
    async def idle():
        while True:
            text = (await asyncio.to_thread(httpx.get, server.url("/metrics"))).text
            if parse_metrics(text)['voicescreen_streams_active{transport="rtc"}'] == 0:
                return parse_metrics(text)
            await asyncio.sleep(0.1)

    metrics = run(idle())
    assert metrics['voicescreen_streams_total{transport="rtc",reason="end"}'] == 1
    assert not server.state.rtc.streams
