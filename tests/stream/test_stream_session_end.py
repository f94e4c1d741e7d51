"""The end of a stream cuts its last window even when every earlier window is already scored.

A live source (a sound card, a file read at real-time pace, a call-tap) hands its audio over
slowly, so by the time the stream ends the model has long scored every window cut so far. The
window only the end decides (the whole stream of a short call, repeat-padded, or the end-aligned
tail of a longer one) must still be cut, scored and counted before the summary. The model is the
shipped default bundle; the reference is the offline scorer (``voicescreen score``).
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from voicescreen.audio import SAMPLE_RATE, load_audio
from voicescreen.models.bundle import load_bundle
from voicescreen.models.store import resolve_bundle
from voicescreen.scoring import Scorer
from voicescreen.stream import AudioFormat, Event, Session, WindowOptions, load_scorers
from voicescreen.stream.windows import Windower

GUARD = 120  # seconds: far beyond what any of these takes on 2 busy cores
CHUNK = 800  # samples: 50 ms, as the monitor hands audio over
CLIPS = {"short": "VS_E_00801", "tail": "VS_T_00034"}  # 3.48 s (< one window); 5.65 s


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(resolve_bundle(None))


def windows_before_end(x: np.ndarray, input_samples: int) -> int:
    """How many windows the stream's audio cuts before its end (early and regular)."""
    windower = Windower(WindowOptions().resolve(input_samples))
    return sum(1 for i in range(0, x.size, CHUNK) for _ in windower.push(x[i : i + CHUNK]))


async def screen_settled(bundle, x: np.ndarray) -> list[Event]:
    """Push all of ``x``, wait until every window cut so far has its event, then end."""
    workers = load_scorers([bundle])
    try:
        session = Session(workers, fmt=AudioFormat("float32", SAMPLE_RATE, 1))
        for i in range(0, x.size, CHUNK):
            session.push(x[i : i + CHUNK])
        cut = windows_before_end(x, bundle.input_samples)
        events: list[Event] = []
        while sum(e.type in ("score", "no_speech") for e in events) < cut:
            await asyncio.sleep(0.01)
            events += session.ready()
        assert not [e for e in events if e.type == "summary"], events
        return events + await session.close()
    finally:
        for w in workers.values():
            await w.close()


@pytest.mark.parametrize("clip", CLIPS)
def test_the_last_window_is_cut_after_the_others_are_scored(bundle, data_dir, clip):
    path = data_dir / "flac" / f"{CLIPS[clip]}.flac"
    x = load_audio(path)
    events = asyncio.run(asyncio.wait_for(screen_settled(bundle, x), GUARD))

    offline = Scorer(bundle).score_file(path)
    regular = [e for e in events if e.type == "score" and not e.early]
    assert [(e.start, e.end) for e in regular] == [(w.start, w.end) for w in offline.windows]
    np.testing.assert_allclose(
        [e.raw for e in regular], [w.score for w in offline.windows], atol=1e-4, rtol=0
    )
    assert regular[-1].end == pytest.approx(x.size / SAMPLE_RATE)  # the end decided this one
    summary = events[-1]
    assert summary.type == "summary" and summary.reason == "end"
    scores = [e for e in events if e.type == "score"]
    s = summary.models[bundle.name]
    assert s.windows == s.scored == len(scores)
