"""One server's state: its config, the loaded bundles and their workers, the streams' accounting.
Built by ``create_app`` and held on ``app.state.voicescreen``; nothing lives at module level."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from voicescreen.models import store
from voicescreen.models.bundle import Bundle, load_bundle
from voicescreen.models.incremental import aligned_hop
from voicescreen.models.runtime import FastPathError, describe_text
from voicescreen.stream import Cascade, InferenceWorker
from voicescreen.stream.backends import LOCAL_BACKENDS, BackendError, close_runtimes, open_runtimes
from voicescreen.web.config import ServerConfig
from voicescreen.web.metrics import ServerMetrics
from voicescreen.web.streams import Streams

if TYPE_CHECKING:
    from voicescreen.scoring import Scorer
    from voicescreen.web.rtc import RtcPeers
    from voicescreen.web.sinks import WebhookSink

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A server that cannot start as configured (no bundle, a broken one, clashing names, a
    remote backend that cannot be reached or serves another model)."""


def load_bundles(specs: list[str | Path | Bundle]) -> dict[str, Bundle]:
    """Bundles by name: the given ones, or the shipped default when none is given."""
    if not specs:
        if not (store.DEFAULT_BUNDLE / "card.json").exists():
            raise ConfigError(
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
                raise ConfigError(str(e)) from e
        if bundle.name in bundles:
            raise ConfigError(f"two bundles are named {bundle.name!r}; names must be unique")
        bundles[bundle.name] = bundle
    return bundles


class AppState:
    """Everything the endpoints share."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.bundles = load_bundles(list(config.bundles))
        options = {"threads": config.threads}
        if config.backend == "onnx":
            options["providers"] = config.providers
        try:  # the window -> score call: in this process, or on Ray Serve / Triton replicas
            reuse = {"reuse": True} if config.reuse else {}
            self.runtimes = open_runtimes(
                self.bundles,
                config.backend,
                ray=config.ray,
                triton=config.triton,
                **options,
                **reuse,
            )
        except (BackendError, FastPathError) as e:
            raise ConfigError(str(e)) from e
        self.workers: dict[str, InferenceWorker] = {
            name: InferenceWorker(
                self.runtimes[name],
                name=name,
                input_samples=bundle.input_samples,
                score=bundle.score,
                options=config.batch,
            )
            for name, bundle in self.bundles.items()
        }
        self._runtime_options = options  # for uploads: whole files, nothing to reuse
        strides = {w.stride for w in self.workers.values() if w.stride}
        if strides:  # encoder reuse: every stream's windows start on the encoders' grid
            hop = config.window.hop_seconds
            aligned = aligned_hop(hop, max(strides))
            log.info(
                "encoder reuse: window starts on the encoder's %d-sample grid, hop %.3f s -> "
                "%.3f s",
                max(strides),
                hop,
                aligned,
            )
            self.config = config = replace(
                config, window=replace(config.window, hop_seconds=aligned)
            )
        # What streams score with: each model's worker, or a cascade with the screen in front.
        self.screen: InferenceWorker | None = None
        self.scorers: dict[str, InferenceWorker | Cascade] = dict(self.workers)
        if config.screen is not None:
            self.screen = self._screen_worker(config, options)
            self.scorers = {
                name: Cascade(self.screen, worker, config.cascade_band, name=name)
                for name, worker in self.workers.items()
            }
        self.metrics = ServerMetrics()
        self.streams = Streams(config, self.scorers, self.metrics)
        self.webhook: WebhookSink | None = None
        self.rtc: RtcPeers | None = None
        self._scorers: dict[str, Scorer] = {}
        self._score_slots: asyncio.Semaphore | None = None
        self.uploads = 0  # POST /v1/score requests arriving, waiting or being scored
        log.info(
            "serving %s",
            "; ".join(
                f"{n} ({b.architecture}) on {describe_text(self.runtimes[n])}"
                for n, b in self.bundles.items()
            ),
        )
        if self.screen is not None:
            log.info(
                "cascade: %s (on %s) scores every window; a window it scores within %g of its "
                "threshold goes on to the model the stream asked for",
                self.screen.name,
                describe_text(self.screen.runtime),
                config.cascade_band,
            )

    def _screen_worker(self, config: ServerConfig, options: dict) -> InferenceWorker:
        """The cascade's screen: a cheap bundle, in this process on the onnx backend."""
        (bundle,) = load_bundles([config.screen]).values()
        if bundle.name in self.bundles:
            raise ConfigError(f"the screen {bundle.name!r} is also a served model; name another")
        clash = [n for n, b in self.bundles.items() if b.input_samples != bundle.input_samples]
        if clash:
            raise ConfigError(
                f"the screen {bundle.name} takes {bundle.input_samples}-sample windows, "
                f"{', '.join(clash)} another length: a cascade needs the same windows"
            )
        local = {k: v for k, v in options.items() if k in ("threads", "providers")}
        return InferenceWorker.from_bundle(bundle, "onnx", config.batch, **local)

    @property
    def workers_and_screen(self) -> dict[str, InferenceWorker]:
        """Every worker of the server, the screen's included (for /metrics)."""
        screen = {} if self.screen is None else {self.screen.name: self.screen}
        return {**self.workers, **screen}

    @property
    def default_model(self) -> str:
        return next(iter(self.workers))

    def scorer(self, name: str) -> Scorer:
        """The offline scorer of a bundle (``POST /v1/score``), made on first use: its own
        in-process runtime, or the remote backend the streams use."""
        from voicescreen.scoring import Scorer

        if name not in self._scorers:
            bundle = self.bundles[name]
            if self.config.backend in LOCAL_BACKENDS:
                scorer = Scorer(
                    bundle,
                    self.config.backend,
                    smoothing=self.config.smoothing,
                    vad=self.config.vad,
                    **self._runtime_options,
                )
            else:
                scorer = Scorer(
                    bundle,
                    runtime=self.runtimes[name],
                    smoothing=self.config.smoothing,
                    vad=self.config.vad,
                )
            self._scorers[name] = scorer
        return self._scorers[name]

    @property
    def score_slots(self) -> asyncio.Semaphore:
        if self._score_slots is None:
            self._score_slots = asyncio.Semaphore(self.config.max_score_jobs)
        return self._score_slots

    async def start(self) -> None:
        from voicescreen.web.rtc import RtcPeers
        from voicescreen.web.sinks import WebhookSink

        if self.config.webhook_url:
            self.webhook = WebhookSink(
                self.config.webhook_url,
                self.config.webhook_events,
                self.config.webhook_timeout,
                self.metrics,
            )
            self.webhook.start()
        self.rtc = RtcPeers(self)

    async def close(self) -> None:
        if self.rtc is not None:
            await self.rtc.close()
        for worker in self.workers_and_screen.values():
            await worker.close()
        close_runtimes(self.runtimes)
        if self.webhook is not None:
            await self.webhook.close()
