"""voicescreen.runtimes: the one call that turns a batch of windows into scores.

A *runtime* scores (B, input_samples) float32 16 kHz windows::

    runtime(windows) -> (logits (B, 2) or None, score (B,))    # higher score = more bona fide

``open_runtime(bundle, backend, **options)`` makes one for every backend, and ``open_runtimes``
one per bundle; the batched worker (``stream.worker``) calls it and owns everything else. Where
they run, one module each::

    local   onnx, torch: the bundle's model in this process; execution providers
    plan    which backend, fast path and encoder reuse fit this machine (plan_runtime)
    exact   the ``exact`` fast path: the ONNX graph rewritten for this CPU
    bf16    the ``bf16`` fast path: AASIST's encoder in bfloat16, compiled by torch inductor
    int8    the int8 graph of an int8 bundle (its calibration: ``train.quantize``)
    reuse   encoder reuse across a stream's overlapping windows (IncrementalRuntime, Job)
    members a fusion served member by member, each on its own plan (MemberRuntime)
    remote  what remote runtimes share: BackendError and the Ray and Triton options
    ray     Ray Serve replicas            triton  a Triton Inference Server, and its repository

What an architecture can do here is its registry entry's (``models.registry.Architecture``):
``fast_paths``, ``quantizable``, ``reuse``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from voicescreen.runtimes.local import AUTO, OnnxRuntime, TorchRuntime, check_batch
from voicescreen.runtimes.plan import (
    FAST_PATH_CHOICES,
    FAST_PATHS,
    NO_FAST_PATH,
    FastPathError,
    RuntimePlan,
    check_fast_path,
    describe,
    describe_text,
    plan_runtime,
    with_fast_path,
)
from voicescreen.runtimes.remote import (
    BACKENDS,
    LOCAL_BACKENDS,
    REMOTE_BACKENDS,
    BackendError,
    RayOptions,
    TritonOptions,
)

if TYPE_CHECKING:
    from voicescreen.models.bundle import Bundle


class Runtime(Protocol):
    """What the worker calls: ``__call__(windows) -> (logits or None, score)``, ``backend`` and
    ``providers`` (where it runs, in words). Optional attributes, read with ``getattr`` and a
    default:

    - ``score_parts(windows) -> (score (B,), parts (B, K))``: a fusion bundle's runtime also gives
      its members' raw scores, named by ``part_names``; None (or absent) elsewhere;
    - ``concurrency``: batches the worker may have in flight at once (1);
    - ``takes_jobs``: called with ``reuse.Job``s instead of windows, window starts on its
      ``stride`` (False);
    - ``fast_path`` (``exact``, ``bf16``, ``int8`` or None), ``reuse``, ``why`` (the plan's
      reason): for ``describe``;
    - ``close()``: a remote runtime lets go of its connection.
    """

    backend: str
    providers: list[str]

    def __call__(self, windows: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]: ...


def open_runtime(bundle: Bundle, backend: str = "onnx", **options: Any) -> Runtime:
    """A runtime for ``bundle`` on ``backend``: ``onnx`` or ``torch`` in this process, ``ray`` or
    ``triton`` elsewhere.

    In this process ``options`` are ``providers``, ``threads``, ``device``, ``fast_path``
    (``exact``, ``bf16`` or None; defaults to the bundle's, ``Bundle.with_fast_path``) and
    ``reuse`` (encoder reuse, ``runtimes.reuse``). A bundle with a ``plan`` (``Bundle.with_plan``)
    runs on the plan's backend, fast path and reuse (unless ``reuse`` is given), and its runtime
    says why (``runtime.why``). Raises ``FastPathError`` (a ``ValueError``) saying why a fast path
    or reuse cannot run, and ``BundleError`` for the torch backend on an int8 bundle.

    Remote: ``ray`` (a ``RayOptions``) or ``triton`` (a ``TritonOptions``); raises
    ``BackendError`` when the backend cannot serve the bundle."""
    if backend in REMOTE_BACKENDS:
        return open_runtimes({bundle.name: bundle}, backend, **options)[bundle.name]
    if backend not in LOCAL_BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; use 'onnx' or 'torch'")
    if bundle.plan is not None:
        backend = bundle.plan.backend
        options.setdefault("reuse", bundle.plan.reuse)
        options.pop("device" if backend == "onnx" else "providers", None)
    options.setdefault("fast_path", bundle.fast_path)
    if bundle.plan is not None and bundle.plan.members and options.get("reuse"):
        from voicescreen.runtimes.members import MemberRuntime

        for key in ("reuse", "fast_path", "device"):
            options.pop(key, None)
        runtime = MemberRuntime(bundle, bundle.plan.members, **options)
    else:
        runtime = _open_local(bundle, backend, **options)
    runtime.why = bundle.plan.why if bundle.plan is not None else None
    if getattr(runtime, "score_parts", None) is not None:  # a fusion names its members
        runtime.part_names = tuple(str(m["name"]) for m in bundle.config.get("members", ()))
    return runtime


def _open_local(
    bundle: Bundle,
    backend: str,
    *,
    fast_path: str | None = None,
    reuse: bool = False,
    **options: Any,
) -> Any:
    """``bundle`` on ``backend`` in this process: plain, on ``fast_path``, or reusing each
    stream's encoder frames (AASIST family: onnx, plain or exact, or torch with bf16)."""
    if reuse:
        from voicescreen.runtimes.reuse import IncrementalRuntime

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
        if fast_path == "exact":
            from voicescreen.runtimes.exact import exact_runtime

            return exact_runtime(bundle, **options)
        from voicescreen.runtimes.bf16 import bf16_runtime

        return bf16_runtime(bundle, **options)
    from voicescreen.runtimes.local import plain_runtime

    return plain_runtime(bundle, backend, **options)


def open_runtimes(
    bundles: Mapping[str, Bundle],
    backend: str,
    *,
    ray: RayOptions | None = None,
    triton: TritonOptions | None = None,
    **local_options: Any,
) -> dict[str, Runtime]:
    """One runtime per bundle, by name. ``local_options`` (``providers``, ``threads``) go to the
    in-process runtimes. Raises ``BackendError`` when a remote backend cannot serve a bundle, or
    is asked to run a bundle on a start-up fast path (those are built in this process)."""
    if backend in LOCAL_BACKENDS:
        return {name: open_runtime(b, backend, **local_options) for name, b in bundles.items()}
    fast = [name for name, b in bundles.items() if b.fast_path]
    if fast:
        raise BackendError(
            f"--fast-path builds the model in this process, and the {backend} backend runs it "
            f"elsewhere ({', '.join(fast)}): leave out --fast-path (an int8 bundle from "
            "`voicescreen optimize --int8` runs on any backend)"
        )
    if backend == "ray":
        from voicescreen.runtimes.ray import open_ray

        return open_ray(bundles, ray or RayOptions())
    if backend == "triton":
        from voicescreen.runtimes.triton import TritonRuntime

        options = triton or TritonOptions()
        if not options.url:
            raise BackendError("the triton backend needs the server's gRPC URL (--triton-url)")
        return {name: TritonRuntime(b, options) for name, b in bundles.items()}
    raise ValueError(f"unknown backend {backend!r}; use one of {list(BACKENDS)}")


def close_runtimes(runtimes: Mapping[str, Any]) -> None:
    """Let go of remote connections (in-process runtimes have nothing to close)."""
    for runtime in runtimes.values():
        close = getattr(runtime, "close", None)
        if close is not None:
            close()


__all__ = [
    "AUTO",
    "BACKENDS",
    "FAST_PATHS",
    "FAST_PATH_CHOICES",
    "LOCAL_BACKENDS",
    "NO_FAST_PATH",
    "REMOTE_BACKENDS",
    "BackendError",
    "FastPathError",
    "OnnxRuntime",
    "RayOptions",
    "Runtime",
    "RuntimePlan",
    "TorchRuntime",
    "TritonOptions",
    "check_batch",
    "check_fast_path",
    "close_runtimes",
    "describe",
    "describe_text",
    "open_runtime",
    "open_runtimes",
    "plan_runtime",
    "with_fast_path",
]
