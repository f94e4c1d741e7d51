"""The local sound card as a stream source: PortAudio input devices, through ``sounddevice``.

``MicSource`` records one input device at its native rate and hands out float32 chunks of shape
(frames, channels) as an async iterator, for a ``Session`` to resample and screen; it does no audio
processing of its own. Devices are what PortAudio lists (``input_devices()``), and where PortAudio
reaches PulseAudio (or PipeWire's pulse server) through ALSA's ``pulse`` device, also every
PulseAudio source by name (``pulse_sources()``), such as a sink's ``.monitor``: PortAudio records
it through ``pulse`` with ``PULSE_SOURCE`` naming the source.

Every way opening a device goes wrong ends as a ``DeviceError`` whose message tells the user what
to do: PortAudio or sounddevice missing, no input device, an unknown or ambiguous device name, a
busy device, an unsupported rate or channel count.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

BLOCK_SECONDS = 0.05  # audio per chunk handed to the session
QUEUE_SECONDS = 10.0  # audio buffered for a consumer that fell behind before chunks are dropped
STALL_SECONDS = 2.0  # no audio for this long: check that the device still runs
PULSE_DEVICE = "pulse"  # ALSA's PulseAudio device, as PortAudio lists it
PACTL_TIMEOUT = 5.0  # seconds

# PortAudio error codes (portaudio.h, PaErrorCode)
PA_INVALID_CHANNEL_COUNT = -9998
PA_INVALID_SAMPLE_RATE = -9997
PA_INVALID_DEVICE = -9996
PA_DEVICE_UNAVAILABLE = -9985
EBUSY = 16


class DeviceError(RuntimeError):
    """An input device that cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class InputDevice:
    """An input as the monitor opens it: a PortAudio device, or a PulseAudio source recorded
    through PortAudio's ``pulse`` device (``pulse_source`` names it, ``index`` is ``pulse``)."""

    index: int
    name: str
    hostapi: str
    channels: int  # most input channels the device offers
    default_rate: int  # Hz, the device's native rate
    default: bool = False  # the system's default input
    pulse_source: str | None = None

    @property
    def label(self) -> str:
        where = f"PulseAudio source via {PULSE_DEVICE!r}" if self.pulse_source else self.hostapi
        return f"{self.name!r} ({where}, device {self.index})"


def load_sounddevice() -> ModuleType:
    """``import sounddevice``, with what to install when it or PortAudio is missing."""
    try:
        import sounddevice
    except ImportError as e:
        raise DeviceError(
            f"the monitor needs the sounddevice package ({e}): pip install sounddevice"
        ) from e
    except OSError as e:  # sounddevice raises OSError("PortAudio library not found")
        raise DeviceError(
            f"PortAudio is not installed ({e}). Install it: Debian/Ubuntu "
            "`apt install libportaudio2`, Fedora `dnf install portaudio`, macOS "
            "`brew install portaudio`"
        ) from e
    return sounddevice


def input_devices() -> list[InputDevice]:
    """Every PortAudio device with input channels, the default input marked."""
    sd = load_sounddevice()
    hostapis = [h["name"] for h in sd.query_hostapis()]
    default = _default_input(sd)
    return [
        InputDevice(
            index=d["index"],
            name=d["name"],
            hostapi=hostapis[d["hostapi"]],
            channels=d["max_input_channels"],
            default_rate=int(round(d["default_samplerate"])),
            default=d["index"] == default,
        )
        for d in sd.query_devices()
        if d["max_input_channels"] > 0
    ]


def _default_input(sd: ModuleType) -> int:
    try:
        return int(sd.default.device[0])
    except (TypeError, ValueError, IndexError):
        return -1


def pulse_sources() -> list[str] | None:
    """Names of the PulseAudio sources (``pactl list short sources``); None when ``pactl`` is not
    installed or no PulseAudio server answers."""
    pactl = shutil.which("pactl")
    if pactl is None:
        return None
    try:
        p = subprocess.run(
            [pactl, "list", "short", "sources"],
            capture_output=True,
            text=True,
            timeout=PACTL_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        log.debug("pactl failed: %s", e)
        return None
    if p.returncode != 0:
        log.debug("pactl failed: %s", p.stderr.strip())
        return None
    return [cols[1] for line in p.stdout.splitlines() if len(cols := line.split("\t")) > 1]


def all_inputs() -> list[InputDevice]:
    """PortAudio's input devices, then the PulseAudio sources reachable through ``pulse``."""
    devices = input_devices()
    pulse = next((d for d in devices if d.name == PULSE_DEVICE), None)
    if pulse is None:
        return devices
    return devices + [
        InputDevice(
            index=pulse.index,
            name=source,
            hostapi="PulseAudio",
            channels=pulse.channels,
            default_rate=pulse.default_rate,
            pulse_source=source,
        )
        for source in pulse_sources() or []
    ]


def find_device(spec: str | int | None) -> InputDevice:
    """The input named by ``spec``: None for the default input, a PortAudio index, a device or
    PulseAudio source name, or a unique part of one (case-insensitive)."""
    devices = input_devices()
    if not devices:
        raise DeviceError(
            "no audio input device found: PortAudio lists no device with input channels. "
            "Is a microphone connected, or a sound server (PulseAudio, PipeWire) running?"
        )
    if spec is None:
        default = next((d for d in devices if d.default), None)
        if default is None:
            raise DeviceError(
                "there is no default input device; choose one with --device "
                "(see voicescreen monitor --list-devices)"
            )
        return default
    text = str(spec).strip()
    if text.lstrip("-").isdigit():
        found = next((d for d in devices if d.index == int(text)), None)
        if found is None:
            raise DeviceError(
                f"no input device with index {text}: inputs are {_names(devices)} "
                "(voicescreen monitor --list-devices)"
            )
        return found
    everything = all_inputs()
    for same in (lambda d: d.name == text, lambda d: d.name.lower() == text.lower()):
        exact = [d for d in everything if same(d)]
        if exact:
            return exact[0]
    partial = [d for d in everything if text.lower() in d.name.lower()]
    if len(partial) == 1:
        return partial[0]
    if partial:
        raise DeviceError(f"--device {text!r} matches several inputs: {_names(partial)}")
    raise DeviceError(
        f"no input device {text!r}: inputs are {_names(everything)} "
        "(voicescreen monitor --list-devices)"
    )


def _names(devices: list[InputDevice]) -> str:
    return ", ".join(f"{d.name!r}" for d in devices) or "none"


@contextlib.contextmanager
def _pulse_source(device: InputDevice) -> Iterator[None]:
    """While opening ``device``: point ALSA's pulse device at its PulseAudio source."""
    if device.pulse_source is None:
        yield
        return
    before = os.environ.get("PULSE_SOURCE")
    os.environ["PULSE_SOURCE"] = device.pulse_source
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PULSE_SOURCE", None)
        else:
            os.environ["PULSE_SOURCE"] = before


def explain(error: Exception, device: InputDevice, rate: int, channels: int) -> DeviceError:
    """A PortAudio error on opening ``device`` as a message for the user."""
    args = getattr(error, "args", ())
    code = args[1] if len(args) > 1 else None
    host = args[2] if len(args) > 2 else None
    text = str(args[0] if args else error)
    busy = code == PA_DEVICE_UNAVAILABLE or "busy" in text.lower()
    if isinstance(host, tuple) and len(host) == 3:
        busy = busy or host[1] in (EBUSY, -EBUSY) or "busy" in str(host[2]).lower()
        if host[2]:
            text = f"{text}: {host[2]}"
    if busy:
        return DeviceError(
            f"input device {device.label} is busy or unavailable ({text}): another program "
            "may hold it; close that program or choose another device (--list-devices)"
        )
    if code == PA_INVALID_SAMPLE_RATE:
        return DeviceError(
            f"input device {device.label} does not support {rate} Hz (its native rate is "
            f"{device.default_rate} Hz); leave out --rate or choose a rate it supports"
        )
    if code == PA_INVALID_CHANNEL_COUNT:
        return DeviceError(
            f"input device {device.label} cannot record {channels} channel(s) "
            f"(it offers {device.channels})"
        )
    if code == PA_INVALID_DEVICE:
        return DeviceError(f"input device {device.label} is gone or invalid ({text})")
    return DeviceError(f"cannot open input device {device.label}: {text}")


class MicSource:
    """Record ``device`` at its native rate (or ``rate``); iterate to get float32 chunks of shape
    (frames, channels), ``block_seconds`` each, in order. Use as ``async with``: entering opens and
    starts the stream (``DeviceError`` when it cannot), leaving stops it.

    ``overflows`` counts PortAudio's input-overflow reports (the device dropped audio);
    ``dropped`` counts chunks this source dropped because its consumer fell ``queue_seconds``
    behind. Either means a gap in the audio; both are reported, never hidden. Iteration ends only
    when the device stops delivering audio (unplugged, sound server gone): then ``lost`` is set.
    """

    def __init__(
        self,
        device: InputDevice,
        rate: int | None = None,
        channels: int | None = None,
        block_seconds: float = BLOCK_SECONDS,
        queue_seconds: float = QUEUE_SECONDS,
    ) -> None:
        self.device = device
        self.rate = int(rate or device.default_rate)
        if self.rate <= 0:
            raise DeviceError(f"impossible sample rate {self.rate}")
        self.channels = channels
        self.realtime = True  # a device delivers audio at its own pace
        self.blocksize = max(1, int(round(block_seconds * self.rate)))
        self.overflows = 0
        self.dropped = 0
        self.lost = False  # the device stopped delivering audio (unplugged, server gone)
        self._max_chunks = max(1, int(queue_seconds / block_seconds))
        self._queue: asyncio.Queue[np.ndarray | None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stream: Any = None
        self._closed = False

    @property
    def label(self) -> str:
        return f"{self.device.label}, {self.rate} Hz, {self.channels or '?'} ch"

    def _choose_channels(self, sd: ModuleType) -> int:
        """Mono where the device records mono, else the fewest channels it takes (downmixed by
        the session)."""
        if self.channels:
            return self.channels
        for n in sorted({1, min(2, self.device.channels), self.device.channels}):
            try:
                sd.check_input_settings(
                    device=self.device.index, channels=n, samplerate=self.rate, dtype="float32"
                )
                return n
            except sd.PortAudioError as e:
                if len(e.args) > 1 and e.args[1] == PA_INVALID_CHANNEL_COUNT:
                    continue
                raise explain(e, self.device, self.rate, n) from e
            except ValueError as e:
                raise DeviceError(f"input device {self.device.label}: {e}") from e
        raise DeviceError(f"input device {self.device.label} accepts no channel count tried")

    def check(self) -> None:
        """Ask PortAudio whether the device records at this rate (and how many channels), without
        opening it for long: ``DeviceError`` says what is wrong."""
        sd = load_sounddevice()
        with _pulse_source(self.device):
            self.channels = self._choose_channels(sd)

    async def __aenter__(self) -> MicSource:
        sd = load_sounddevice()
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        with _pulse_source(self.device):
            self.channels = self._choose_channels(sd)
            try:
                self._stream = sd.InputStream(
                    samplerate=self.rate,
                    blocksize=self.blocksize,
                    device=self.device.index,
                    channels=self.channels,
                    dtype="float32",
                    callback=self._callback,
                    finished_callback=self._finished,
                )
                self._stream.start()
            except sd.PortAudioError as e:
                self._close_stream()
                raise explain(e, self.device, self.rate, self.channels) from e
        log.info("recording %s", self.label)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closed = True
        self._close_stream()

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is None:
            return
        try:
            stream.stop()
            stream.close()
        except Exception as e:  # closing a device that vanished must not hide the real outcome
            log.warning("closing %s: %s", self.device.label, e)

    # PortAudio's thread -> the event loop
    def _callback(self, indata: np.ndarray, frames: int, time: Any, status: Any) -> None:
        if status.input_overflow:
            self.overflows += 1
        self._to_loop(indata.copy())

    def _finished(self) -> None:
        self._to_loop(None)

    def _to_loop(self, chunk: np.ndarray | None) -> None:
        if self._closed or self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed while PortAudio ran
            self._loop.call_soon_threadsafe(self._put, chunk)

    def _put(self, chunk: np.ndarray | None) -> None:
        if chunk is not None and self._queue.qsize() >= self._max_chunks:
            self.dropped += 1
            if self.dropped == 1:
                log.warning("%s: the screener fell behind; dropping audio", self.device.label)
            return
        self._queue.put_nowait(chunk)

    def __aiter__(self) -> MicSource:
        return self

    async def __anext__(self) -> np.ndarray:
        if self._queue is None:
            raise RuntimeError("enter the MicSource (async with) before iterating it")
        while True:
            try:  # (not wait_for: on 3.11 it can swallow a cancellation that races a result)
                async with asyncio.timeout(STALL_SECONDS):
                    chunk = await self._queue.get()
                break
            except TimeoutError:  # a quiet device is fine; a stream PortAudio stopped is over
                if self._stream is not None and self._stream.active:
                    continue
                chunk = None
                break
        if chunk is None:
            self.lost = True
            raise StopAsyncIteration
        return chunk
