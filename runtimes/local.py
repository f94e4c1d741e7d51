"""The bundle's model in this process: ONNX Runtime or eager PyTorch, and where they run.

Both take (B, input_samples) float32 16 kHz windows and return ``(logits (B, 2), score (B,))``
as numpy arrays; the score follows the bundle's convention (higher = more bona fide). A fusion
bundle's runtime also has ``score_parts(windows) -> (score (B,), parts (B, K))``, its members'
raw scores beside the fused one; on any other runtime ``score_parts`` is None.

``--providers`` (``tensorrt``, ``cuda``, ``cpu``, ``auto``) choose ONNX Runtime's execution
providers; ``ort_session`` is the one place that opens a session, for these runtimes and for
encoder reuse (``runtimes.reuse``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from voicescreen.models.bundle import Bundle

log = logging.getLogger(__name__)

AUTO = "auto"
PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


def has_nvidia_gpu() -> bool:
    return Path("/dev/nvidiactl").exists() or Path("/dev/nvidia0").exists()


def provider_names(providers: Sequence[str] | str | None) -> list[str]:
    """``--providers`` as a list of short names: ``"cuda,cpu"`` -> ``["cuda", "cpu"]``, None ->
    ``["auto"]``."""
    if providers is None:
        return [AUTO]
    if isinstance(providers, str):
        return [p.strip() for p in providers.split(",") if p.strip()]
    return list(providers)


def wants_gpu(providers: Sequence[str] | str | None) -> bool:
    """Whether ``providers`` (as ``--providers`` takes them) ask for a GPU: ``auto`` where an
    NVIDIA GPU is present, or ``cuda``/``tensorrt`` named (even where none is: ONNX Runtime then
    falls back to the CPU, on the bundle's own graph, as asked)."""
    names = provider_names(providers)
    if names == [AUTO]:
        return has_nvidia_gpu()
    return any(p.strip() in ("cuda", "tensorrt") for p in names)


def resolve_providers(providers: Sequence[str] | str | None) -> list[str]:
    """Provider short names (``tensorrt``, ``cuda``, ``cpu``, or ``auto``) -> ORT provider names.

    ``auto`` (the default) is CUDA then CPU where an NVIDIA GPU is present, CPU elsewhere.
    Providers this onnxruntime build lacks are dropped with a log line; CPU is always last.
    """
    import onnxruntime as ort

    providers = provider_names(providers)
    if providers == [AUTO]:
        providers = ["cuda", "cpu"] if has_nvidia_gpu() else ["cpu"]
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


def ort_session(
    onnx_model: bytes | str | Path,
    *,
    name: str = "model",
    providers: Sequence[str] | str | None = None,
    threads: int | None = None,
    dims: Mapping[str, int] | None = None,
    spin: bool = True,
):
    """An ONNX Runtime inference session on the first available of ``providers`` (the CPU when
    none is), with every graph optimisation and without the CPU memory arena. ``dims`` fixes
    named dynamic dimensions (a graph specialised to one input length runs faster); ``spin``
    False stops idle threads spin-waiting between calls (for runtimes making many short ones)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    for name_, value in (dims or {}).items():
        options.add_free_dimension_override_by_name(name_, int(value))
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only: a missing GPU is reported by us, once
    # ONNX Runtime's CPU arena keeps the peak of every batch it has run (GBs for AASIST at
    # batch 16) for the session's life and never hands it back; without it, the big
    # activations go straight to the allocator and are returned after each run. Measured:
    # the WebSocket test file's peak RSS 10.8 -> 3.2 GB, same run time.
    options.enable_cpu_mem_arena = False
    if not spin:
        # Idle intra-op threads otherwise spin-wait for the next call: fine for a few long
        # calls, but with many short ones (encoder reuse) the spinning took half the CPU.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    requested = resolve_providers(providers)
    model = onnx_model if isinstance(onnx_model, bytes) else str(onnx_model)
    session = ort.InferenceSession(model, options, providers=requested)
    got = session.get_providers()
    if got[0] != requested[0]:
        log.warning("%s: %s unavailable, running on %s", name, requested[0], got[0])
    log.debug("%s: onnxruntime on %s", name, ", ".join(got))
    return session


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
        self.name = name
        self.input_samples = input_samples
        self.fast_path: str | None = None  # set by the fast-path builders and by int8 bundles
        self.session = ort_session(onnx_model, name=name, providers=providers, threads=threads)
        self.providers = self.session.get_providers()
        outputs = [o.name for o in self.session.get_outputs()]
        if "parts" not in outputs:
            self.score_parts = None  # not a fusion graph

    def __call__(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = check_batch(windows, self.input_samples)
        logits, score = self.session.run(["logits", "score"], {"waveform": x})
        return logits, score

    def score_parts(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A fusion's scores (B,) and its members' raw scores (B, K) in one run."""
        x = check_batch(windows, self.input_samples)
        score, parts = self.session.run(["score", "parts"], {"waveform": x})
        return score, parts


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
        self.fast_path: str | None = None
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.eval().to(self.device)
        self._score = lambda logits: score_from_logits(logits, convention)
        self.providers = [str(self.device)]
        if not hasattr(self.model, "forward_parts"):
            self.score_parts = None  # not a fusion

    def __call__(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        x = torch.from_numpy(check_batch(windows, self.input_samples)).to(self.device)
        with torch.inference_mode():
            logits = self.model(x)
            score = self._score(logits)
        return logits.float().cpu().numpy(), score.float().cpu().numpy()

    def score_parts(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A fusion's scores (B,) and its members' raw scores (B, K) in one run."""
        import torch

        x = torch.from_numpy(check_batch(windows, self.input_samples)).to(self.device)
        with torch.inference_mode():
            logits, parts = self.model.forward_parts(x)
            score = self._score(logits)
        return score.float().cpu().numpy(), parts.float().cpu().numpy()


def check_batch(windows: np.ndarray, input_samples: int) -> np.ndarray:
    x = np.ascontiguousarray(windows, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != input_samples or x.shape[0] == 0:
        raise ValueError(f"expected windows of shape (B>0, {input_samples}), got {x.shape}")
    return x


def plain_runtime(bundle: Bundle, backend: str, **options: Any) -> OnnxRuntime | TorchRuntime:
    """``bundle``'s own model on ``backend`` (``onnx``: its ``model.onnx``, int8 or not;
    ``torch``: its weights, eager). Raises ``BundleError`` for the torch backend on an int8
    bundle."""
    from voicescreen.models.bundle import ONNX_FILE, BundleError

    if backend == "onnx":
        runtime = OnnxRuntime(
            bundle.files[ONNX_FILE], bundle.input_samples, name=bundle.name, **options
        )
        runtime.fast_path = "int8" if bundle.quantized else None
        return runtime
    if bundle.quantized:
        raise BundleError(
            f"{bundle.name}: model.onnx is int8, but the torch backend would run the fp32 "
            f"weights it was made from ({bundle.quantized['source']['name']}): use --backend "
            "onnx, or the fp32 bundle"
        )
    return TorchRuntime(
        bundle.build_torch(),
        bundle.score.convention,
        bundle.input_samples,
        name=bundle.name,
        **options,
    )
