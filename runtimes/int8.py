"""int8: a static int8 (QDQ) ONNX graph of a bundle's model, **lossy** and portable.

``quantize_onnx(onnx_bytes, calibration_windows) -> bytes``: per-channel int8 weights, uint8
activations calibrated on TRAIN-split windows, the sinc front-end left in float32. ONNX Runtime
runs the convolutions on AVX512-VNNI; logits move by ~0.1 (median), up to ~1.8. It is no
start-up option but a bundle of its own, whose card records the calibration and what the int8
graph costs on the dev split: ``voicescreen.train.quantize.quantize_bundle`` (``voicescreen
optimize --int8``) picks the windows and measures it. Which architectures it is written for is
their registry entry's ``quantizable``.

Tried and dropped: the first block's 1-channel convolutions also left in float32 (more accurate,
but the float <-> int8 layout changes ate the whole gain); quantising the sinc convolution too
(logits moved 3x more).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx


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
