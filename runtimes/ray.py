"""The Ray Serve backend: each bundle's ONNX model as a Serve application of N replicas.

One application per model, named ``voicescreen-<bundle name>``, holding one deployment,
``WindowScorer``: a replica per CPU slot (``num_cpus``, also its ONNX Runtime threads) or GPU
(``num_gpus``), no HTTP route (ingest nodes call it through a deployment handle). A request is one
batch of windows from one ingest worker; a replica merges the requests that reach it within
``batch_wait_ms`` into one model call of at most ``max_batch`` windows (``@serve.batch`` with a
batch size counted in windows), so several ingest nodes share its model calls.

The ingest side (``RayRuntime``) is a runtime of the batched worker: it sends a batch, waits for
its scores with a timeout, retries once on another replica when the one it reached died (Serve
replaces dead replicas by itself), maps Serve's back-pressure to ``Overloaded`` and everything else
to ``BackendError``; it never waits without a deadline.

Importing this module imports Ray; ``voicescreen.runtimes.open_runtime`` imports it only when asked
for the ``ray`` backend. Every Ray node needs voicescreen installed (replicas import it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import ray
from ray import serve
from ray.exceptions import RayActorError, RayError, RayTaskError
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    RayServeException,
)

from voicescreen.models.bundle import ONNX_FILE, sha256
from voicescreen.runtimes.local import check_batch
from voicescreen.runtimes.remote import BackendError, Overloaded, RayOptions

if TYPE_CHECKING:
    from ray.serve.handle import DeploymentHandle

    from voicescreen.models.bundle import Bundle

log = logging.getLogger(__name__)

APP_PREFIX = "voicescreen-"
DEPLOYMENT = "WindowScorer"
LOCAL_OBJECT_STORE_BYTES = 256 << 20  # a local instance shares the machine: a small object store
# A local instance (``--ray-address local``): Ray gives a node the machine's outward address
# unless multi-node clusters are off, the switch that keeps it on 127.0.0.1; and it runs its
# workers at niceness 15, which starves the replicas next to the ingest process and anything else
# on the machine, so they run at the ingest's priority instead.
LOCAL_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_worker_niceness": "0"}
DESCRIBE_TIMEOUT = 30.0  # seconds for a replica to say what it serves
RETRIES = 1  # a batch whose replica died is sent once more, to another replica
_FINAL = ("RUNNING", "DEPLOY_FAILED", "UNHEALTHY")


def app_name(model: str) -> str:
    """The Serve application of a model."""
    return f"{APP_PREFIX}{model}"


def _windows(batches: list[np.ndarray]) -> int:
    return sum(len(b) for b in batches)


@serve.deployment(name=DEPLOYMENT, max_ongoing_requests=32, graceful_shutdown_timeout_s=5)
class WindowScorer:
    """A replica: one bundle's ONNX model, batching the requests that reach it."""

    def __init__(
        self,
        model: bytes,
        *,
        name: str,
        input_samples: int,
        providers: str = "auto",
        threads: int | None = None,
        max_batch: int = 64,
        batch_wait_s: float = 0.002,
    ) -> None:
        from voicescreen.runtimes.local import OnnxRuntime

        self.runtime = OnnxRuntime(
            model, input_samples, name=name, providers=providers, threads=threads
        )
        self.runtime(np.zeros((1, input_samples), np.float32))  # warm: ready means ready
        self.score.set_max_batch_size(max_batch)
        self.score.set_batch_wait_timeout_s(batch_wait_s)
        self.info = {
            "name": name,
            "sha256": sha256(model),
            "input_samples": input_samples,
            "max_batch": max_batch,
            "providers": list(self.runtime.providers),
        }

    def describe(self) -> dict[str, Any]:
        """What this replica serves, and its process id."""
        return {**self.info, "pid": os.getpid()}

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002, batch_size_fn=_windows)
    async def score(self, batches: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each request's (b, input_samples) windows -> its (logits, score), in one model call."""
        logits, score = await asyncio.to_thread(self.runtime, np.concatenate(batches))
        cuts = np.cumsum([len(b) for b in batches])[:-1]
        return list(zip(np.split(logits, cuts), np.split(score, cuts), strict=True))


# --- the cluster and its applications ----------------------------------------------------------


def require_reachable(address: str, timeout: float = 5.0) -> None:
    """Raise ``BackendError`` at once when nothing listens where ``address`` points (``auto``:
    where ``RAY_ADDRESS`` or the last ``ray start`` on this machine says): ``ray.init`` waits
    minutes for a head node that is gone."""
    target = address.removeprefix("ray://")
    if address == "auto":
        from ray._private.services import get_ray_address_from_environment

        target = get_ray_address_from_environment("auto", None)
        if not target:  # no cluster known at all: ray.init says so at once
            return
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        return  # not host:port; ray.init judges it
    try:
        socket.create_connection((host, int(port)), timeout).close()
    except OSError as e:
        raise BackendError(
            f"cannot join the Ray cluster at {address!r}: nothing answers at {target} ({e}); "
            "start one with `ray start --head` (docs/deploy.md) or use --ray-address local"
        ) from None


def connect(address: str = "auto") -> None:
    """Join the Ray cluster at ``address`` (``auto``, ``ray://HOST:PORT``, ``HOST:PORT``), or with
    ``local`` start a Ray instance in this process (loopback, no dashboard, a small object store).
    Does nothing when this process is already connected."""
    if ray.is_initialized():
        return
    if address != "local":
        require_reachable(address)
    try:
        if address == "local":
            prepare_local_instance()
            ray.init(
                address="local",  # a new instance, whatever RAY_ADDRESS or a stale cluster says
                object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                log_to_driver=False,
            )
        else:
            ray.init(address=address, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise BackendError(
            f"cannot join the Ray cluster at {address!r} ({e}); start one with "
            "`ray start --head` (docs/deploy.md) or use --ray-address local"
        ) from None


def prepare_local_instance() -> None:
    """Before ``ray.init`` starts a Ray instance in this process: keep it (and its workers) on
    127.0.0.1, and its replicas at normal priority (``LOCAL_ENV``)."""
    from ray._private import ray_constants

    os.environ.update(LOCAL_ENV)
    ray_constants.ENABLE_RAY_CLUSTER = False


def _applications() -> dict[str, Any]:
    try:
        return dict(serve.status().applications)
    except RayServeException:  # no Serve instance in this cluster yet
        return {}


def _state(status: Any) -> str:
    """An application's status as a plain string (RUNNING, DEPLOYING, ...)."""
    return str(getattr(status.status, "value", status.status))


def _running_replicas(status: Any) -> int:
    deployment = status.deployments.get(DEPLOYMENT)
    return 0 if deployment is None else int(deployment.replica_states.get("RUNNING", 0))


def _wait_running(app: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        status = _applications().get(app)
        if status is not None and _state(status) in _FINAL:
            break
        time.sleep(0.25)
    if status is None or _state(status) != "RUNNING":
        detail = "" if status is None else f"{_state(status)}: {status.message}".strip(": ")
        if status is not None:
            detail += "".join(
                f"; {name}: {d.message}" for name, d in status.deployments.items() if d.message
            )
        raise BackendError(
            f"Ray Serve application {app} is not running after {timeout:g} s "
            f"({detail or 'not found'}); does the cluster have the CPUs/GPUs its replicas ask for?"
        )
    return status


def describe(handle: DeploymentHandle, timeout: float = DESCRIBE_TIMEOUT) -> dict[str, Any]:
    """What one replica of ``handle``'s application serves."""
    try:
        return handle.describe.remote().result(timeout_s=timeout)
    except TimeoutError:
        raise BackendError(f"no replica answered within {timeout:g} s") from None


def deploy(bundle: Bundle, options: RayOptions, replicas: int | None = None) -> int:
    """Deploy (or rescale, or replace) ``bundle``'s application with ``replicas`` (default
    ``options.replicas`` or 1); wait until it runs. Returns the replicas running."""
    replicas = replicas or options.replicas or 1
    app = app_name(bundle.name)
    serve.start(proxy_location="Disabled")  # handles only: no HTTP proxy on anyone's port 8000
    threads = max(1, round(options.cpus_per_replica)) if options.cpus_per_replica else None
    scorer = WindowScorer.options(
        num_replicas=replicas,
        ray_actor_options={
            "num_cpus": options.cpus_per_replica,
            "num_gpus": options.gpus_per_replica,
        },
    ).bind(
        bundle.files[ONNX_FILE],
        name=bundle.name,
        input_samples=bundle.input_samples,
        providers="cuda,cpu" if options.gpus_per_replica else "cpu",
        threads=threads,
        max_batch=options.max_batch,
        batch_wait_s=options.batch_wait_ms / 1000,
    )
    log.info("deploying %s: %d replica(s) of %s", app, replicas, bundle.name)
    serve._run(scorer, name=app, route_prefix=None, _blocking=False)
    return _running_replicas(_wait_running(app, options.deploy_timeout_s))


def ensure_deployed(bundle: Bundle, options: RayOptions) -> tuple[DeploymentHandle, int]:
    """A handle to ``bundle``'s application, deploying it where it is missing, serves another
    model (only when ``options.replicas`` says to deploy), or runs another number of replicas
    than ``options.replicas``; and the number of replicas running."""
    app = app_name(bundle.name)
    want = sha256(bundle.files[ONNX_FILE])
    status = _applications().get(app)
    if status is not None and _state(status) not in _FINAL:
        status = _wait_running(app, options.deploy_timeout_s)
    if status is None or _state(status) != "RUNNING":
        running = deploy(bundle, options)
    else:
        running = _running_replicas(status)
        served = describe(serve.get_app_handle(app))
        if served["sha256"] != want or served["input_samples"] != bundle.input_samples:
            if options.replicas is None:
                raise BackendError(
                    f"Ray Serve application {app} serves another model.onnx "
                    f"(sha256 {served['sha256'][:12]}, {served['input_samples']} samples) than "
                    f"bundle {bundle.source} (sha256 {want[:12]}); redeploy it with "
                    f"`voicescreen worker --ray --bundle {bundle.source}`"
                )
            running = deploy(bundle, options)
        elif options.replicas is not None and options.replicas != running:
            running = deploy(bundle, options)
    return serve.get_app_handle(app), max(running, 1)


def delete(models: list[str]) -> None:
    """Remove the applications of ``models``."""
    for model in models:
        serve.delete(app_name(model))


def open_ray(bundles: Mapping[str, Bundle], options: RayOptions) -> dict[str, RayRuntime]:
    """Join the cluster, make sure every bundle is deployed, and return their runtimes."""
    connect(options.address)
    runtimes = {}
    for name, bundle in bundles.items():
        handle, replicas = ensure_deployed(bundle, options)
        served = describe(handle)
        runtimes[name] = RayRuntime(handle, bundle, replicas, served["max_batch"], options)
    return runtimes


# --- the ingest side ---------------------------------------------------------------------------


def _cause(e: RayTaskError) -> str:
    cause = getattr(e, "cause", None)
    return f"{type(cause).__name__}: {cause}" if cause is not None else str(e).splitlines()[0]


class RayRuntime:
    """Scores batches on a model's Serve application; see the module docstring."""

    backend = "ray"

    def __init__(
        self,
        handle: DeploymentHandle,
        bundle: Bundle,
        replicas: int,
        max_batch: int,
        options: RayOptions,
    ) -> None:
        self.handle = handle
        self.app = app_name(bundle.name)
        self.input_samples = bundle.input_samples
        self.replicas = replicas
        self.max_batch = max_batch  # a replica takes at most this many windows in one request
        self.timeout_s = options.timeout_s
        self.concurrency = options.inflight or replicas
        self.providers = [f"ray:{self.app} x{replicas}"]

    def __call__(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = check_batch(windows, self.input_samples)
        deadline = time.monotonic() + self.timeout_s
        parts = [x[i : i + self.max_batch] for i in range(0, len(x), self.max_batch)]
        responses = [self.handle.score.remote(part) for part in parts]
        results = [self._result(r, p, deadline) for r, p in zip(responses, parts, strict=True)]
        return (
            np.concatenate([logits for logits, _ in results]),
            np.concatenate([score for _, score in results]),
        )

    def _result(self, response: Any, part: np.ndarray, deadline: float) -> tuple[Any, Any]:
        for attempt in range(RETRIES + 1):
            try:
                return response.result(timeout_s=max(deadline - time.monotonic(), 0.001))
            except TimeoutError:
                response.cancel()
                raise BackendError(f"{self.app}: no answer within {self.timeout_s:g} s") from None
            except BackPressureError as e:
                raise Overloaded(f"{self.app} refused the batch: {e}") from None
            except (RayActorError, DeploymentUnavailableError) as e:
                if attempt == RETRIES or time.monotonic() >= deadline:
                    raise BackendError(
                        f"{self.app}: replica lost ({type(e).__name__}), {attempt + 1} tries"
                    ) from None
                log.warning("%s: replica lost (%s); sending the batch again", self.app, e)
                response = self.handle.score.remote(part)
            except RayTaskError as e:
                raise BackendError(f"{self.app}: {_cause(e)}") from None
            except (RayError, RayServeException) as e:
                raise BackendError(f"{self.app}: {type(e).__name__}: {e}") from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Nothing to release: the application keeps running for other ingest nodes."""
