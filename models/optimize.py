"""Fast AASIST inference on CPU: an exact ONNX graph, an int8 ONNX graph, a bfloat16 PyTorch path.

What limits it (``scripts/bench_aasist.py`` measures it; numbers in docs/benchmarks.md): a
64600-sample window costs about 9.6 GMAC, 94 % of it in the residual encoder's (2, 3)
convolutions (the first block's 32 -> 32 conv on a 24 x 21490 map alone ~3 GMAC). ONNX Runtime
(CPU provider, level ALL) runs them in its blocked NCHWc layout close to the fp32 FMA peak, so on
2 Zen 4 cores the convolutions alone take ~0.1 s a window: fp32 cannot reach 10 windows/s there.
On top of that it spends ~13 % on NCHWc <-> NCHW reorders, because its blocked layout lets only
Relu, Sigmoid and Tanh through and every SELU sits between two convolutions, and ~17 % on the
SELUs themselves (evaluated with a slow exponential).

Three paths, all keeping the I/O contract (``waveform`` (batch, samples) float32 in; ``logits``
(batch, 2) and ``score`` (batch,) out, any batch size):

- ``optimize_onnx(onnx_bytes) -> bytes`` — **exact** (bit-identical outputs here). It takes
  ONNX Runtime's own offline optimisation on this machine (BatchNorm folding, NCHWc convolutions
  with the residual Add fused in) and rewires every SELU to read and write the blocked tensors
  directly — SELU is elementwise, so the layout does not change its result — which removes the
  reorder pairs. The result holds weights pre-packed for this CPU's NCHWc block size and uses
  ONNX Runtime's internal ``com.microsoft.nchwc`` operators: build it where it runs (at start-up,
  about a second), run it with the CPU provider of the same onnxruntime, never ship it in a
  bundle. ``OnnxRuntime`` runs it unchanged. 10-18 % faster than the plain graph.
- ``quantize_onnx(onnx_bytes, train_windows) -> bytes`` — **lossy**, a standard (portable) ONNX
  graph: static int8 QDQ, per-channel int8 weights, uint8 activations calibrated on TRAIN-split
  windows, the sinc front-end left in float32. ONNX Runtime runs the convolutions on
  AVX512-VNNI: ~1.6x the plain graph; logits move by ~0.1 (median), up to ~1.8.
- ``compile_bf16(model)`` (``BF16AASIST``) — **lossy**, for PyTorch (``TorchRuntime``). The
  front-end and the graph-attention head stay in float32 (the 129-tap sinc filterbank applied by
  FFT, ~3x fewer operations than the direct convolution); the residual encoder runs in bfloat16
  (BatchNorm folded in float64 first) on oneDNN's AVX512-BF16 kernels, twice the fp32 FMA rate;
  inductor (with freezing) fuses the SELU / add / max-pool work around them, and windows go one
  by one, which keeps the first block's activations in cache. About 2x the plain ONNX graph;
  logits move by ~0.01 (median), up to ~0.2. Needs a C++ compiler on the machine; the first
  call compiles (about a minute on 2 cores, seconds once inductor's on-disk cache is warm).

``scripts/bench_aasist.py`` states the dev-split EER of the plain model and of each lossy path.
How to use them: ``exact`` and ``bf16`` are start-up options of a runtime (``--fast-path`` of
``score``, ``serve`` and ``monitor``; ``voicescreen.models.runtime``); int8 makes a bundle of its
own, ``quantize_bundle`` (``voicescreen optimize --int8``), whose card records the calibration and
what the int8 graph costs on the dev split.
Tried and dropped: int8 with the first block's 1-channel convolutions also left in float32 (more
accurate, but the float <-> int8 layout changes ate the whole gain); quantising the sinc
convolution too (logits moved 3x more); splitting the first blocks into time chunks to stay in
cache (no gain in either runtime); dynamic-shape compilation (over 15 minutes, then slower).
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    import onnx

    from voicescreen.models.aasist import AASIST, ResidualBlock
    from voicescreen.models.bundle import Bundle

log = logging.getLogger(__name__)

NCHWC_DOMAIN = "com.microsoft.nchwc"
# Elementwise ops whose result does not depend on the memory layout of their single input, and
# that map 0 to 0 (so the zero padding of a blocked tensor's channel tail stays zero).
LAYOUT_FREE_UNARY = frozenset({"Selu", "Elu", "Abs", "Neg", "Relu", "LeakyRelu", "Tanh"})
EXACT_TOLERANCE = 1e-4  # logits, absolute: the project's parity bound


# --- exact: ONNX Runtime graph -------------------------------------------------------------------


def ort_optimized(onnx_bytes: bytes, *, threads: int | None = None) -> onnx.ModelProto:
    """The graph ONNX Runtime's CPU provider builds from ``onnx_bytes`` at level ALL."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "optimized.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(path)
        options.log_severity_level = 3  # it warns that the NCHWc graph is machine-specific
        if threads:
            options.intra_op_num_threads = threads
        ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        return onnx.load(str(path))


def keep_unary_ops_blocked(model: onnx.ModelProto) -> int:
    """Rewire ``ReorderOutput -> op -> ReorderInput`` to run ``op`` on the blocked tensor.

    Only for single-input elementwise ops in ``LAYOUT_FREE_UNARY`` whose reordered input and
    output have no other use. Edits ``model`` in place; returns how many ops were rewired.
    """
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in graph.output}

    rename: dict[str, str] = {}
    dead = []
    for node in graph.node:
        if node.op_type not in LAYOUT_FREE_UNARY or node.domain not in ("", "ai.onnx"):
            continue
        before = producer.get(node.input[0])
        after = consumers.get(node.output[0], [])
        if (
            before is None
            or before.op_type != "ReorderOutput"
            or before.domain != NCHWC_DOMAIN
            or any(a.name == "channels_last" and a.i for a in before.attribute)
            or len(consumers.get(before.output[0], [])) != 1
            or before.output[0] in graph_outputs
            or len(after) != 1
            or after[0].op_type != "ReorderInput"
            or after[0].domain != NCHWC_DOMAIN
            or any(a.name == "channels_last" and a.i for a in after[0].attribute)
            or node.output[0] in graph_outputs
        ):
            continue
        node.input[0] = before.input[0]
        rename[after[0].output[0]] = node.output[0]
        dead += [before, after[0]]
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    for node in dead:
        graph.node.remove(node)
    # Shapes recorded for the rewired tensors describe the NCHW layout: drop them all.
    del graph.value_info[:]
    return len(dead) // 2


def optimize_onnx(
    onnx_bytes: bytes,
    *,
    check_input: np.ndarray | None = None,
    tolerance: float = EXACT_TOLERANCE,
    threads: int | None = None,
) -> bytes:
    """An exact, faster CPU graph of ``onnx_bytes`` for ONNX Runtime on this machine.

    The I/O contract is unchanged, so ``OnnxRuntime`` runs the result as it runs the plain
    model (level ALL re-applied to it changes nothing). With ``check_input`` (B, samples) — real
    speech where you have it — the result is run against the plain graph and a difference in
    any output above ``tolerance`` raises ``RuntimeError``.
    """
    import onnxruntime as ort

    model = ort_optimized(onnx_bytes, threads=threads)
    rewired = keep_unary_ops_blocked(model)
    meta = {
        "voicescreen.optimized": "optimize_onnx: onnxruntime level ALL + blocked SELU",
        "voicescreen.machine_specific": f"onnxruntime {ort.__version__} CPU, NCHWc weights",
        "voicescreen.rewired_ops": str(rewired),
    }
    for key, value in meta.items():
        entry = next((p for p in model.metadata_props if p.key == key), None)
        entry = entry or model.metadata_props.add()
        entry.key, entry.value = key, value
    out = model.SerializeToString()
    log.info("optimize_onnx: %d elementwise ops kept in the blocked layout", rewired)
    if check_input is not None:
        worst = max_output_diff(onnx_bytes, out, check_input, threads=threads)
        if not worst <= tolerance:
            raise RuntimeError(f"optimized graph differs from the plain one by {worst:.3g}")
    return out


def _session(onnx_bytes: bytes, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


def max_output_diff(
    a: bytes, b: bytes, windows: np.ndarray, *, threads: int | None = None
) -> float:
    """Largest absolute difference over all outputs of two ONNX graphs on ``windows``."""
    x = np.ascontiguousarray(windows, dtype=np.float32)
    out_a = _session(a, threads).run(None, {"waveform": x})
    out_b = _session(b, threads).run(None, {"waveform": x})
    return float(max(np.max(np.abs(p - q)) for p, q in zip(out_a, out_b, strict=True)))


# --- lossy: int8 ONNX graph ----------------------------------------------------------------------


def _front_end_convs(model: onnx.ModelProto) -> list[str]:
    """Names of the 1-D convolutions (AASIST's sinc filterbank on the raw waveform)."""
    from onnx import numpy_helper

    weights = {t.name: numpy_helper.to_array(t).ndim for t in model.graph.initializer}
    names = []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        kernel = next((list(a.ints) for a in node.attribute if a.name == "kernel_shape"), None)
        rank = len(kernel) + 2 if kernel else weights.get(node.input[1])
        if rank == 3:
            names.append(node.name)
    return names


def quantize_onnx(onnx_bytes: bytes, calibration_windows: np.ndarray) -> bytes:
    """A static int8 (QDQ) version of ``onnx_bytes`` for ONNX Runtime: **lossy**, portable.

    Every 2-D convolution gets per-channel int8 weights and uint8 activations whose ranges
    (min/max) come from running ``calibration_windows`` (N, samples) float32 through the graph:
    use windows of the TRAIN split, never dev or eval. The front-end's 1-D sinc convolution on
    the raw waveform stays float32 (quantising the waveform itself costs the most accuracy).
    The result is a standard ONNX graph with the same inputs and outputs; ONNX Runtime turns the
    QDQ pairs into integer convolutions (AVX512-VNNI here). Takes ~0.3 s per calibration window.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    windows = np.ascontiguousarray(calibration_windows, dtype=np.float32)
    if windows.ndim != 2 or len(windows) == 0:
        raise ValueError(f"expected (N>0, samples) calibration windows, got {windows.shape}")

    class Windows(CalibrationDataReader):
        def __init__(self) -> None:
            self.rows = iter(range(len(windows)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            i = next(self.rows, None)
            return None if i is None else {"waveform": windows[i : i + 1]}

    with tempfile.TemporaryDirectory() as tmp:
        src, pre, out = (Path(tmp) / f for f in ("model.onnx", "pre.onnx", "int8.onnx"))
        src.write_bytes(onnx_bytes)
        # Shape inference and ONNX Runtime's basic fusions (BatchNorm into Conv) first.
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(out),
            Windows(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["Conv"],
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=_front_end_convs(onnx.load(str(pre))),
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"CalibMovingAverage": False},
        )
        return out.read_bytes()


# --- an int8 bundle ------------------------------------------------------------------------------

CALIBRATION_CLIPS = 32  # TRAIN clips (half bona fide) whose first windows calibrate int8
QUANTIZABLE = ("aasist", "aasist-l")


def _first_windows(paths: list[Path], samples: int) -> np.ndarray:
    from voicescreen.audio import load_audio, pad_repeat

    return np.stack([pad_repeat(load_audio(p), samples) for p in paths])


def quantize_bundle(
    bundle: Bundle,
    data_root: str | Path,
    out: str | Path,
    *,
    name: str | None = None,
    calibration_clips: int = CALIBRATION_CLIPS,
    dev_clips: int | None = None,
    seed: int = 0,
    threads: int | None = None,
) -> Bundle:
    """Write an int8 copy of ``bundle`` at ``out``: ``model.onnx`` replaced by ``quantize_onnx``
    of it, calibrated on the first window of ``calibration_clips`` TRAIN-split clips of
    ``data_root`` (seeded, half bona fide); everything else as it was.

    The int8 and the fp32 graph then score the first window of each DEV clip (``dev_clips`` of
    them, seeded, or all); the card's ``quantized`` entry records the source, the calibration
    clips, the largest and median logit difference, the decisions that change at the card's
    threshold, and the dev EER of both. Only for AASIST and AASIST-L (what ``quantize_onnx`` is
    written for). Raises ``ValueError`` for another architecture or an int8 bundle.
    """
    import datetime as dt

    import onnxruntime as ort

    from voicescreen.models.bundle import ONNX_FILE, write_bundle
    from voicescreen.models.runtime import OnnxRuntime
    from voicescreen.train.data import balanced_subset, load_split
    from voicescreen.train.metrics import eer

    if bundle.architecture not in QUANTIZABLE:
        raise ValueError(
            f"{bundle.name}: int8 quantisation is written for AASIST and AASIST-L, not "
            f"{bundle.architecture}"
        )
    if bundle.quantized:
        raise ValueError(f"{bundle.name}: model.onnx is int8 already")
    out = Path(out)
    if out.resolve() == Path(bundle.source).resolve():
        raise ValueError(f"{out}: write the int8 bundle beside its source, not over it")
    samples = bundle.input_samples
    fp32 = bundle.files[ONNX_FILE]

    train = balanced_subset(load_split(data_root, "train"), calibration_clips, seed=seed)
    start = time.perf_counter()
    int8 = quantize_onnx(fp32, _first_windows([u.path for u in train], samples))
    log.info("%s: int8 graph calibrated on %d train windows", bundle.name, len(train))

    dev = balanced_subset(load_split(data_root, "dev"), dev_clips, seed=seed)
    dev.sort(key=lambda u: u.file)
    plain = OnnxRuntime(fp32, samples, name=bundle.name, providers="cpu", threads=threads)
    fast = OnnxRuntime(int8, samples, name=f"{bundle.name} int8", providers="cpu", threads=threads)
    logits = {"fp32": [], "int8": []}
    scores = {"fp32": [], "int8": []}
    for i in range(0, len(dev), 16):
        x = _first_windows([u.path for u in dev[i : i + 16]], samples)
        for key, runtime in (("fp32", plain), ("int8", fast)):
            lg, sc = runtime(x)
            logits[key].append(lg)
            scores[key].append(sc)
    lg32, lg8 = (np.concatenate(logits[k]) for k in ("fp32", "int8"))
    sc32, sc8 = (np.concatenate(scores[k]).astype(np.float64) for k in ("fp32", "int8"))
    diff = np.abs(lg8 - lg32)
    labels = np.array([u.is_bonafide for u in dev])
    threshold = bundle.score.threshold

    def dev_eer(s: np.ndarray) -> float | None:
        return eer(s[labels], s[~labels])[0] if labels.any() and (~labels).any() else None

    source = {
        "name": bundle.name,
        "path": str(bundle.source),
        "model_onnx_sha256": bundle.card["files"][ONNX_FILE]["sha256"],
        "export_check": bundle.card.get("export_check"),
    }
    quantized = {
        "kind": "int8",
        "changed": (
            "model.onnx is a static int8 (QDQ) quantisation of the source bundle's fp32 graph "
            "(quantize_onnx: per-channel int8 convolution weights, uint8 activations, the sinc "
            "front-end left in float32); it is lossy: see check. Unchanged: weights.safetensors "
            "(the source's fp32 weights: the torch backend refuses this bundle rather than run "
            "them), the threshold and scale, and metrics (measured on the fp32 model)."
        ),
        "source": source,
        "calibration": {
            "data_root": str(data_root),
            "split": "train",
            "clips": [u.file for u in train],
            "seed": seed,
            "windows": f"first {samples} samples of each clip, repeat-padded",
            "method": "MinMax, per-channel weights",
        },
        "check": {
            "data_root": str(data_root),
            "split": "dev",
            "clips": len(dev),
            "seed": seed if dev_clips is not None else None,
            "windows": "first window of each clip, as voicescreen eval scores them",
            "max_abs_logit_diff": float(diff.max()),
            "median_abs_logit_diff": float(np.median(diff)),
            "max_abs_score_diff": float(np.abs(sc8 - sc32).max()),
            "decisions_changed": int(np.sum((sc8 >= threshold) != (sc32 >= threshold))),
            "eer_fp32": dev_eer(sc32),
            "eer_int8": dev_eer(sc8),
        },
        "onnxruntime": ort.__version__,
        "seconds": round(time.perf_counter() - start, 1),
    }
    card = {
        **bundle.card,
        "name": name or f"{bundle.name}-int8",
        "provenance": {
            **bundle.card.get("provenance", {}),
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "quantized_by": "voicescreen optimize --int8",
        },
        "export_check": {
            "batch": len(dev),
            "max_abs_score_diff": quantized["check"]["max_abs_score_diff"],
            "against": "the fp32 source graph, on dev windows (quantized.check)",
        },
        "quantized": quantized,
    }
    files = {k: v for k, v in bundle.files.items() if k in bundle.card["files"]}
    files[ONNX_FILE] = int8
    made = write_bundle(out, card, files)
    log.info("wrote int8 bundle %s (%s)", out, quantized["check"])
    return made


# --- lossy: bfloat16 encoder in PyTorch ----------------------------------------------------------

SELU_ALPHA = 1.6732632423543772
SELU_SCALE = 1.0507009873554805


def selu_exp(x: Tensor) -> Tensor:
    """SELU evaluated in float32 with ``exp`` (not ``expm1``), result in ``x``'s dtype.

    Inductor's vectorised expm1 made the SELU after the first block's conv1 take a third of
    that block's time; exp is ~3x cheaper. Evaluating in float32 and rounding once matches
    what the compiled kernel does (eager bfloat16 would round after every op).
    """
    x32 = x.float()
    negative = (SELU_SCALE * SELU_ALPHA) * (torch.exp(torch.clamp(x32, max=0.0)) - 1.0)
    return torch.where(x32 > 0, SELU_SCALE * x32, negative).to(x.dtype)


def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Weights and bias of ``bn(conv(x))`` as one convolution, computed in float64."""
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    weight = conv.weight.double() * scale[:, None, None, None]
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    bias = (bias - bn.running_mean.double()) * scale + bn.bias.double()
    return weight, bias


class FoldedBlock(nn.Module):
    """A residual block in eval mode, BatchNorm folded into ``conv1``, weights in ``dtype``."""

    def __init__(self, block: ResidualBlock, dtype: torch.dtype) -> None:
        super().__init__()
        w1, b1 = _fold_bn(block.conv1, block.bn2)
        self.register_buffer("w1", w1.to(dtype))
        self.register_buffer("b1", b1.to(dtype))
        self.register_buffer("w2", block.conv2.weight.detach().to(dtype))
        self.register_buffer("b2", block.conv2.bias.detach().to(dtype))
        ds = block.conv_downsample
        self.downsample = ds is not None
        if ds is not None:
            self.register_buffer("wd", ds.weight.detach().to(dtype))
            self.register_buffer("bd", ds.bias.detach().to(dtype))

    def forward(self, x: Tensor) -> Tensor:
        out = selu_exp(F.conv2d(x, self.w1, self.b1, padding=(1, 1)))
        out = F.conv2d(out, self.w2, self.b2, padding=(0, 1))
        identity = F.conv2d(x, self.wd, self.bd, padding=(0, 1)) if self.downsample else x
        return F.max_pool2d(out + identity, (1, 3))


class FFTSincFrontEnd(nn.Module):
    """AASIST's front-end (sinc filterbank, |.|, 3x3 max-pool, BN, SELU) with the 129-tap
    filterbank applied by FFT in float32: ~0.2 GFLOP instead of 0.58 GMAC of direct convolution.
    Only the 3 * (n_filters // 3) filters and the output samples that the max-pool keeps are
    computed. Not bit-exact (different rounding): ~1e-6 relative."""

    def __init__(self, model: AASIST, input_samples: int) -> None:
        super().__init__()
        filters = model.conv_time.band_pass.double()  # (C, K)
        n_filters, taps = filters.shape
        keep = 3 * (n_filters // 3)
        self.out_len = 3 * ((input_samples - taps + 1) // 3)
        self.n_fft = 1 << (input_samples - 1).bit_length()  # >= input: circular wrap stays out
        # conv1d is a correlation: multiply by the conjugate spectrum of the filter.
        spectrum = torch.fft.rfft(filters[:keep], n=self.n_fft).conj()
        self.register_buffer("spectrum_re", spectrum.real.float())
        self.register_buffer("spectrum_im", spectrum.imag.float())
        self.bn = model.first_bn

    def forward(self, x: Tensor) -> Tensor:
        X = torch.view_as_real(torch.fft.rfft(x, n=self.n_fft)).unsqueeze(1)  # (B, 1, F, 2)
        xr, xi = X[..., 0], X[..., 1]
        sr, si = self.spectrum_re, self.spectrum_im
        # The complex product in real arithmetic, so that the compiler fuses it into one pass.
        product = torch.stack([xr * sr - xi * si, xr * si + xi * sr], dim=-1)  # (B, C', F, 2)
        y = torch.fft.irfft(torch.view_as_complex(product), n=self.n_fft)[..., : self.out_len]
        y = F.max_pool2d(y.abs().unsqueeze(1), (3, 3))
        return selu_exp(self.bn(y))


class BF16AASIST(nn.Module):
    """AASIST with its residual encoder in bfloat16 (or ``dtype``): (B, T) -> (B, 2) float32.

    The front-end and the graph-attention head run in float32 (the front-end's filterbank by FFT
    when ``fft_front_end``, else the model's own convolution); the encoder's weights are copied
    (folded), so later changes to ``model`` are not seen.
    """

    def __init__(
        self,
        model: AASIST,
        dtype: torch.dtype = torch.bfloat16,
        *,
        fft_front_end: bool = True,
    ) -> None:
        super().__init__()
        self.model = model.eval()
        self.dtype = dtype
        self.front = FFTSincFrontEnd(model, model.config.nb_samp) if fft_front_end else None
        self.blocks = nn.ModuleList(FoldedBlock(seq[0], dtype) for seq in model.encoder)
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        if self.front is not None and x.shape[-1] == self.model.config.nb_samp:
            h = self.front(x)
        else:
            h = self.model.front_end(x)
        h = h.to(self.dtype)
        for block in self.blocks:
            h = block(h)
        return self.model.readout(h.float().abs())[1]


class BF16Encoder(nn.Module):
    """``BF16AASIST``'s front end and residual encoder alone, for ``samples``-sample inputs:
    (B, samples) -> |encoder output| (B, channels, spectral nodes, frames) in float32, the
    features ``models.incremental`` assembles windows from. ``blocks``: the bf16 blocks of a
    ``BF16AASIST`` (shared: one copy of the weights for every input length)."""

    def __init__(self, model: AASIST, samples: int, blocks: nn.ModuleList) -> None:
        super().__init__()
        self.front = FFTSincFrontEnd(model, samples)
        self.blocks = blocks
        self.dtype = next(iter(blocks.buffers())).dtype
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        h = self.front(x).to(self.dtype)
        for block in self.blocks:
            h = block(h)
        return h.float().abs()


def compile_bf16_encoder(model: AASIST, samples: int, blocks: nn.ModuleList) -> nn.Module:
    """``BF16Encoder`` compiled like ``compile_bf16`` for one input length (the first call
    compiles: ~20 s on 2 cores for the first length, ~8 s for each further one when inductor's
    cache is cold)."""
    return _Frozen(BF16Encoder(model, samples, blocks)).eval()


class _Frozen(nn.Module):
    """Runs a ``torch.compile``d module window by window, with inductor's freezing on.

    One window at a time is the fastest here: a batch-1 window's activations (~33 MB in bf16 for
    the first block) mostly stay in the L3 cache, a batch of 16 streams ~0.5 GB through memory
    per layer (AASIST: ~14 windows/s one by one, ~9 at batch 4). It also means one compiled
    shape, (1, samples), serves every batch size. Freezing (constant weights: oneDNN weight
    pre-packing, fused post-ops) is read from inductor's global config when a call compiles;
    ``torch.compile(options={"freezing": True})`` does not reach that pass.
    """

    instances = 0  # made in this process

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        # Dynamo keeps at most ``recompile_limit`` (8) compiled variants per code object, and
        # every instance of one module class shares its ``forward``: past that it runs the
        # module eagerly, silently (bf16 eager is ~7x slower). Encoder reuse compiles 8 input
        # lengths per model, and a server may hold several models: make room for each one.
        from torch._dynamo import config as dynamo

        _Frozen.instances += 1
        room = _Frozen.instances + 8
        dynamo.recompile_limit = max(dynamo.recompile_limit, room)
        dynamo.accumulated_recompile_limit = max(dynamo.accumulated_recompile_limit, 4 * room)
        self.compiled = torch.compile(module, dynamic=False)

    def forward(self, x: Tensor) -> Tensor:
        from torch._inductor import config

        with config.patch(freezing=True):
            return torch.cat([self.compiled(x[i : i + 1].contiguous()) for i in range(len(x))])


def compile_bf16(model: AASIST) -> nn.Module:
    """``BF16AASIST(model)`` compiled by inductor with freezing (weights pre-packed for oneDNN).

    Call it under ``torch.inference_mode()`` (``TorchRuntime`` does). The first call compiles
    (about a minute on 2 cores; inductor keeps the code in its on-disk cache, so a restart
    recompiles in seconds); batches are run window by window through that one compiled shape.
    """
    return _Frozen(BF16AASIST(model)).eval()
