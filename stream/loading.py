"""Bundle specs in, scorers out: the one place that turns what a command line or a server config
names into the workers streams score with.

    specs (paths, installed names, Bundles; none: the shipped default)
      ──▶ load_bundles ──▶ {name: Bundle}
      ──▶ load_scorers ──▶ {name: InferenceWorker}, or {name: Cascade(screen, worker)} with a screen

The server (``web.state``), the monitor and ``voicescreen worker``/``export`` all load here; a
command plans each bundle's runtime (``Bundle.with_plan``) between the two steps where it
chooses one. Everything that stops a set of models from loading is a ``LoadError``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from voicescreen.models import store
from voicescreen.models.bundle import Bundle, load_bundle
from voicescreen.runtimes import BackendError, FastPathError, close_runtimes, open_runtimes
from voicescreen.stream.worker import BatchOptions, Cascade, InferenceWorker

if TYPE_CHECKING:
    from voicescreen.runtimes import RayOptions, TritonOptions

# A bundle as named: a path, an installed bundle's name, a loaded Bundle; None: the shipped default.
Spec = str | os.PathLike | Bundle | None


class LoadError(ValueError):
    """Models that cannot be loaded as asked: no bundle and no shipped default, a broken bundle,
    two of the same name, a screen that cannot pair with them, a remote backend that cannot be
    reached or serves another model."""


def load_bundles(specs: Iterable[Spec]) -> dict[str, Bundle]:
    """Bundles by name: the given ones, or the shipped default when none is given."""
    specs = list(specs)
    if not specs:
        if not (store.DEFAULT_BUNDLE / "card.json").exists():
            raise LoadError(
                f"no bundle given and no default bundle shipped at {store.DEFAULT_BUNDLE}; "
                "pass --bundle PATH (see `voicescreen import-weights` to make one)"
            )
        specs = [None]
    bundles: dict[str, Bundle] = {}
    for spec in specs:
        if isinstance(spec, Bundle):
            bundle = spec
        else:
            try:
                bundle = load_bundle(store.resolve_bundle(spec))
            except (FileNotFoundError, ValueError) as e:  # BundleError is a ValueError
                raise LoadError(str(e)) from e
        if bundle.name in bundles:
            raise LoadError(f"two bundles are named {bundle.name!r}; names must be unique")
        bundles[bundle.name] = bundle
    return bundles


def load_scorers(
    specs: Iterable[Spec],
    backend: str = "onnx",
    batch: BatchOptions | None = None,
    screen: Spec = None,
    *,
    cascade_band: float | None = None,
    ray: RayOptions | None = None,
    triton: TritonOptions | None = None,
    **runtime_options: Any,
) -> dict[str, InferenceWorker | Cascade]:
    """One worker per bundle, by bundle name: the mapping the sessions of a server or monitor
    share to score with several models at once. ``backend``: onnx or torch in this process, or
    ray or triton (with their options); ``runtime_options`` (``providers``, ``threads``,
    ``reuse``) go to the in-process runtimes. With a ``screen`` bundle each model becomes a
    ``Cascade``: the screen (onnx, in this process) scores every window, and only windows it
    scores within ``cascade_band`` of its threshold go on to the model."""
    bundles = load_bundles(specs)
    try:  # the window -> score call: in this process, or on Ray Serve / Triton replicas
        runtimes = open_runtimes(bundles, backend, ray=ray, triton=triton, **runtime_options)
    except (BackendError, FastPathError) as e:
        raise LoadError(str(e)) from e
    workers: dict[str, InferenceWorker] = {
        name: InferenceWorker(
            runtimes[name],
            name=name,
            input_samples=bundle.input_samples,
            score=bundle.score,
            options=batch,
        )
        for name, bundle in bundles.items()
    }
    if screen is None:
        return dict(workers)
    if cascade_band is None:
        close_runtimes(runtimes)
        raise ValueError("a screen needs a cascade_band")
    try:
        first = _screen_worker(screen, bundles, batch, runtime_options)
    except LoadError:
        close_runtimes(runtimes)
        raise
    return {name: Cascade(first, w, cascade_band, name=name) for name, w in workers.items()}


def _screen_worker(
    spec: Spec, bundles: dict[str, Bundle], batch: BatchOptions | None, options: dict[str, Any]
) -> InferenceWorker:
    """A cascade's screen: a cheap bundle, in this process on the onnx backend."""
    (bundle,) = load_bundles([spec]).values()
    if bundle.name in bundles:
        raise LoadError(f"the screen {bundle.name!r} is also a served model; name another")
    clash = [n for n, b in bundles.items() if b.input_samples != bundle.input_samples]
    if clash:
        raise LoadError(
            f"the screen {bundle.name} takes {bundle.input_samples}-sample windows, "
            f"{', '.join(clash)} another length: a cascade needs the same windows"
        )
    local = {k: v for k, v in options.items() if k in ("threads", "providers")}
    return InferenceWorker.from_bundle(bundle, "onnx", batch, **local)
