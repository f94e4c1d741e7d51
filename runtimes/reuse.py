"""Encoder reuse across the overlapping windows of one stream (the architectures whose registry
entry has ``reuse``: AASIST and AASIST-L).

At a hop of about 1 s, three quarters of every 4 s window were already in the window before it.
AASIST's front end and encoder (sinc filterbank, 3x3 max-pool, six residual blocks that each pool
time by 3: all but a sliver of its arithmetic) move in steps of their total time stride,
``3 ** 7 = 2187`` samples (137 ms): encoder frame ``j`` of a window starting at sample ``s`` is a
function of the audio around ``[s + 2187 j, s + 2187 (j + 1))`` alone, except at the window's two
edges, where each layer's zero padding stands in for audio. Measured on the shipped weights, the
padding reaches exactly one frame in from each edge (frame 0 and frame 28 of a 64,600-sample
window); every frame between is the same, to float rounding, whether the window or a longer stretch
of the stream went through the encoder.

So when a stream's window starts are multiples of the stride (``aligned_hop``: 7 strides =
0.957 s instead of 1 s), a window is assembled from
- the *edge chunk*: its first ``2 * stride + taps - 1`` samples (4,502), whose frame 0 is the
  window's frame 0, edge padding included;
- the frames between that earlier windows of the stream computed with audio on both sides
  (``StreamFrames``, one per stream);
- the *tail chunk*: from one frame before the first frame not held to the window's end (20,860
  samples in the steady state); its first frame is only left context, its last has the window's
  own right edge, as in the whole window, and the frames between are kept for the next windows;
then the graph-attention head runs on the 29 assembled frames. That is 25,362 of 64,600 samples
through the encoder per window (39 %), and the score equals the whole window's to float rounding
(the tests compare it with the bundle's own ONNX model).

Tail chunks start on a grid of ``TAIL_GRID`` frames, so that only a few input lengths occur, each
run by an encoder graph specialised to it (~15 % faster than one with a dynamic length); a window
with fewer frames held (the first of a stream, one after a long gap of unscored windows) goes
through whole. Early windows (the audio so far, repeat-padded; they start at
0) take part: their frames whose receptive field lies within the real audio are the stream's, so
they reuse and leave frames like any other window. A stream's end-aligned tail window, off the
grid, goes through whole.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from voicescreen.audio import SAMPLE_RATE
from voicescreen.models.registry import ARCHITECTURES
from voicescreen.runtimes.local import check_batch, ort_session
from voicescreen.runtimes.plan import FastPathError, capabilities, check_fast_path

if TYPE_CHECKING:
    from torch import nn

    from voicescreen.models.bundle import Bundle

log = logging.getLogger(__name__)

TAIL_GRID = 4  # tail chunks start on multiples of this many frames
MAX_ENCODERS = 12  # encoder sessions specialised to one input length, kept at once


@dataclass(frozen=True)
class Geometry:
    """Where an AASIST encoder's output frames sit in its input."""

    stride: int  # input samples per output frame
    taps: int  # sinc filter length: the filterbank is a valid convolution
    input_samples: int  # the window
    frames: int  # output frames of one window

    @property
    def edge_samples(self) -> int:
        """Input whose frame 0 equals the window's frame 0 (its right context reaches 2 frames)."""
        return 2 * self.stride + self.taps - 1

    def last_clean(self, audio: int) -> int:
        """The last window frame whose receptive field lies within the first ``audio`` samples
        (frame j reaches ~2 frames and the filter length past its start)."""
        return min(self.frames - 2, (audio - self.taps + 1) // self.stride - 2)

    def frames_of(self, samples: int) -> int:
        """Output frames of ``samples`` input samples: the first pool, then one per block."""
        n = samples - self.taps + 1
        for _ in range(round(np.log(self.stride) / np.log(3))):
            n //= 3
        return n


def geometry(model: nn.Module, input_samples: int) -> Geometry:
    taps = int(model.conv_time.band_pass.shape[-1])
    stride = 3 * 3 ** len(model.encoder)  # the 3x3 pool after the filterbank, then 3 per block
    g = Geometry(stride, taps, input_samples, 0)
    return Geometry(stride, taps, input_samples, g.frames_of(input_samples))


def aligned_hop(hop_seconds: float, stride: int) -> float:
    """The hop nearest ``hop_seconds`` that is a whole number (>= 1) of ``stride`` samples."""
    strides = max(1, round(hop_seconds * SAMPLE_RATE / stride))
    return strides * stride / SAMPLE_RATE


class StreamFrames:
    """One stream's encoder frames computed with audio on both sides, by frame number (stream
    sample // stride). Touched only by the runtime, one call at a time."""

    def __init__(self) -> None:
        self.frames: dict[int, np.ndarray] = {}

    def forget_before(self, frame: int) -> None:
        for k in [k for k in self.frames if k < frame]:
            del self.frames[k]


@dataclass
class Job:
    """A window to score: its samples and, for reuse, where it starts in which stream."""

    samples: np.ndarray  # (input_samples,) float32
    start: int | None = None  # stream sample of samples[0]; None: not a plain stream window
    stream: StreamFrames | None = None
    # Samples of stream audio at the front of ``samples``; the rest repeats them (an early
    # window, or a stream shorter than a window). None: all of it is stream audio.
    audio: int | None = None


@dataclass
class ReuseStats:
    windows: int = 0
    reused: int = 0  # windows assembled from held frames
    encoder_samples: int = 0  # input samples run through the encoder
    frames_reused: int = 0

    def to_dict(self, input_samples: int) -> dict:
        """The counts, and ``encoder_share``: encoder input per window as a fraction of a whole
        window's (1.0: no reuse)."""
        share = self.encoder_samples / self.windows / input_samples if self.windows else None
        return {
            "windows": self.windows,
            "reused": self.reused,
            "frames_reused": self.frames_reused,
            "encoder_share": share,
        }


@dataclass
class _Plan:
    job: Job
    first: int | None = None  # frame number of the window's frame 0 (None: no reuse)
    new_from: int = 0  # first window frame the tail chunk supplies (0: the whole window)
    tail: tuple[int, int] = (0, 0)  # (chunk length, index in its group)
    edge: tuple[int, int] | None = None
    keep: list[int] = field(default_factory=list)  # window frames to hold for later windows


class IncrementalRuntime:
    """Scores windows like the bundle's model, reusing each stream's encoder frames.

    Called with a list of ``Job``s (what a worker hands it, ``takes_jobs``) or, like any runtime,
    with (B, input_samples) windows (no reuse). The head (29 frames -> logits, score) is an ONNX
    Runtime session; the encoder is one too (a graph per input length), or, with ``fast_path``
    ``bf16``, the bfloat16 encoder of ``compile_bf16`` compiled by torch inductor for each chunk
    length a window can need (``chunk_lengths``: all compiled at start-up, so that no stream
    waits for a compile; ~20 s for the first and ~8 s for each further length with a cold cache).
    Its scores are then those of the bf16 model on whole windows to bf16 rounding (lossy against
    the fp32 model as ``--fast-path bf16`` is, ~2x faster per window).
    """

    takes_jobs = True

    def __init__(
        self,
        bundle: Bundle,
        *,
        providers: Sequence[str] | str | None = None,
        threads: int | None = None,
        fast_path: str | None = None,
    ) -> None:
        if not capabilities(bundle).reuse:
            written_for = " and ".join(a.name for a in ARCHITECTURES.values() if a.reuse)
            raise FastPathError(
                f"{bundle.name}: encoder reuse is written for {written_for}, "
                f"not {bundle.architecture}"
            )
        if bundle.quantized:
            raise FastPathError(f"{bundle.name}: encoder reuse needs an fp32 bundle, not int8")
        if fast_path not in (None, "exact", "bf16"):
            raise FastPathError(f"encoder reuse does not run on fast path {fast_path}")
        self.backend = "torch" if fast_path == "bf16" else "onnx"
        if fast_path:
            check_fast_path(bundle, fast_path, self.backend)
        model = bundle.build_torch()
        self.name = bundle.name
        self.input_samples = bundle.input_samples
        self.geometry = geometry(model, self.input_samples)
        self.stride = self.geometry.stride
        encoder, head = split_onnx(model, bundle.score.convention, self.geometry)
        if fast_path == "exact":
            from voicescreen.models.bundle import default_check_input
            from voicescreen.runtimes.exact import optimize_onnx

            encoder = optimize_onnx(
                encoder, check_input=default_check_input(self.input_samples), threads=threads
            )
        if fast_path:
            providers = ["cpu"]
        self.fast_path = fast_path
        self.reuse = True
        self._encoder_graph, self._providers, self._threads = encoder, providers, threads
        self._encoders: dict[int, Callable[[np.ndarray], np.ndarray]] = {}
        self._keep = max(MAX_ENCODERS, len(self.chunk_lengths()) + 1)  # encoders kept at once
        self._head = ort_session(
            head, name=f"{self.name} head", providers=providers, threads=threads, spin=False
        )
        self._bf16 = _BF16Encoders(bundle, model, threads) if fast_path == "bf16" else None
        if self._bf16 is not None:
            self._encoders.update(self._bf16.compile(self.chunk_lengths()))
            self.providers = ["cpu"]
        else:
            self.providers = self._encoder_for(self.input_samples).session.get_providers()
        self.stats = ReuseStats()

    def chunk_lengths(self) -> list[int]:
        """Every encoder input length a window can need: the whole window, the edge chunk and a
        tail chunk from each frame of the grid."""
        g = self.geometry
        tails = [
            self.input_samples - (new_from - 1) * g.stride
            for new_from in range(1 + TAIL_GRID, g.frames - 1, TAIL_GRID)
        ]
        return [self.input_samples, g.edge_samples, *tails]

    def encode(self, chunks: np.ndarray) -> np.ndarray:
        """(B, samples) -> |encoder output| (B, channels, spectral nodes, frames)."""
        x = np.ascontiguousarray(chunks, dtype=np.float32)
        return self._encoder_for(x.shape[1])(x)

    def _encoder_for(self, samples: int) -> Callable[[np.ndarray], np.ndarray]:
        """The encoder specialised to ``samples``-sample inputs (an ONNX graph ~15 % faster than
        one with a dynamic length; the bf16 encoder compiled for it), made on first use; the few
        lengths used are kept."""
        encoder = self._encoders.pop(samples, None)
        if encoder is None and self._bf16 is not None:
            encoder = self._bf16.compile([samples])[samples]
        elif encoder is None:
            encoder = _OrtEncoder(
                ort_session(
                    self._encoder_graph,
                    name=f"{self.name} encoder ({samples} samples)",
                    providers=self._providers,
                    threads=self._threads,
                    dims={"samples": samples},
                    spin=False,
                )
            )
        self._encoders[samples] = encoder  # most recently used last
        while len(self._encoders) > self._keep:
            del self._encoders[next(iter(self._encoders))]
        return encoder

    def head(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, channels, nodes, frames) encoder output of whole windows -> (logits, score)."""
        x = np.ascontiguousarray(features, dtype=np.float32)
        logits, score = self._head.run(["logits", "score"], {"features": x})
        return logits, score

    def __call__(self, windows: np.ndarray | list[Job]) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(windows, np.ndarray):
            windows = [Job(w) for w in check_batch(windows, self.input_samples)]
        return self.head(self.features(windows))

    def features(self, jobs: list[Job]) -> np.ndarray:
        """The encoder output of each job's window, (B, channels, nodes, frames)."""
        g = self.geometry
        groups: dict[int, list[np.ndarray]] = {}

        def chunk(x: np.ndarray) -> tuple[int, int]:
            group = groups.setdefault(x.size, [])
            group.append(x)
            return x.size, len(group) - 1

        plans: list[_Plan] = []
        planned: dict[int, set[int]] = {}  # frames that earlier jobs of this call will hold
        for job in jobs:
            if job.samples.shape != (self.input_samples,):
                raise ValueError(
                    f"expected ({self.input_samples},) windows, got {job.samples.shape}"
                )
            plan = _Plan(job)
            plans.append(plan)
            if job.stream is None or job.start is None or job.start % g.stride:
                plan.tail = chunk(job.samples)
                continue
            plan.first = job.start // g.stride
            last = g.last_clean(self.input_samples if job.audio is None else job.audio)
            held = job.stream.frames.keys() | planned.setdefault(id(job.stream), set())
            new_from = next((j for j in range(1, last + 1) if plan.first + j not in held), last + 1)
            # Tail chunks start on a coarse grid of frames: a few lengths, a specialised graph each.
            plan.new_from = 1 + (new_from - 1) // TAIL_GRID * TAIL_GRID
            if plan.new_from <= 1:  # nothing to reuse: the whole window
                plan.new_from = 0
            else:
                plan.edge = chunk(job.samples[: g.edge_samples])
            start = max(0, plan.new_from - 1) * g.stride
            plan.tail = chunk(job.samples[start:])
            plan.keep = list(range(max(1, plan.new_from), last + 1))
            planned[id(job.stream)].update(plan.first + j for j in plan.keep)

        encoded = {n: self.encode(np.stack(xs)) for n, xs in groups.items()}
        channels, nodes = next(iter(encoded.values())).shape[1:3]
        out = np.empty((len(jobs), channels, nodes, g.frames), np.float32)
        for i, plan in enumerate(plans):
            tail = encoded[plan.tail[0]][plan.tail[1]]
            self.stats.windows += 1
            self.stats.encoder_samples += plan.tail[0]
            if plan.new_from == 0:
                out[i] = tail
            else:
                held = plan.job.stream.frames
                out[i, ..., 0] = encoded[plan.edge[0]][plan.edge[1]][..., 0]
                for j in range(1, plan.new_from):
                    out[i, ..., j] = held[plan.first + j]
                out[i, ..., plan.new_from :] = tail[..., 1:]
                self.stats.reused += 1
                self.stats.frames_reused += plan.new_from - 1
                self.stats.encoder_samples += plan.edge[0]
            if plan.first is not None:
                frames = plan.job.stream
                for j in plan.keep:
                    frames.frames[plan.first + j] = out[i, ..., j].copy()
                frames.forget_before(plan.first + 1)
        return out


class _OrtEncoder:
    """An encoder ONNX Runtime session as a function of (B, samples) float32 windows."""

    def __init__(self, session: Any) -> None:
        self.session = session

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(["features"], {"waveform": x})[0]


class _BF16Encoders:
    """The bf16 encoder (``runtimes.bf16.BF16Encoder``) compiled for given input lengths, one
    set of bf16 weights shared by all."""

    def __init__(self, bundle: Bundle, model: nn.Module, threads: int | None) -> None:
        import torch

        from voicescreen.runtimes.bf16 import BF16AASIST, check_compiler

        check_compiler(bundle)
        if threads:
            torch.set_num_threads(threads)
        self.bundle, self.model = bundle, model.eval()
        self.blocks = BF16AASIST(self.model).blocks

    def compile(self, lengths: Sequence[int]) -> dict[int, Callable[[np.ndarray], np.ndarray]]:
        """An encoder per length, each compiled now (one input through it)."""
        import torch

        from voicescreen.runtimes.bf16 import bf16_compile_failed, compile_bf16_encoder

        start, out = time.perf_counter(), {}
        for i, samples in enumerate(lengths, 1):
            log.info(  # each length takes seconds to minutes: say which one is compiling
                "%s: compiling the bf16 encoder for %d-sample inputs (%d of %d)",
                self.bundle.name,
                samples,
                i,
                len(lengths),
            )
            module = compile_bf16_encoder(self.model, samples, self.blocks)

            def run(x: np.ndarray, module: nn.Module = module) -> np.ndarray:
                with torch.inference_mode():
                    return module(torch.from_numpy(x)).numpy()

            try:
                with warnings.catch_warnings():  # while compiling: the FFT front end stays
                    warnings.filterwarnings(  # complex, outside inductor's kernels
                        "ignore", "Torchinductor does not support code generation"
                    )
                    run(np.zeros((1, samples), np.float32))
            except Exception as e:
                raise bf16_compile_failed(self.bundle, e) from e
            out[samples] = run
        log.info(
            "%s: bf16 encoder compiled for %d input lengths in %.0f s",
            self.bundle.name,
            len(out),
            time.perf_counter() - start,
        )
        return out


def split_onnx(model: nn.Module, convention: str, g: Geometry) -> tuple[bytes, bytes]:
    """An AASIST model as two ONNX graphs: encoder (B, T) waveform -> (B, C, N, F) features,
    with dynamic batch and length; head (B, C, N, frames) features -> logits, score."""
    import torch
    from torch import nn

    from voicescreen.models.bundle import score_from_logits, trace_onnx

    class Part(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

    class Encoder(Part):
        def forward(self, waveform: torch.Tensor) -> torch.Tensor:
            return self.model.encoder(self.model.front_end(waveform)).abs()

    class Head(Part):
        def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = self.model.readout(features)[1]
            return logits, score_from_logits(logits, convention)

    example = torch.zeros(2, g.input_samples)
    example[:, ::97] = 0.1
    encoder = trace_onnx(
        Encoder(),
        example,
        input_names=["waveform"],
        output_names=["features"],
        dynamic_axes={
            "waveform": {0: "batch", 1: "samples"},
            "features": {0: "batch", 3: "frames"},
        },
    )
    with torch.no_grad():
        features = Encoder().eval()(example)
    head = trace_onnx(
        Head(),
        features,
        input_names=["features"],
        output_names=["logits", "score"],
        dynamic_axes={"features": {0: "batch"}, "logits": {0: "batch"}, "score": {0: "batch"}},
    )
    return encoder, head
