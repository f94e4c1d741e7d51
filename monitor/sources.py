"""Where the monitor's audio comes from: the sound card (``stream.mic.MicSource``) or an audio file
standing in for it (``FileSource``). Both hand out float32 chunks (frames, channels) at their own
rate, through ``async with`` and ``async for``; the session resamples them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from voicescreen.audio import MEASURE_SECONDS, AudioError, measure_channel, resample, to_mono
from voicescreen.stream import mic
from voicescreen.stream.mic import BLOCK_SECONDS


class Source(Protocol):
    """What the monitor reads: float32 chunks (frames, channels) at ``rate``, via ``async with``
    and ``async for``. ``realtime`` sources pace themselves; others are read as fast as the model
    keeps up."""

    rate: int
    channels: int | None
    realtime: bool
    label: str
    lost: bool  # the input stopped by itself before its end (a device that went away)
    overflows: int  # gaps: audio the device dropped
    dropped: int  # gaps: audio dropped because the monitor fell behind

    async def __aenter__(self) -> Source: ...
    async def __aexit__(self, *exc: object) -> None: ...
    def __aiter__(self) -> AsyncIterator[np.ndarray]: ...


class FileSource:
    """An audio file standing in for a device: chunks of ``BLOCK_SECONDS`` at the file's own rate
    and channels, at real-time pace unless ``realtime`` is False."""

    def __init__(self, path: str | Path, realtime: bool = True) -> None:
        import soundfile as sf

        self.path = Path(path)
        try:
            info = sf.info(str(self.path))
        except (sf.LibsndfileError, RuntimeError, OSError) as e:
            raise AudioError(f"{self.path}: cannot read audio ({e})") from e
        if info.frames == 0:
            raise AudioError(f"{self.path}: no audio samples")
        self.rate = int(info.samplerate)
        self.channels: int | None = int(info.channels)
        self.realtime = realtime
        self.label = f"file {self.path.name}, {self.rate} Hz, {self.channels} ch"
        self.channel = self._measure_channel(sf)
        self.overflows = self.dropped = 0
        self.lost = False
        self._file: Any = None

    def _measure_channel(self, sf: Any) -> str:
        """The file's kind of audio, measured as ``voicescreen score`` measures a file (its
        rate, and its bandwidth over the first ``MEASURE_SECONDS``), so that both calibrate it
        alike."""
        frames = int(MEASURE_SECONDS * self.rate)
        x = sf.read(str(self.path), frames=frames, dtype="float32", always_2d=True)[0]
        return measure_channel(resample(to_mono(x), self.rate), self.rate)

    async def __aenter__(self) -> FileSource:
        import soundfile as sf

        self._file = sf.SoundFile(str(self.path))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()

    async def __aiter__(self) -> AsyncIterator[np.ndarray]:
        loop = asyncio.get_running_loop()
        block = max(1, int(round(BLOCK_SECONDS * self.rate)))
        start, sent = loop.time(), 0
        while True:
            chunk = self._file.read(block, dtype="float32", always_2d=True)
            if not len(chunk):
                return
            if self.realtime:  # hand each chunk over when a device would have
                await asyncio.sleep(max(0.0, start + (sent + len(chunk)) / self.rate - loop.time()))
            sent += len(chunk)
            yield chunk


def open_mic(device: str | int | None = None, rate: int | None = None) -> mic.MicSource:
    """The input device named by ``device`` (PortAudio index or name, a PulseAudio source, a
    unique part of one; None: the system's default), recording at ``rate`` (None: its native
    rate), checked at once: a busy device or an unsupported rate fails here, before the model
    loads. Raises ``DeviceError``."""
    source = mic.MicSource(mic.find_device(device), rate=rate)
    source.check()
    return source
