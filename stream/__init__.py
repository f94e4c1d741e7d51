"""voicescreen.stream: live audio in, per-window scores and verdicts out.

One module per step, data flowing one way::

    codecs (decode) -> resample -> vad -> windows -> worker (batch, score) -> verdict -> events

``session.Session`` strings the steps together for one stream, transport-free: bytes or arrays in,
events out. ``worker.InferenceWorker`` is shared by all streams of one model; the one call it makes
to score a batch, a runtime, is the model in this process or replicas elsewhere (Ray Serve,
Triton): ``voicescreen.runtimes``.
"""

from voicescreen.audio import resample  # 16 kHz by default: what streams resample to
from voicescreen.resample import Resampler
from voicescreen.stream.codecs import AudioFormat, DecodeError, decode
from voicescreen.stream.events import (
    ErrorEvent,
    Event,
    ModelSummary,
    NoSpeechEvent,
    OverloadedEvent,
    ScoreEvent,
    SummaryEvent,
    VerdictEvent,
    event_from_dict,
)
from voicescreen.stream.loading import LoadError, load_bundles, load_scorers
from voicescreen.stream.session import Session
from voicescreen.stream.vad import VadOptions, VoiceGate
from voicescreen.stream.windows import StreamWindow, Windower, WindowOptions
from voicescreen.stream.worker import BatchOptions, Cascade, InferenceWorker, Result
from voicescreen.verdict import Smoother, SmoothingOptions

__all__ = [
    "AudioFormat",
    "BatchOptions",
    "Cascade",
    "DecodeError",
    "ErrorEvent",
    "Event",
    "InferenceWorker",
    "LoadError",
    "ModelSummary",
    "NoSpeechEvent",
    "OverloadedEvent",
    "Resampler",
    "Result",
    "ScoreEvent",
    "Session",
    "Smoother",
    "SmoothingOptions",
    "StreamWindow",
    "SummaryEvent",
    "VadOptions",
    "VerdictEvent",
    "VoiceGate",
    "WindowOptions",
    "Windower",
    "decode",
    "event_from_dict",
    "load_bundles",
    "load_scorers",
    "resample",
]
