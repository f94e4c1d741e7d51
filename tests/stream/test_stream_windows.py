import numpy as np
import pytest

from voicescreen.audio import SAMPLE_RATE, WINDOW_SAMPLES, pad_repeat, sliding_windows
from voicescreen.stream.windows import Windower, WindowOptions

HOP = SAMPLE_RATE


def _stream(x: np.ndarray, options: WindowOptions, rng: np.random.Generator, largest: int):
    w, out, i = Windower(options), [], 0
    while i < x.size:
        k = int(rng.integers(1, largest))
        out.extend(w.push(x[i : i + k]))
        i += k
    out.extend(w.finish())
    return out


LENGTHS = [
    1,
    300,
    SAMPLE_RATE,
    int(1.5 * SAMPLE_RATE),
    40000,
    WINDOW_SAMPLES - 1,
    WINDOW_SAMPLES,
    WINDOW_SAMPLES + 1,
    WINDOW_SAMPLES + HOP,
    WINDOW_SAMPLES + HOP + 1,
    WINDOW_SAMPLES + 5 * HOP + 777,
]


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("largest", [50, 3000, 70000])
def test_regular_windows_are_the_offline_windows(n, largest):
    rng = np.random.default_rng(n + largest)
    x = rng.standard_normal(n).astype(np.float32)
    got = _stream(x, WindowOptions(WINDOW_SAMPLES, 1.0, 1.5), rng, largest)
    assert [w.index for w in got] == list(range(len(got)))
    regular = [w for w in got if not w.early]
    want = list(sliding_windows(x, WINDOW_SAMPLES, HOP))
    assert [(w.start, w.end) for w in regular] == [(w.start, w.end) for w in want]
    for a, b in zip(regular, want, strict=True):
        np.testing.assert_array_equal(a.samples, b.samples)


def test_early_windows_come_at_min_audio_then_every_hop():
    x = np.random.default_rng(0).standard_normal(WINDOW_SAMPLES + 2 * HOP).astype(np.float32)
    got = _stream(x, WindowOptions(WINDOW_SAMPLES, 1.0, 1.5), np.random.default_rng(1), 800)
    early = [w for w in got if w.early]
    assert [(w.start, w.end) for w in early] == [(0, 24000), (0, 40000), (0, 56000)]
    assert all(w.index < 3 for w in early)  # before every regular window
    for w in early:
        np.testing.assert_array_equal(w.samples, pad_repeat(x[: w.end], WINDOW_SAMPLES))
    # no early windows when disabled, nor once a full window is already there
    assert not any(
        w.early
        for w in _stream(x, WindowOptions(WINDOW_SAMPLES, 1.0, None), np.random.default_rng(2), 800)
    )
    whole = Windower(WindowOptions(WINDOW_SAMPLES, 1.0, 1.5))
    assert not any(w.early for w in whole.push(x))


def test_other_window_and_hop_lengths():
    x = np.random.default_rng(3).standard_normal(100_000).astype(np.float32)
    options = WindowOptions(64000, 0.5, 1.0)
    got = [w for w in _stream(x, options, np.random.default_rng(4), 5000) if not w.early]
    want = list(sliding_windows(x, 64000, 8000))
    assert [(w.start, w.end) for w in got] == [(w.start, w.end) for w in want]


def test_memory_stays_bounded():
    w = Windower(WindowOptions(WINDOW_SAMPLES, 1.0, 1.5))
    chunk = np.zeros(1600, np.float32)
    for _ in range(3000):  # five minutes of audio
        list(w.push(chunk))
    assert w._buf.end - w._buf.first <= WINDOW_SAMPLES + 2 * HOP
    assert w._buf._data.size <= 4 * (WINDOW_SAMPLES + 4 * HOP)


def test_options():
    assert WindowOptions().resolve(64000).window_samples == 64000
    with pytest.raises(ValueError, match="does not match"):
        WindowOptions(64600).resolve(64000)
    with pytest.raises(ValueError, match="hop"):
        WindowOptions(hop_seconds=0)
    with pytest.raises(ValueError, match="resolve"):
        Windower(WindowOptions())
