"""Runtimes: score a batch of windows with ONNX Runtime or PyTorch.

Both take (B, input_samples) float32 16 kHz windows and return ``(logits (B, 2), score (B,))``
as numpy arrays; the score follows the bundle's convention (higher = more bona fide). A fusion
bundle's runtime also has ``score_parts(windows) -> (score (B,), parts (B, K))``, its members'
raw scores beside the fused one; on any other runtime ``score_parts`` is None.

Fast paths (``voicescreen.models.optimize``), chosen when a runtime starts
(``Bundle.runtime(backend, fast_path=...)``, ``--fast-path`` on the command line) and built on the
machine that serves, because what they build is specific to it:

- ``exact``: the onnx backend on ONNX Runtime's CPU provider runs ``optimize_onnx``'s rewrite of
  the bundle's graph (bit-identical scores, 10-18 % faster; about a second to build).
- ``bf16``: the torch backend on the CPU runs ``compile_bf16``'s bfloat16 encoder (lossy, about
  2x the plain ONNX graph; compiling takes 20-60 s and needs a C++ compiler).

Both are written for AASIST and AASIST-L: ``optimize_onnx`` is exact for any graph, but on the
other architectures it rewires nothing, and ``compile_bf16`` rebuilds AASIST's encoder. The third,
int8, is no start-up option but a bundle of its own (``voicescreen optimize --int8``), since its
calibration needs training data and the result is a portable ONNX graph.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from voicescreen.models.cpu import CpuInfo, cpu_info

if TYPE_CHECKING:
    from voicescreen.models.bundle import Bundle
    from voicescreen.models.incremental import IncrementalRuntime

log = logging.getLogger(__name__)

FAST_PATHS = {
    "exact": "ONNX graph rewritten for this CPU (optimize_onnx), exact",
    "bf16": "bfloat16 encoder compiled by torch inductor (compile_bf16), lossy",
}
FAST_BACKEND = {"exact": "onnx", "bf16": "torch"}
FAST_ARCHITECTURES = ("aasist", "aasist-l")

PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


def _has_nvidia_gpu() -> bool:
    return Path("/dev/nvidiactl").exists() or Path("/dev/nvidia0").exists()


def provider_names(providers: Sequence[str] | str | None) -> list[str]:
    """``--providers`` as a list of short names: ``"cuda,cpu"`` -> ``["cuda", "cpu"]``, None ->
    ``["auto"]``."""
    if providers is None:
        return ["auto"]
    if isinstance(providers, str):
        return [p.strip() for p in providers.split(",") if p.strip()]
    return list(providers)


def resolve_providers(providers: Sequence[str] | str | None) -> list[str]:
    """Provider short names (``tensorrt``, ``cuda``, ``cpu``, or ``auto``) -> ORT provider names.

    ``auto`` (the default) is CUDA then CPU where an NVIDIA GPU is present, CPU elsewhere.
    Providers this onnxruntime build lacks are dropped with a log line; CPU is always last.
    """
    import onnxruntime as ort

    providers = provider_names(providers)
    if providers == ["auto"]:
        providers = ["cuda", "cpu"] if _has_nvidia_gpu() else ["cpu"]
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
        self.fast_path: str | None = None  # set by the builders below and by int8 bundles
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


# --- fast paths ----------------------------------------------------------------------------------


class FastPathError(ValueError):
    """A fast path that cannot run here or on this bundle, with the reason and what to do."""


def check_fast_path(bundle: Bundle, fast_path: str, backend: str | None = None) -> None:
    """Raise ``FastPathError`` unless ``fast_path`` can run ``bundle`` (on ``backend``)."""
    if fast_path not in FAST_PATHS:
        raise FastPathError(f"unknown fast path {fast_path!r}; use one of {list(FAST_PATHS)}")
    if bundle.architecture not in FAST_ARCHITECTURES:
        raise FastPathError(
            f"{bundle.name}: the fast paths are written for AASIST and AASIST-L; "
            f"{bundle.architecture} has none (on it, `exact` would rewire nothing and `bf16` "
            "does not apply): leave out --fast-path"
        )
    if bundle.quantized:
        raise FastPathError(
            f"{bundle.name}: this bundle's model.onnx is int8 already (voicescreen optimize "
            "--int8); the fast paths start from the fp32 model: leave out --fast-path, or use "
            "the fp32 bundle it was made from"
        )
    want = FAST_BACKEND[fast_path]
    if backend is not None and backend != want:
        raise FastPathError(
            f"--fast-path {fast_path} runs on the {want} backend, not {backend}: add "
            f"--backend {want}"
            + (", or use --fast-path bf16 with --backend torch" if want == "onnx" else "")
        )


def exact_runtime(
    bundle: Bundle,
    *,
    providers: Sequence[str] | str | None = None,
    threads: int | None = None,
) -> OnnxRuntime:
    """``bundle``'s graph rewritten by ``optimize_onnx`` for this CPU, checked against the plain
    graph on the export check signal, in an ``OnnxRuntime`` on the CPU provider."""
    from voicescreen.models.bundle import ONNX_FILE, _default_check_input
    from voicescreen.models.optimize import optimize_onnx

    check_fast_path(bundle, "exact", "onnx")
    others = [p for p in provider_names(providers) if p not in ("auto", "cpu")]
    if others:
        raise FastPathError(
            f"--fast-path exact builds a graph for ONNX Runtime's CPU provider; it cannot run "
            f"on {', '.join(others)}: use --providers cpu (or auto), or leave out --fast-path"
        )
    if _has_nvidia_gpu():
        log.info("%s: --fast-path exact runs on the CPU, not the GPU", bundle.name)
    start = time.perf_counter()
    graph = optimize_onnx(
        bundle.files[ONNX_FILE],
        check_input=_default_check_input(bundle.input_samples),
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


def _compiler_problem() -> str | None:
    """Why torch inductor would find no C++ compiler here, or None (also when it cannot tell)."""
    try:
        from torch._inductor import cpp_builder, exc
    except ImportError:
        return None
    try:
        cpp_builder.get_cpp_compiler()
    except exc.InvalidCxxCompiler as e:
        return str(e)
    except Exception:  # a private API: if it changes, the compile itself will tell
        return None
    return None


def _bf16_failed(bundle: Bundle, cause: str) -> FastPathError:
    return FastPathError(
        f"{bundle.name}: --fast-path bf16 could not compile the bfloat16 encoder: {cause}. It "
        "needs a working C++ compiler for torch inductor (g++ or clang++ on the PATH, or CXX "
        "naming one). Alternatives: --fast-path exact with --backend onnx (exact, 10-18 % "
        "faster), an int8 bundle from `voicescreen optimize --int8` (lossy, ~1.6x), or no "
        "--fast-path"
    )


def _bf16_compile_failed(bundle: Bundle, e: Exception) -> FastPathError:
    """``_bf16_failed`` naming the root cause of a failed compile (inductor wraps it)."""
    root: BaseException = e
    while root.__cause__ is not None:
        root = root.__cause__
    first = (str(root).strip().splitlines() or [""])[0][:300]
    return _bf16_failed(bundle, f"{type(root).__name__}: {first}")


def warn_unless_native_bf16(bundle: Bundle) -> None:
    """Log that ``--fast-path bf16`` will be slow here, where the CPU lacks bfloat16 kernels."""
    cpu = cpu_info()
    if not cpu.native_bf16:
        log.warning(
            "%s: this CPU has no AVX-512 BF16 or AMX (%s): --fast-path bf16 runs on emulated "
            "kernels here, slower than --fast-path exact, and compiles for minutes",
            bundle.name,
            cpu.describe(),
        )


def bf16_runtime(
    bundle: Bundle,
    *,
    device: str | None = None,
    threads: int | None = None,
) -> TorchRuntime:
    """``compile_bf16`` of ``bundle``'s model in a ``TorchRuntime`` on the CPU, compiled now (one
    window through it) so that a missing compiler fails here, as ``FastPathError``."""

    from voicescreen.models.bundle import _default_check_input
    from voicescreen.models.optimize import compile_bf16

    check_fast_path(bundle, "bf16", "torch")
    if device not in (None, "cpu"):
        raise FastPathError(
            f"--fast-path bf16 is a CPU path (AVX512-BF16), not for {device}: leave out "
            "--fast-path to run the fp32 model there"
        )
    problem = _compiler_problem()
    if problem:
        raise _bf16_failed(bundle, problem)
    warn_unless_native_bf16(bundle)
    start = time.perf_counter()
    log.info("%s: compiling the bf16 encoder (20-60 s, seconds with a warm cache)", bundle.name)
    model = compile_bf16(bundle.build_torch())
    runtime = TorchRuntime(
        model,
        bundle.score.convention,
        bundle.input_samples,
        name=bundle.name,
        device="cpu",
        threads=threads,
    )
    try:
        with warnings.catch_warnings():  # the FFT front-end stays complex, outside the kernels
            warnings.filterwarnings("ignore", "Torchinductor does not support code generation")
            runtime(_default_check_input(bundle.input_samples)[:1])
    except Exception as e:  # inductor wraps a failed compile in BackendCompilerFailed & co.
        raise _bf16_compile_failed(bundle, e) from e
    runtime.fast_path = "bf16"
    log.info(
        "%s: fast path bf16: %s, compiled in %.0f s",
        bundle.name,
        FAST_PATHS["bf16"],
        time.perf_counter() - start,
    )
    return runtime


# --- choosing a runtime --------------------------------------------------------------------------

AUTO = "auto"
NO_FAST_PATH = "none"
FAST_PATH_CHOICES = (AUTO, *FAST_PATHS, NO_FAST_PATH)


@dataclass(frozen=True)
class RuntimePlan:
    """How a bundle's model runs in this process (``backend``, ``fast_path``, ``reuse``), and
    ``why``, in words, for the log and ``/v1/models``. ``forced``: the fast path was asked for
    by flag, not chosen."""

    backend: str = "onnx"
    fast_path: str | None = None
    reuse: bool = False
    why: str = ""
    forced: bool = False

    def for_files(self) -> RuntimePlan:
        """The plan for scoring whole files beside the streams (``POST /v1/score``): no reuse,
        and the exact graph instead of a chosen bf16 path (its minute of compiling pays for
        streams, not for an upload)."""
        if self.fast_path == "bf16" and not self.forced:
            return RuntimePlan("onnx", "exact", False, "whole files: the exact ONNX graph")
        return replace(self, reuse=False)


def wants_gpu(providers: Sequence[str] | str | None) -> bool:
    """Whether ``providers`` (as ``--providers`` takes them) ask for a GPU: ``auto`` where an
    NVIDIA GPU is present, or ``cuda``/``tensorrt`` named (even where none is: ONNX Runtime then
    falls back to the CPU, on the bundle's own graph, as asked)."""
    names = provider_names(providers)
    if names == [AUTO]:
        return _has_nvidia_gpu()
    return any(p.strip() in ("cuda", "tensorrt") for p in names)


def plan_runtime(
    bundle: Bundle,
    *,
    backend: str = AUTO,
    fast_path: str | None = AUTO,
    reuse: bool | None = None,
    streams: bool = True,
    providers: Sequence[str] | str | None = AUTO,
    cpu: CpuInfo | None = None,
) -> RuntimePlan:
    """The fastest runtime that keeps the bundle's scores, for this machine, unless flags force
    one: ``backend`` ``auto``/``onnx``/``torch``, ``fast_path`` ``auto``/``exact``/``bf16``/
    ``none``, ``reuse`` None (auto)/True/False; ``streams``: for live streams (reuse applies,
    and a start-up compile pays) or for whole files.

    Chosen for the AASIST family (fp32 bundles) on the CPU: encoder reuse for streams, on the
    bf16 encoder where the CPU has AVX-512 BF16 or AMX (lossy within the bf16 bound, about 2x;
    never when ``--backend onnx`` or ``--fast-path exact`` asks otherwise), else on ONNX
    Runtime's exact graph rewrite. On a GPU, and for other architectures and int8 bundles: the
    bundle's own ONNX graph, batched. Raises ``FastPathError`` for a combination that cannot
    run (``--fast-path exact --backend torch``, a fast path on an LCNN, ...)."""
    cpu = cpu or cpu_info()
    fits = bundle.architecture in FAST_ARCHITECTURES and not bundle.quantized
    gpu = backend != "torch" and wants_gpu(providers)
    why: list[str] = []
    forced = fast_path not in (AUTO, None)
    if forced:
        chosen = None if fast_path == NO_FAST_PATH else fast_path
        if chosen is not None:
            check_fast_path(bundle, chosen, None if backend == AUTO else backend)
        why.append(f"--fast-path {fast_path}")
    elif not fits:
        chosen = None
        why.append(
            "an int8 bundle runs as it is"
            if bundle.quantized
            else f"{bundle.architecture}: its own graph (the fast paths are AASIST's)"
        )
    elif backend == "torch":
        chosen = None
        why.append("--backend torch: eager PyTorch (--fast-path bf16 compiles it)")
    elif gpu:
        chosen = None
        why.append("a GPU provider: the bundle's graph, batched")
    elif streams and backend == AUTO and cpu.native_bf16 and _compiler_problem() is None:
        chosen = "bf16"
        why.append(
            f"this CPU has {'AMX' if 'amx_bf16' in cpu.flags else 'AVX-512 BF16'}: the bf16 "
            "encoder (lossy, about 2x; compiled at start-up)"
        )
    else:
        chosen = "exact"
        if backend == "onnx":
            because = "--backend onnx"
        elif not streams:
            because = "whole files"
        elif not cpu.native_bf16:
            because = f"no AVX-512 BF16 or AMX ({cpu.isa})"
        else:
            because = "no C++ compiler for bf16"
        why.append(f"{because}: the exact ONNX graph rewrite")
    runs_on = FAST_BACKEND[chosen] if chosen else ("onnx" if backend == AUTO else backend)
    if not streams:
        reused = False
    elif reuse is not None:
        reused = reuse
        why.append("--reuse" if reuse else "--no-reuse")
    else:
        reused = fits and not gpu and (runs_on == "onnx" or chosen == "bf16")
        if reused:
            why.append("encoder reuse (same scores, hop on the encoder's grid)")
    return RuntimePlan(runs_on, chosen, reused, "; ".join(why), forced)


def open_runtime(
    bundle: Bundle,
    backend: str = "onnx",
    *,
    fast_path: str | None = None,
    reuse: bool = False,
    **options: Any,
) -> OnnxRuntime | TorchRuntime | IncrementalRuntime:
    """A runtime for ``bundle`` on ``backend`` (``onnx`` or ``torch``), on ``fast_path``
    (``exact``, ``bf16`` or None) when given; ``reuse``: one that reuses each stream's encoder
    frames across overlapping windows (``models.incremental``; AASIST family: onnx, plain or
    exact, or torch with bf16). ``options`` go to the runtime (``providers``, ``threads``,
    ``device``). Raises ``FastPathError`` (a ``ValueError``) saying why a fast path or reuse
    cannot run, and ``BundleError`` for the torch backend on an int8 bundle."""
    from voicescreen.models.bundle import ONNX_FILE, BundleError

    if backend not in ("onnx", "torch"):
        raise ValueError(f"unknown backend {backend!r}; use 'onnx' or 'torch'")
    if reuse:
        from voicescreen.models.incremental import IncrementalRuntime

        if backend != "onnx" and fast_path != "bf16":
            raise FastPathError(
                "encoder reuse runs on the onnx backend (plain or --fast-path exact) or on the "
                "torch backend's --fast-path bf16, not plain torch"
            )
        if fast_path is not None:
            check_fast_path(bundle, fast_path, backend)
        options.pop("device", None)
        return IncrementalRuntime(bundle, fast_path=fast_path, **options)
    if fast_path is not None:
        check_fast_path(bundle, fast_path, backend)
        build = exact_runtime if fast_path == "exact" else bf16_runtime
        return build(bundle, **options)
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


def describe(runtime: Any) -> dict[str, Any]:
    """Where a runtime (local or remote) runs, for logs and ``/v1/models``: backend, providers,
    fast path (``exact``, ``bf16``, ``int8`` or None), encoder reuse, and why it was chosen
    (``RuntimePlan.why``; None for a runtime made without a plan)."""
    return {
        "backend": getattr(runtime, "backend", "?"),
        "providers": list(getattr(runtime, "providers", [])),
        "fast_path": getattr(runtime, "fast_path", None),
        "reuse": bool(getattr(runtime, "reuse", False)),
        "why": getattr(runtime, "why", None),
    }


def describe_text(runtime: Any) -> str:
    """``describe`` in words: ``onnx on CPUExecutionProvider, fast path exact``."""
    d = describe(runtime)
    text = f"{d['backend']} on {', '.join(d['providers'])}"
    text += f", fast path {d['fast_path']}" if d["fast_path"] else ""
    text += ", encoder reuse" if d["reuse"] else ""
    return text + (f" (chosen: {d['why']})" if d["why"] else "")
