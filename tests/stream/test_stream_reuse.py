"""Encoder reuse across a stream's overlapping windows (runtimes/reuse.py): the scores equal
the whole windows' through the bundle's own ONNX model, whatever mix of windows arrives."""

import asyncio
import shutil
from pathlib import Path

import numpy as np
import pytest

from voicescreen.audio import SAMPLE_RATE, load_audio, pad_repeat, sliding_windows
from voicescreen.models.bundle import load_bundle
from voicescreen.runtimes import FastPathError, describe, open_runtime
from voicescreen.runtimes.reuse import IncrementalRuntime, Job, StreamFrames, aligned_hop
from voicescreen.stream import BatchOptions, InferenceWorker, Session, VadOptions, WindowOptions

DEFAULT = Path(__file__).resolve().parents[2] / "models" / "default"
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(DEFAULT)


@pytest.fixture(scope="module")
def reuse(bundle):
    return IncrementalRuntime(bundle)


@pytest.fixture(scope="module")
def whole(bundle):
    return open_runtime(bundle, "onnx")


@pytest.fixture(scope="module")
def stream(data_dir) -> np.ndarray:
    """About 25 s of dev speech: several clips of two speakers' kinds back to back."""
    rows = [
        r.split() for r in (data_dir / "protocols" / "VS.cm.dev.trl.txt").read_text().splitlines()
    ]
    names = [r[1] for r in rows if r[4] == "bonafide"][:3]
    names += [r[1] for r in rows if r[4] == "spoof"][:3]
    return np.concatenate([load_audio(data_dir / "flac" / f"{n}.flac") for n in names])


def windows_at(x: np.ndarray, hop: int, window: int = 64600) -> list[tuple[int, np.ndarray]]:
    return [(s, x[s : s + window]) for s in range(0, x.size - window + 1, hop)]


def test_geometry(reuse):
    g = reuse.geometry
    assert (g.stride, g.taps, g.frames, g.edge_samples) == (2187, 129, 29, 4502)
    assert g.frames_of(64600) == 29 and g.frames_of(64600 - 20 * 2187) == 9
    assert aligned_hop(1.0, 2187) * SAMPLE_RATE == 7 * 2187
    assert aligned_hop(0.01, 2187) * SAMPLE_RATE == 2187  # never below one stride


def test_one_window_at_a_time_equals_whole_windows(reuse, whole, stream):
    wins = windows_at(stream, 7 * reuse.stride)
    assert len(wins) >= 8
    frames = StreamFrames()
    before = reuse.stats.reused
    got = np.array([reuse([Job(w, s, frames)])[1][0] for s, w in wins])
    want = whole(np.stack([w for _, w in wins]))[1]
    assert np.abs(got - want).max() <= TOLERANCE
    assert reuse.stats.reused - before == len(wins) - 1  # all but the first were assembled
    assert len(frames.frames) <= 27  # frames before the last window are let go


def test_interleaved_streams_and_consecutive_windows_in_one_batch(reuse, whole, stream):
    hop = 7 * reuse.stride
    wins = windows_at(stream, hop)
    other = windows_at(stream[::-1].copy(), hop)
    a, b = StreamFrames(), StreamFrames()
    jobs = [Job(wins[0][1], 0, a)]
    jobs += [Job(w, s, a) for s, w in wins[1:4]]  # three windows of one stream in one call
    jobs += [Job(w, s, b) for s, w in other[:3]]
    jobs += [Job(wins[5][1], None, None), Job(wins[6][1], wins[6][0] + 1, a)]  # plain, off grid
    got = reuse(jobs)[1]
    want = whole(np.stack([j.samples for j in jobs]))[1]
    assert np.abs(got - want).max() <= TOLERANCE


def test_windows_after_a_gap_and_a_late_start(reuse, whole, stream):
    """Windows skipped (no speech, shed) leave frames missing: the next one computes more."""
    wins = windows_at(stream, 7 * reuse.stride)
    frames = StreamFrames()
    order = [2, 3, 5, 6, 7]  # starts mid-stream, skips 4
    got = np.array([reuse([Job(wins[k][1], wins[k][0], frames)])[1][0] for k in order])
    want = whole(np.stack([wins[k][1] for k in order]))[1]
    assert np.abs(got - want).max() <= TOLERANCE
    # a hop of whole strides other than 7 reuses too
    frames = StreamFrames()
    wins = windows_at(stream, 3 * reuse.stride)[:6]
    got = np.array([reuse([Job(w, s, frames)])[1][0] for s, w in wins])
    assert np.abs(got - whole(np.stack([w for _, w in wins]))[1]).max() <= TOLERANCE


def test_early_windows_reuse_and_leave_frames(reuse, whole, stream):
    """Early windows (the audio so far, repeat-padded) share the stream's frames where their
    receptive field holds only real audio, and the regular windows after them reuse those."""
    hop = 7 * reuse.stride
    frames = StreamFrames()
    jobs = [Job(pad_repeat(stream[:n], 64600), 0, frames, n) for n in (24000, 40000, 56000)]
    jobs += [Job(w, s, frames) for s, w in windows_at(stream, hop)[:3]]
    before = (reuse.stats.reused, reuse.stats.windows)
    got = np.array([reuse([job])[1][0] for job in jobs])
    want = whole(np.stack([j.samples for j in jobs]))[1]
    assert np.abs(got - want).max() <= TOLERANCE
    # the first early window is too short to lend frames; every later window reuses some
    assert reuse.stats.reused - before[0] == len(jobs) - 1
    assert reuse.stats.windows - before[1] == len(jobs)
    # one batch holding all of them gives the same
    frames.frames.clear()
    assert np.abs(reuse(jobs)[1] - want).max() <= TOLERANCE


def test_plain_batches_and_shapes(reuse, whole, stream):
    x = np.stack([w for _, w in windows_at(stream, 16000)[:3]])
    np.testing.assert_allclose(reuse(x)[1], whole(x)[1], atol=TOLERANCE)
    with pytest.raises(ValueError, match="64600"):
        reuse([Job(np.zeros(1000, np.float32), 0, StreamFrames())])


def test_reuse_refuses_what_it_cannot_do(bundle, gmm_bundle):
    with pytest.raises(FastPathError, match="aasist"):
        open_runtime(load_bundle(gmm_bundle), "onnx", reuse=True)
    with pytest.raises(FastPathError, match="onnx backend"):
        open_runtime(bundle, "torch", reuse=True)  # plain torch: only its bf16 fast path reuses


def test_session_with_reuse_matches_offline_windows(bundle, whole, stream):
    """A session over a reusing worker: windows on the stride grid, every score equal to the
    offline scorer's windows at the same hop, early and tail windows included."""
    x = stream[: 14 * SAMPLE_RATE]

    async def run() -> tuple[list, dict]:
        worker = InferenceWorker.from_bundle(bundle, reuse=True, options=BatchOptions(max_batch=4))
        async with worker:
            session = Session(worker, vad=VadOptions(enabled=False), window=WindowOptions())
            events = []
            for i in range(0, x.size, 3200):  # 200 ms chunks
                events += await session.feed(x[i : i + 3200])
            events += await session.close()
        return events, worker.runtime.stats.to_dict(64600)

    events, stats = asyncio.run(run())
    scores = [e for e in events if e.type == "score"]
    hop = 7 * 2187
    regular = [e for e in scores if not e.early]
    assert [round(e.start * SAMPLE_RATE) % hop for e in regular[:-1]] == [0] * (len(regular) - 1)
    offline = list(sliding_windows(x, 64600, hop))
    assert len(regular) == len(offline)
    want = whole(np.stack([w.samples for w in offline]))[1]
    got = np.array([e.raw for e in regular])
    assert np.abs(got - want).max() <= TOLERANCE
    early = [e for e in scores if e.early]
    assert early
    padded = [pad_repeat(x[: round(e.end * SAMPLE_RATE)], 64600) for e in early]
    assert np.abs(np.array([e.raw for e in early]) - whole(np.stack(padded))[1]).max() <= TOLERANCE
    assert stats["reused"] >= len(scores) - 3 and stats["encoder_share"] < 0.6


@pytest.mark.parametrize(
    "flags, env, path",
    [
        (["--reuse", "--fast-path", "none"], {}, "onnx on CPUExecutionProvider, encoder reuse"),
        # no flags on an AVX2 machine (this one made one by ATEN_CPU_CAPABILITY): reuse, exact
        ([], {"ATEN_CPU_CAPABILITY": "avx2"}, "fast path exact, encoder reuse (chosen: no AVX"),
    ],
    ids=["forced", "default-as-avx2"],
)
def test_monitor_reuse_gives_the_offline_scores(bundle, whole, stream, tmp_path, flags, env, path):
    """``voicescreen monitor`` reusing encoder frames on a file, as forced or as chosen: it says
    what it runs on, window starts are on the grid, and it gives the offline scores."""
    import json
    import os
    import subprocess
    import sys

    import soundfile as sf

    x = stream[: 12 * SAMPLE_RATE]
    wav = tmp_path / "call.wav"
    sf.write(wav, x, SAMPLE_RATE, subtype="FLOAT")
    args = ["--input", str(wav), "--fast", "--jsonl", "--min-voiced", "0", "--bundle", str(DEFAULT)]
    p = subprocess.run(
        [sys.executable, "-m", "voicescreen", "monitor", *args, *flags],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, **env},
    )
    assert p.returncode == 0, p.stderr
    assert path in p.stderr
    events = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    regular = [e for e in events if e["type"] == "score" and not e["early"]]
    offline = list(sliding_windows(x, 64600, 7 * 2187))
    assert [round(e["start"] * SAMPLE_RATE) for e in regular] == [w.start for w in offline]
    want = whole(np.stack([w.samples for w in offline]))[1]
    assert np.abs(np.array([e["raw"] for e in regular]) - want).max() <= TOLERANCE


# --- reuse on the bf16 fast path ------------------------------------------------------------------

BF16_REUSE_TOLERANCE = 0.03  # scores: bf16 chunks against bf16 whole windows (measured 0.009)
BF16_BOUND = 0.25  # scores: the bf16 path against the fp32 model (test_optimize.py)


@pytest.fixture(scope="module")
def reuse_bf16(bundle):  # for native_bf16 tests only: it compiles
    if shutil.which("g++") is None:
        pytest.skip("no C++ compiler for torch inductor")  # scripts/test.sh installs g++
    return open_runtime(bundle, "torch", fast_path="bf16", reuse=True)  # compiles 8 lengths


@pytest.mark.native_bf16
def test_bf16_reuse_scores_as_bf16_whole_windows(bundle, reuse_bf16, whole, stream):
    """Encoder reuse on the bf16 encoder: every chunk length was compiled at start-up; scores
    stay within bf16 rounding of the bf16 model's whole windows, and within the bf16 path's bound
    of the fp32 model, for regular, early and batched windows alike."""
    runtime = reuse_bf16
    assert describe(runtime) == {
        "backend": "torch",
        "providers": ["cpu"],
        "fast_path": "bf16",
        "reuse": True,
        "why": None,
    }
    assert sorted(runtime._encoders) == sorted(runtime.chunk_lengths())  # nothing compiles later
    assert {64600, 4502, 64600 - 20 * 2187} <= set(runtime.chunk_lengths())
    hop = 7 * runtime.stride
    frames = StreamFrames()
    jobs = [Job(pad_repeat(stream[:n], 64600), 0, frames, n) for n in (24000, 40000)]
    jobs += [Job(w, s, frames) for s, w in windows_at(stream, hop)[:8]]
    before = runtime.stats.reused
    got = np.array([runtime([job])[1][0] for job in jobs])
    assert runtime.stats.reused - before == len(jobs) - 1
    x = np.stack([j.samples for j in jobs])
    bf16_whole = open_runtime(bundle, "torch", fast_path="bf16")(x)[1]
    fp32 = whole(x)[1]
    assert np.abs(got - bf16_whole).max() <= BF16_REUSE_TOLERANCE
    assert 0 < np.abs(got - fp32).max() <= BF16_BOUND  # really the bf16 encoder
    frames.frames.clear()  # all of them in one call: the same
    assert np.abs(runtime(jobs)[1] - bf16_whole).max() <= BF16_REUSE_TOLERANCE


@pytest.mark.native_bf16
def test_a_second_bf16_reuse_runtime_is_compiled_too(bundle, reuse_bf16, stream):
    """Each runtime compiles 8 encoders of one module class: dynamo's default limit of 8
    compiled variants per code object would leave a second runtime (another model, a second
    server state) running eagerly, ~7x slower, without a word. Here a limit hit is an error."""
    import torch

    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        second = open_runtime(bundle, "torch", fast_path="bf16", reuse=True)
        frames = StreamFrames()
        jobs = [Job(w, s, frames) for s, w in windows_at(stream, 7 * second.stride)[:3]]
        got = second(jobs)[1]
    want = reuse_bf16([Job(j.samples) for j in jobs])[1]
    assert np.abs(got - want).max() <= BF16_REUSE_TOLERANCE


def test_bf16_reuse_needs_the_torch_backend(bundle):
    with pytest.raises(FastPathError, match="bf16"):
        open_runtime(bundle, "onnx", reuse=True, fast_path="bf16")  # bf16 is the torch backend's
