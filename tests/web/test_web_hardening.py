"""Resource bombs and the limits that hold them, each against a real server with a good real-time
stream alongside that must finish untouched.

Memory is judged on a server of its own process (``voicescreen serve``): its peak resident size
(``VmHWM`` in ``/proc/PID/status``) is reset before each bomb (``clear_refs``), so the growth
measured is the bomb's alone. That server scores with the small LFCC-GMM bundle: AASIST-L's
ONNX Runtime takes (and gives back) ~130 MB per window of a batch, which would drown what is
measured here. Files that decode to hundreds of megabytes are FLACs of silence a few kilobytes
long, made here in blocks.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from web_support import dev_clip, run, start_server, web_bundle

from voicescreen.audio import MAX_FILE_RATE, AudioError, AudioTooLarge, read_audio
from voicescreen.web.client import converse
from voicescreen.web.config import ServerConfig

MB = 1 << 20
UPLOAD_LIMIT = 32 * MB
SAMPLE_LIMIT = 80_000_000  # decoded samples an upload may cost on the process server


@pytest.fixture(scope="module")
def bundle(export_aasist_l):
    return web_bundle(export_aasist_l)


@pytest.fixture(scope="module")
def speech(data_dir) -> bytes:
    """2.5 s of speech, PCM16 at 16 kHz."""
    x = read_audio(dev_clip(data_dir, "bonafide", 4.0, 4.3))[0][:40000]
    return np.round(x * 32767).astype("<i2").tobytes()


async def good_stream(ws_url: str, speech: bytes, stream_id: str = "good", **kwargs):
    frames = [speech[i : i + 3200] for i in range(0, len(speech), 3200)]  # 100 ms each
    outgoing = [({"type": "start", "stream_id": stream_id}, 0.0)]
    outgoing += [(f, len(f) / 32000) for f in frames] + [({"type": "stop"}, 0.0)]
    return await converse(ws_url, outgoing, **kwargs)


def check_good(result, stream_id: str = "good") -> None:
    assert result.close_code == 1000 and not result.errors, result.errors
    summary = result.messages[-1]
    assert summary["type"] == "summary" and summary["reason"] == "end"
    assert summary["stream"] == stream_id and summary["models"]
    assert all(m["scored"] >= 2 for m in summary["models"].values()), summary


def alongside(ws_url: str, speech: bytes, bad, **kwargs):
    """Run the coroutine ``bad`` while a good stream runs; return what ``bad`` returns."""

    async def main():
        good = asyncio.create_task(good_stream(ws_url, speech, **kwargs))
        await asyncio.sleep(0.3)
        out = await bad
        check_good(await good)
        return out

    return run(main())


# --- a server in its own process, for its memory ------------------------------------------------


class ProcessServer:
    def __init__(self, port: int, process: subprocess.Popen) -> None:
        self.port, self.process = port, process

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def ws_url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def memory(self) -> dict[str, int]:
        """VmRSS and VmHWM (the peak since the last reset), in bytes."""
        lines = Path(f"/proc/{self.process.pid}/status").read_text().splitlines()
        fields = dict(line.split(":", 1) for line in lines if ":" in line)
        return {k: int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM")}

    def reset_peak(self) -> int:
        """Reset VmHWM to the present resident size; returns that size."""
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")
        return self.memory()["VmRSS"]

    def growth(self, base: int) -> int:
        return self.memory()["VmHWM"] - base


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def process_server(gmm_bundle, tmp_path_factory):
    port = free_port()
    env = {**os.environ, "VOICESCREEN_HOME": str(tmp_path_factory.mktemp("home"))}
    command = [
        sys.executable, "-m", "voicescreen", "serve", "--port", str(port),
        "--bundle", str(gmm_bundle), "--fast-path", "none", "--no-reuse",
        "--max-upload-bytes", str(UPLOAD_LIMIT), "--max-upload-samples", str(SAMPLE_LIMIT),
    ]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    server = ProcessServer(port, process)
    deadline = time.monotonic() + 180
    while True:
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        try:
            httpx.get(server.url("/healthz"))
            break
        except httpx.TransportError:
            time.sleep(0.5)
    yield server
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=120)


def silent_flac(path: Path, rate: int, channels: int, seconds: float) -> Path:
    """``seconds`` of digital silence: a FLAC of a few kilobytes whatever it decodes to."""
    block = np.zeros((min(rate, 1 << 18), channels), np.int16)
    left = int(rate * seconds)
    with sf.SoundFile(path, "w", rate, channels, "PCM_16", format="FLAC") as f:
        while left > 0:
            f.write(block[:left])
            left -= block.shape[0]
    return path


def warm(server, file: Path | bytes, query: str = "") -> None:
    """Score ``file`` once: the upload scorer is made on first use, and the model's memory
    grows to the batch of windows a file gives."""
    r = post_file(server, file, query)
    assert r.status_code == 200, r.text


def post_file(server, path_or_bytes, query: str = "", **kwargs) -> httpx.Response:
    content = path_or_bytes if isinstance(path_or_bytes, bytes) else path_or_bytes.read_bytes()
    return httpx.post(server.url(f"/v1/score{query}"), content=content, timeout=300, **kwargs)


def test_decode_bombs_are_refused_by_their_header(process_server, speech, tmp_path):
    """A 113 KB FLAC of 20 s at 655,350 Hz x 8 channels (1.2 GB decoded) and one of 640 s at
    16 kHz x 8 channels (82 M samples, over the server's 80 M): refused from the header, before a
    sample is decoded, with clear errors; the server's memory does not move."""
    server = process_server
    rate_bomb = silent_flac(tmp_path / "rate.flac", 655350, 8, 20.0)
    size_bomb = silent_flac(tmp_path / "size.flac", 16000, 8, 640.0)
    assert rate_bomb.stat().st_size < 200_000 and size_bomb.stat().st_size < 200_000

    async def bombs():
        base = server.reset_peak()
        by_rate = await asyncio.to_thread(post_file, server, rate_bomb)
        by_size = await asyncio.to_thread(post_file, server, size_bomb, "?filename=size.flac")
        return by_rate, by_size, server.growth(base)

    by_rate, by_size, growth = alongside(server.ws_url("/v1/stream"), speech, bombs())
    assert by_rate.status_code == 422 and by_rate.json()["code"] == "bad_audio", by_rate.text
    assert (
        f"a sample rate of 655350 Hz; files are read at 4000-{MAX_FILE_RATE} Hz"
        in (by_rate.json()["detail"])
    )
    assert by_size.status_code == 413 and by_size.json()["code"] == "too_large", by_size.text
    detail = by_size.json()["detail"]
    assert detail.startswith("size.flac: 640 s of 8-channel audio at 16000 Hz decodes to")
    assert "81,920,000 samples; the limit is 80,000,000" in detail
    assert growth < 30 * MB, f"the server grew by {growth / MB:.0f} MB"


def test_a_large_file_within_the_bound_is_decoded_in_blocks(process_server, speech, tmp_path):
    """600 s at 16 kHz x 8 channels (76.8 M samples, within the bound): scored, and never held
    decoded whole (307 MB as float32): the server grows by the 16 kHz mono result (38 MB) and
    what scoring 600 s costs (the VAD and the channel measure, ~90 MB). The same 600 s in mono
    is scored first, so that the scorer is made before the peak is reset."""
    server = process_server
    warm(server, silent_flac(tmp_path / "mono.flac", 16000, 1, 600.0), "?hop=60")
    large = silent_flac(tmp_path / "large.flac", 16000, 8, 600.0)

    async def upload():
        base = server.reset_peak()
        r = await asyncio.to_thread(post_file, server, large, "?hop=60&filename=large.flac")
        return r, server.growth(base)

    r, growth = alongside(server.ws_url("/v1/stream"), speech, upload())
    assert r.status_code == 200, r.text
    assert r.json()["duration"] == pytest.approx(600.0)
    assert growth < 200 * MB, f"the server grew by {growth / MB:.0f} MB"  # whole: +345 MB


def padded_wav(payload_bytes: int) -> bytes:
    """One second of noise as a WAV whose ``JUNK`` chunk (which readers skip) makes the file
    ``payload_bytes`` long: a big upload that is cheap to score."""
    buffer = io.BytesIO()
    x = (np.random.default_rng(0).standard_normal(16000) * 0.1).astype(np.float32)
    sf.write(buffer, x, 16000, format="WAV", subtype="PCM_16")
    wav = buffer.getvalue()
    junk = b"JUNK" + struct.pack("<I", payload_bytes) + bytes(payload_bytes)
    wav = wav[:36] + junk + wav[36:]  # after the fmt chunk
    return wav[:4] + struct.pack("<I", len(wav) - 8) + wav[8:]


def test_parallel_uploads_are_spooled_not_held(process_server, speech):
    """Six 24 MB uploads at once (three raw bodies, three multipart): the server keeps them on
    disk while they wait for the one scoring slot, not in memory (it held all six: +144 MB)."""
    server = process_server
    body = padded_wav(24 * MB)
    assert sf.info(io.BytesIO(body)).frames == 16000
    warm(server, padded_wav(1024))

    async def uploads():
        base = server.reset_peak()
        async with httpx.AsyncClient(timeout=300) as client:
            raw = [
                client.post(server.url(f"/v1/score?filename=raw{i}.wav"), content=body)
                for i in range(3)
            ]
            multipart = [
                client.post(server.url("/v1/score"), files={"file": (f"form{i}.wav", body)})
                for i in range(3)
            ]
            responses = await asyncio.gather(*raw, *multipart)
        return responses, server.growth(base)

    responses, growth = alongside(server.ws_url("/v1/stream"), speech, uploads())
    assert [r.status_code for r in responses] == [200] * 6, [r.text for r in responses]
    assert sorted(r.json()["file"] for r in responses) == sorted(
        [f"raw{i}.wav" for i in range(3)] + [f"form{i}.wav" for i in range(3)]
    )
    assert growth < 48 * MB, f"the server grew by {growth / MB:.0f} MB"


def test_uploads_in_progress_are_bounded(bundle, speech):
    """Each upload in progress holds a spooled file: two uploads still arriving fill a queue of
    two, and a third gets 503 too_many_uploads at once; the two then finish (they were all
    taken, each holding its body)."""
    body = padded_wav(4 * MB)
    with start_server(ServerConfig(bundles=[bundle], max_score_queue=2)) as server:

        async def bad():
            release = asyncio.Event()

            async def slow_body():
                yield body[: 1 << 16]
                await release.wait()
                yield body[1 << 16 :]

            async with httpx.AsyncClient(timeout=120) as client:
                url = server.url("/v1/score")
                slow = [asyncio.create_task(client.post(url, content=slow_body())) for _ in "ab"]
                for _ in range(200):  # until both are arriving (10 s at most)
                    if getattr(server.state, "uploads", 0) >= 2:
                        break
                    await asyncio.sleep(0.05)
                third = await client.post(url, content=body)
                release.set()
                return third, await asyncio.gather(*slow)

        third, slow = alongside(server.ws_url("/v1/stream"), speech, bad())
    assert third.status_code == 503 and third.json() == {
        "detail": "2 uploads are already in progress (the limit); try again later",
        "code": "too_many_uploads",
    }
    assert [r.status_code for r in slow] == [200, 200], [r.text for r in slow]


def test_read_audio_refuses_by_the_header(tmp_path):
    """``voicescreen score`` reads files as the server does: an absurd rate or a decoded size
    over the bound is refused before decoding, and a file is the same read in blocks."""
    with pytest.raises(AudioError, match="a sample rate of 655350 Hz"):
        read_audio(silent_flac(tmp_path / "rate.flac", 655350, 1, 0.1))
    with pytest.raises(AudioError, match="a sample rate of 2000 Hz"):
        read_audio(silent_flac(tmp_path / "low.flac", 2000, 1, 1.0))
    path = silent_flac(tmp_path / "eight.flac", 16000, 8, 1.0)
    with pytest.raises(AudioTooLarge, match="decodes to 128,000 samples; the limit is 127,999"):
        read_audio(path, max_samples=127_999)
    assert read_audio(path, max_samples=128_000)[0].shape == (16000,)
    x = (np.random.default_rng(1).standard_normal((3 * 44100 + 7, 3)) * 0.1).astype(np.float32)
    sf.write(tmp_path / "noise.wav", x, 44100, subtype="FLOAT")
    from voicescreen.audio import resample, to_mono

    got, rate = read_audio(tmp_path / "noise.wav")
    assert rate == 44100 and np.array_equal(got, resample(to_mono(x), 44100))
