"""What a session tells its consumer: one dataclass per event type, each with a JSON form.

The JSON form of every event is documented in ``docs/events.md``; keep the two in step. Times are
stream seconds (samples at 16 kHz / 16000) from the start of the stream; latencies are
milliseconds from the moment a window's last sample arrived to the moment its result was ready.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar


def _plain(value: Any) -> Any:
    """JSON-safe: non-finite floats become null, numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass(frozen=True, kw_only=True)
class Event:
    """Base of all events: ``type`` names the kind, ``stream`` the stream it belongs to."""

    type: ClassVar[str] = "event"
    stream: str

    def to_dict(self) -> dict[str, Any]:
        d = {"type": self.type}
        d.update({f.name: _plain(getattr(self, f.name)) for f in fields(self)})
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True, kw_only=True)
class WindowEvent(Event):
    """Fields shared by the events about one window of one model."""

    model: str
    window: int  # index among all windows of the stream for this model, early ones included
    start: float  # stream seconds of the audio the window holds
    end: float
    early: bool  # an early window (before the first full one), repeat-padded
    voiced: float | None  # voiced fraction of the window's VAD frames; None with the VAD off


@dataclass(frozen=True, kw_only=True)
class ScoreEvent(WindowEvent):
    """A scored window: raw and calibrated score, smoothed score and verdict, latency."""

    type: ClassVar[str] = "score"
    raw: float  # in the scoring bundle's convention
    calibrated: float  # scale * (raw - threshold): > 0 is bona fide
    smoothed: float  # mean calibrated score of the last K scored windows
    verdict: str  # bonafide / spoof / uncertain after smoothing with hysteresis
    latency_ms: float  # window complete -> result ready
    batch: int  # windows in the model call that scored it
    scored_by: str  # the bundle that produced the score (a cascade's cheap or expensive model)
    screen: float | None = None  # cascade: the cheap model's calibrated score, else None
    calibration: str = "pooled"  # the bundle's calibration applied: wideband, narrowband, pooled
    parts: dict[str, float] | None = None  # a fusion's members' raw scores, when asked for


@dataclass(frozen=True, kw_only=True)
class NoSpeechEvent(WindowEvent):
    """A window not scored because too little of it is speech."""

    type: ClassVar[str] = "no_speech"
    min_voiced: float


@dataclass(frozen=True, kw_only=True)
class OverloadedEvent(Event):
    """Windows a model could not score because its queue was full (they are lost, not late)."""

    type: ClassVar[str] = "overloaded"
    model: str
    windows: list[int]  # indices of the skipped windows, consecutive in stream order
    start: float  # start of the first skipped window, stream seconds
    end: float  # end of the last
    reason: str = "queue full"


@dataclass(frozen=True, kw_only=True)
class VerdictEvent(Event):
    """The smoothed verdict of a model changed."""

    type: ClassVar[str] = "verdict"
    model: str
    window: int  # the window whose score changed it
    time: float  # stream seconds: end of that window
    verdict: str
    previous: str
    smoothed: float


@dataclass(frozen=True, kw_only=True)
class ErrorEvent(Event):
    """Something went wrong. ``fatal``: the stream ends (malformed input); otherwise one window of
    one model could not be scored (``model`` and ``window`` say which) and the stream goes on."""

    type: ClassVar[str] = "error"
    code: str  # bad_input | model_error
    message: str
    fatal: bool = True
    model: str | None = None
    window: int | None = None


@dataclass(frozen=True, kw_only=True)
class ModelSummary:
    """A model's account of one stream; every window cut is exactly one of scored, no_speech,
    shed, failed or cancelled."""

    windows: int = 0
    scored: int = 0
    early: int = 0  # of the scored windows, how many were early ones
    no_speech: int = 0
    shed: int = 0
    failed: int = 0
    cancelled: int = 0
    min: float | None = None  # calibrated scores of the scored windows
    mean: float | None = None
    max: float | None = None
    verdict: str = "uncertain"  # the verdict rule (voicescreen.verdict) on the mean
    reason: str | None = None  # why uncertain whatever the scores: too little speech, none scored
    speech: float | None = None  # seconds of speech heard (VAD voiced; all audio with it off)
    latency_ms: dict[str, float | None] = field(default_factory=dict)  # p50, max
    channel: str | None = None  # the stream's kind of audio: wideband or narrowband
    calibration: str | None = None  # the calibration its scores got (None: none scored)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


@dataclass(frozen=True, kw_only=True)
class SummaryEvent(Event):
    """The last event of every stream."""

    type: ClassVar[str] = "summary"
    reason: str  # end | error | cancelled
    duration: float  # stream seconds received
    models: dict[str, ModelSummary]

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "stream": self.stream,
            "reason": self.reason,
            "duration": self.duration,
            "models": {k: v.to_dict() for k, v in self.models.items()},
        }


EVENT_TYPES: dict[str, type[Event]] = {
    cls.type: cls
    for cls in (
        ScoreEvent,
        NoSpeechEvent,
        OverloadedEvent,
        VerdictEvent,
        ErrorEvent,
        SummaryEvent,
    )
}


def event_from_dict(d: dict[str, Any]) -> Event:
    """The event a ``to_dict()``/JSON form describes (for consumers and tests)."""
    d = dict(d)
    kind = d.pop("type", None)
    if kind not in EVENT_TYPES:
        raise ValueError(f"unknown event type {kind!r}; known: {list(EVENT_TYPES)}")
    cls = EVENT_TYPES[kind]
    if cls is SummaryEvent:
        d["models"] = {k: ModelSummary(**v) for k, v in d["models"].items()}
    return cls(**d)
