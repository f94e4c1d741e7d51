"""The ``exact`` fast path: an ONNX graph rewritten for this CPU, bit-identical scores.

What limits AASIST on the CPU (``scripts/bench_aasist.py`` measures it; numbers in
docs/benchmarks.md): a 64600-sample window costs about 9.6 GMAC, 94 % of it in the residual
encoder's (2, 3) convolutions. ONNX Runtime (CPU provider, level ALL) runs them in its blocked
NCHWc layout close to the fp32 FMA peak, but spends ~13 % on NCHWc <-> NCHW reorders, because its
blocked layout lets only Relu, Sigmoid and Tanh through and every SELU sits between two
convolutions, and ~17 % on the SELUs themselves.

``optimize_onnx(onnx_bytes) -> bytes`` takes ONNX Runtime's own offline optimisation on this
machine (BatchNorm folding, NCHWc convolutions with the residual Add fused in) and rewires every
SELU to read and write the blocked tensors directly — SELU is elementwise, so the layout does not
change its result — which removes the reorder pairs. The I/O contract is kept (``waveform``
(batch, samples) float32 in; ``logits`` (batch, 2) and ``score`` (batch,) out, any batch size).
The result holds weights pre-packed for this CPU's NCHWc block size and uses ONNX Runtime's
internal ``com.microsoft.nchwc`` operators: build it where it runs (at start-up, about a second),
run it with the CPU provider of the same onnxruntime, never ship it in a bundle. ``OnnxRuntime``
runs it unchanged (``exact_runtime``).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from voicescreen.runtimes.local import OnnxRuntime, has_nvidia_gpu, provider_names
from voicescreen.runtimes.plan import FAST_PATHS, FastPathError, check_fast_path

if TYPE_CHECKING:
    import onnx

    from voicescreen.models.bundle import Bundle

log = logging.getLogger(__name__)

NCHWC_DOMAIN = "com.microsoft.nchwc"
# Elementwise ops whose result does not depend on the memory layout of their single input, and
# that map 0 to 0 (so the zero padding of a blocked tensor's channel tail stays zero).
LAYOUT_FREE_UNARY = frozenset({"Selu", "Elu", "Abs", "Neg", "Relu", "LeakyRelu", "Tanh"})
EXACT_TOLERANCE = 1e-4  # logits, absolute: the project's parity bound


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


def exact_runtime(
    bundle: Bundle,
    *,
    providers: Sequence[str] | str | None = None,
    threads: int | None = None,
) -> OnnxRuntime:
    """``bundle``'s graph rewritten by ``optimize_onnx`` for this CPU, checked against the plain
    graph on the export check signal, in an ``OnnxRuntime`` on the CPU provider."""
    from voicescreen.models.bundle import ONNX_FILE, default_check_input

    check_fast_path(bundle, "exact", "onnx")
    others = [p for p in provider_names(providers) if p not in ("auto", "cpu")]
    if others:
        raise FastPathError(
            f"--fast-path exact builds a graph for ONNX Runtime's CPU provider; it cannot run "
            f"on {', '.join(others)}: use --providers cpu (or auto), or leave out --fast-path"
        )
    if has_nvidia_gpu():
        log.info("%s: --fast-path exact runs on the CPU, not the GPU", bundle.name)
    start = time.perf_counter()
    graph = optimize_onnx(
        bundle.files[ONNX_FILE],
        check_input=default_check_input(bundle.input_samples),
        threads=threads,
    )
    runtime = OnnxRuntime(
        graph, bundle.input_samples, name=bundle.name, providers=["cpu"], threads=threads
    )
    runtime.fast_path = "exact"
    log.info(
        "%s: fast path exact: %s, built in %.1f s",
        bundle.name,
        FAST_PATHS["exact"],
        time.perf_counter() - start,
    )
    return runtime
