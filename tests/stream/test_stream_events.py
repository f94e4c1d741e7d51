"""Events, their JSON form and its documentation; smoothing and hysteresis."""

import json
import re
from pathlib import Path

import pytest

from voicescreen.stream.events import (
    EVENT_TYPES,
    ErrorEvent,
    ModelSummary,
    ScoreEvent,
    SummaryEvent,
    event_from_dict,
)
from voicescreen.verdict import Smoother, SmoothingOptions, decide

DOC = Path(__file__).resolve().parents[2] / "docs" / "events.md"


def _documented_examples() -> dict[str, dict]:
    blocks = re.findall(r"```json\n(.*?)\n```", DOC.read_text(), flags=re.S)
    examples = [json.loads(b) for b in blocks]
    return {e["type"]: e for e in examples}


def test_every_event_type_is_documented_with_exactly_its_fields():
    examples = _documented_examples()
    assert set(examples) == set(EVENT_TYPES)
    for kind, example in examples.items():
        event = event_from_dict(example)  # fails on a missing or unknown field
        assert event.type == kind
        assert event.to_dict() == example, kind  # documented keys = emitted keys


def test_json_is_strict_and_round_trips():
    e = ScoreEvent(
        stream="s",
        model="m",
        window=3,
        start=1.0,
        end=5.0375,
        early=False,
        voiced=0.8,
        raw=float("nan"),
        calibrated=1.25,
        smoothed=0.5,
        verdict="bonafide",
        latency_ms=12.5,
        batch=4,
        scored_by="m",
    )
    d = json.loads(e.to_json())
    assert d["type"] == "score" and d["raw"] is None and d["screen"] is None  # no NaN in JSON
    summary = SummaryEvent(
        stream="s",
        reason="end",
        duration=3.0,
        models={
            "m": ModelSummary(windows=2, scored=2, mean=0.25, latency_ms={"p50": 1.0, "max": 2.0})
        },
    )
    assert event_from_dict(json.loads(summary.to_json())) == summary
    err = ErrorEvent(stream="s", code="bad_input", message="odd bytes")
    assert json.loads(err.to_json()) == {
        "type": "error",
        "stream": "s",
        "code": "bad_input",
        "message": "odd bytes",
        "fatal": True,
        "model": None,
        "window": None,
    }
    with pytest.raises(ValueError, match="unknown event type"):
        event_from_dict({"type": "nope"})


def test_hysteresis_holds_a_verdict_through_one_borderline_window():
    options = SmoothingOptions(windows=1, enter=1.0, leave=0.2)
    assert decide(0.9, "uncertain", options) == "uncertain"
    assert decide(1.0, "uncertain", options) == "bonafide"
    assert decide(0.5, "bonafide", options) == "bonafide"  # inside the band: holds
    assert decide(0.2, "bonafide", options) == "uncertain"
    assert decide(-1.0, "bonafide", options) == "spoof"
    assert decide(-0.5, "spoof", options) == "spoof"
    assert decide(-0.1, "spoof", options) == "uncertain"


def test_smoothing_averages_the_last_k_windows():
    s = Smoother(SmoothingOptions(windows=3, enter=0.5, leave=0.0))
    steps = [s.update(v, speech=5.0) for v in (2.0, -1.0, 0.5, -3.0, -3.0)]
    assert [round(m, 6) for m, _ in steps] == [2.0, 0.5, 0.5, -1.166667, -1.833333]
    assert [v for _, v in steps] == ["bonafide", "bonafide", "bonafide", "spoof", "spoof"]
    with pytest.raises(ValueError):
        SmoothingOptions(windows=0)
    with pytest.raises(ValueError):
        SmoothingOptions(enter=0.1, leave=0.5)
