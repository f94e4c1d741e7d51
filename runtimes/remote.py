"""Remote runtimes: the bundle's model on replicas elsewhere, and the options that reach them.

The batched worker (``voicescreen.stream.worker``) owns queues, batching across streams, shedding
and metrics; the only thing that changes between backends is the call that turns a batch of
windows into scores, a *runtime* (``voicescreen.runtimes.Runtime``)::

    runtime(windows: (B, input_samples) float32) -> (logits (B, 2) or None, score (B,))

- ``onnx``, ``torch``: the bundle's model in this process (``runtimes.local``), one batch at a
  time.
- ``ray``: a Ray Serve deployment of the bundle's ONNX model (``voicescreen.runtimes.ray``),
  one replica per CPU slot or GPU, batching again on the replica side with ``@serve.batch``.
- ``triton``: a Triton Inference Server model made by ``voicescreen export --triton``
  (``voicescreen.runtimes.triton``), over gRPC.

A remote runtime blocks its (worker) thread for one batch, with a timeout: it returns the scores,
raises ``Overloaded`` when the remote side refuses the batch for want of capacity (the windows are
shed and reported as ``overloaded``), or raises ``BackendError`` (they fail, and each stream gets
a ``model_error`` event). Its ``concurrency`` is how many batches the worker keeps in flight.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

LOCAL_BACKENDS = ("onnx", "torch")
REMOTE_BACKENDS = ("ray", "triton")
BACKENDS = LOCAL_BACKENDS + REMOTE_BACKENDS


class BackendError(RuntimeError):
    """A remote backend that cannot be reached, does not answer in time, or serves another
    model than the bundle says."""


class Overloaded(RuntimeError):
    """A window was shed: the worker's queue was full, it waited past the latency budget, or a
    remote runtime refused the batch for want of capacity (runtimes raise it for that).
    Defined here, below the worker (``stream.worker`` sheds with it), so that runtimes need not
    import the stream package.
    ``reason`` is the short form the ``overloaded`` event carries."""

    def __init__(self, message: str, reason: str = "refused") -> None:
        super().__init__(message)
        self.reason = reason


class RemoteRuntime(Protocol):
    """A runtime whose model runs elsewhere (see the module docstring)."""

    backend: str  # "ray" | "triton"
    providers: list[str]  # where it runs, in words, for logs and benchmark tables
    concurrency: int  # batches the worker may have in flight at once

    def __call__(self, windows: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class RayOptions:
    """A Ray Serve deployment of each bundle.

    ``address``: the cluster (``auto``: the one this machine belongs to, ``ray://HOST:10001`` or
    ``HOST:6379``; ``local``: start a Ray instance in this process). ``replicas``: deploy (or
    rescale) each model's application to this many replicas; None uses a running deployment as
    it is, and deploys one replica where there is none. Each replica takes ``cpus_per_replica``
    CPUs (also its ONNX Runtime threads) and ``gpus_per_replica`` GPUs, and batches up to
    ``max_batch`` windows from up to ``batch_wait_ms`` of requests (``@serve.batch``).
    ``timeout_s``: the longest one batch may take, queueing on the replica included, before its
    windows fail; ``inflight``: batches this process keeps in flight per model (None: one per
    replica, so a batch waits for no other batch of this process and the rest wait, bounded, in
    the worker's queue).
    """

    address: str = "auto"
    replicas: int | None = None
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0
    max_batch: int = 64
    batch_wait_ms: float = 2.0
    timeout_s: float = 30.0
    inflight: int | None = None
    deploy_timeout_s: float = 180.0

    def __post_init__(self) -> None:
        if self.replicas is not None and self.replicas < 1:
            raise ValueError(f"replicas must be at least 1, got {self.replicas}")
        if self.cpus_per_replica < 0 or self.gpus_per_replica < 0:
            raise ValueError("cpus_per_replica and gpus_per_replica must be >= 0")
        if self.max_batch < 1 or self.batch_wait_ms < 0:
            raise ValueError("max_batch must be >= 1 and batch_wait_ms >= 0")
        if self.timeout_s <= 0 or self.deploy_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        if self.inflight is not None and self.inflight < 1:
            raise ValueError(f"inflight must be at least 1, got {self.inflight}")


@dataclass(frozen=True)
class TritonOptions:
    """A Triton Inference Server holding the bundles' models (``voicescreen export --triton``).

    ``url``: its gRPC endpoint, ``HOST:8001``. ``timeout_s``: the longest one batch may take
    before its windows fail; ``inflight``: batches this process keeps in flight per model.
    """

    url: str | None = None
    timeout_s: float = 30.0
    inflight: int = 4

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        if self.inflight < 1:
            raise ValueError(f"inflight must be at least 1, got {self.inflight}")
