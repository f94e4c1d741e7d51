"""Runtimes: score a batch of windows with ONNX Runtime or PyTorch.

Both take (B, input_samples) float32 16 kHz windows and return ``(logits (B, 2), score (B,))``
as numpy arrays; the score follows the bundle's convention (higher = more bona fide).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


def _has_nvidia_gpu() -> bool:
    return Path("/dev/nvidiactl").exists() or Path("/dev/nvidia0").exists()


def resolve_providers(providers: Sequence[str] | str | None) -> list[str]:
    """Provider short names (``tensorrt``, ``cuda``, ``cpu``, or ``auto``) -> ORT provider names.

    ``auto`` (the default) is CUDA then CPU where an NVIDIA GPU is present, CPU elsewhere.
    Providers this onnxruntime build lacks are dropped with a log line; CPU is always last.
    """
    import onnxruntime as ort

    if providers is None or providers == "auto" or list(providers) == ["auto"]:
        providers = ["cuda", "cpu"] if _has_nvidia_gpu() else ["cpu"]
    elif isinstance(providers, str):
        providers = [p.strip() for p in providers.split(",") if p.strip()]
    unknown = [p for p in providers if p not in PROVIDERS]
    if unknown:
        raise ValueError(f"unknown execution provider {unknown}; use {list(PROVIDERS)} or auto")
    available = set(ort.get_available_providers())
    chosen = []
    for short in providers:
        name = PROVIDERS[short]
        if name in available:
            chosen.append(name)
        else:
            log.warning("onnxruntime has no %s here; falling back", name)
    if PROVIDERS["cpu"] not in chosen:
        chosen.append(PROVIDERS["cpu"])
    return chosen


class OnnxRuntime:
    """An ONNX Runtime session over a bundle's ``model.onnx``."""

    backend = "onnx"

    def __init__(
        self,
        onnx_model: bytes | str | Path,
        input_samples: int,
        *,
        name: str = "model",
        providers: Sequence[str] | str | None = None,
        threads: int | None = None,
    ) -> None:
        import onnxruntime as ort

        self.name = name
        self.input_samples = input_samples
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3  # errors only: a missing GPU is reported by us, once
        requested = resolve_providers(providers)
        model = onnx_model if isinstance(onnx_model, bytes) else str(onnx_model)
        self.session = ort.InferenceSession(model, options, providers=requested)
        self.providers = self.session.get_providers()
        if self.providers[0] != requested[0]:
            log.warning("%s: %s unavailable, running on %s", name, requested[0], self.providers[0])
        log.info("%s: onnxruntime on %s", name, ", ".join(self.providers))

    def __call__(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = check_batch(windows, self.input_samples)
        logits, score = self.session.run(["logits", "score"], {"waveform": x})
        return logits, score


class TorchRuntime:
    """Eager PyTorch over a model built from a bundle's weights."""

    backend = "torch"

    def __init__(
        self,
        model,
        convention: str,
        input_samples: int,
        *,
        name: str = "model",
        device: str | None = None,
        threads: int | None = None,
    ) -> None:
        import torch

        from voicescreen.models.bundle import score_from_logits

        if threads:
            torch.set_num_threads(threads)
        self.name = name
        self.input_samples = input_samples
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.eval().to(self.device)
        self._score = lambda logits: score_from_logits(logits, convention)
        self.providers = [str(self.device)]

    def __call__(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        x = torch.from_numpy(check_batch(windows, self.input_samples)).to(self.device)
        with torch.inference_mode():
            logits = self.model(x)
            score = self._score(logits)
        return logits.float().cpu().numpy(), score.float().cpu().numpy()


def check_batch(windows: np.ndarray, input_samples: int) -> np.ndarray:
    x = np.ascontiguousarray(windows, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != input_samples or x.shape[0] == 0:
        raise ValueError(f"expected windows of shape (B>0, {input_samples}), got {x.shape}")
    return x
