"""One server's state: its config, the loaded bundles and their workers, the streams' accounting.
Built by ``create_app`` and held on ``app.state.voicescreen``; nothing lives at module level."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import TYPE_CHECKING

from voicescreen.runtimes import LOCAL_BACKENDS, close_runtimes, describe_text
from voicescreen.runtimes.reuse import aligned_hop
from voicescreen.stream import Cascade, InferenceWorker
from voicescreen.stream.loading import LoadError, load_bundles, load_scorers
from voicescreen.web.config import ServerConfig
from voicescreen.web.metrics import ServerMetrics
from voicescreen.web.streams import Streams

if TYPE_CHECKING:
    from voicescreen.scoring import Scorer
    from voicescreen.web.rtc import RtcPeers
    from voicescreen.web.sinks import WebhookSink

log = logging.getLogger(__name__)


# A server that cannot start as configured (no bundle, a broken one, clashing names, a screen that
# cannot pair, a remote backend that cannot be reached or serves another model): the loader's error.
ConfigError = LoadError


class AppState:
    """Everything the endpoints share."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.bundles = load_bundles(config.bundles)
        options = {"threads": config.threads}
        if config.backend == "onnx":
            options["providers"] = config.providers
        reuse = {"reuse": True} if config.reuse else {}
        # What streams score with: each model's worker, or a cascade with the screen in front.
        self.scorers: dict[str, InferenceWorker | Cascade] = load_scorers(
            self.bundles.values(),
            config.backend,
            config.batch,
            screen=config.screen,
            cascade_band=config.cascade_band,
            ray=config.ray,
            triton=config.triton,
            **options,
            **reuse,
        )
        self.workers: dict[str, InferenceWorker] = {
            name: s.expert if isinstance(s, Cascade) else s for name, s in self.scorers.items()
        }
        screens = [s.screen for s in self.scorers.values() if isinstance(s, Cascade)]
        self.screen: InferenceWorker | None = screens[0] if screens else None
        self.runtimes = {name: w.runtime for name, w in self.workers.items()}
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
