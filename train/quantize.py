"""An int8 bundle: ``voicescreen.runtimes.int8``'s graph, calibrated on TRAIN clips and measured
on DEV clips (``voicescreen optimize --int8``).

The graph transformation is the runtimes' (``quantize_onnx``); what needs a corpus is here: which
windows calibrate it, and what it costs on the dev split, written into the int8 bundle's card.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from pathlib import Path

import numpy as np

from voicescreen.audio import load_audio, pad_repeat
from voicescreen.models.bundle import ONNX_FILE, Bundle, write_bundle
from voicescreen.models.registry import get_architecture
from voicescreen.runtimes.int8 import quantize_onnx
from voicescreen.runtimes.local import OnnxRuntime
from voicescreen.train.data import balanced_subset, load_split
from voicescreen.train.metrics import eer

log = logging.getLogger(__name__)

CALIBRATION_CLIPS = 32  # TRAIN clips (half bona fide) whose first windows calibrate int8


def _first_windows(paths: list[Path], samples: int) -> np.ndarray:
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
    threshold, and the dev EER of both. Only for the architectures ``quantize_onnx`` is written
    for (AASIST and AASIST-L: their registry entry's ``quantizable``). Raises ``ValueError`` for
    another architecture or an int8 bundle.
    """
    import onnxruntime as ort

    if not get_architecture(bundle.architecture).quantizable:
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
