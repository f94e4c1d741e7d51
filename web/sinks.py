"""Where events go besides the socket they belong to: a webhook (HTTP POST of JSON) and the log.

The webhook sink posts from one background task through a bounded queue, so a slow or dead
receiver never holds up a stream: when the queue is full, events are dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import urllib.error
import urllib.request
from typing import Any

from voicescreen.stream import Event
from voicescreen.web.metrics import ServerMetrics

log = logging.getLogger(__name__)

QUEUE = 1000  # events waiting to be posted


class WebhookSink:
    """POST ``{"event": {...}, **context}`` as JSON to ``url`` for events of the chosen types."""

    def __init__(
        self, url: str, events: tuple[str, ...], timeout: float, metrics: ServerMetrics
    ) -> None:
        self.url = url
        self.events = frozenset(events)
        self.timeout = timeout
        self.metrics = metrics
        self._queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(QUEUE)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="webhook sink")

    def wants(self, event: Event) -> bool:
        return event.type in self.events

    def post(self, event: Event, context: dict[str, Any]) -> None:
        """Queue ``event`` (with ``context``: call and stream ids) for posting."""
        if not self.wants(event):
            return
        try:
            self._queue.put_nowait({**context, "event": event.to_dict()})
        except asyncio.QueueFull:
            self.metrics.webhook["dropped"] += 1
            log.warning("webhook %s: queue full, dropped a %s event", self.url, event.type)

    def _send(self, body: bytes) -> None:
        request = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "voicescreen"},
        )
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            response.read()

    async def _run(self) -> None:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            body = json.dumps(item, separators=(",", ":"), allow_nan=False).encode()
            try:
                await asyncio.to_thread(self._send, body)
            except (urllib.error.URLError, OSError, ValueError) as e:
                self.metrics.webhook["failed"] += 1
                log.warning(
                    "webhook %s: %s event not delivered (%s)", self.url, item["event"]["type"], e
                )
            else:
                self.metrics.webhook["delivered"] += 1

    async def close(self, timeout: float = 10.0) -> None:
        """Post what is queued (for up to ``timeout`` seconds), then stop."""
        if self._task is None:
            return
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            log.warning(
                "webhook %s: %d events not posted at shutdown", self.url, self._queue.qsize()
            )
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def log_event(logger: logging.Logger, event: Event, context: str) -> None:
    """The log sink: verdicts, errors and summaries at INFO, scores at DEBUG."""
    d = event.to_dict()
    if event.type == "verdict":
        logger.info(
            "%s %s: %s -> %s at %.1f s (smoothed %+.2f)",
            context,
            d["model"],
            d["previous"],
            d["verdict"],
            d["time"],
            d["smoothed"] or 0.0,
        )
    elif event.type == "error":
        logger.info("%s: error %s: %s", context, d["code"], d["message"])
    elif event.type == "summary":
        logger.info(
            "%s: summary (%s, %.1f s): %s",
            context,
            d["reason"],
            d["duration"],
            ", ".join(
                f"{m} {s['verdict']} mean {s['mean'] if s['mean'] is None else round(s['mean'], 3)}"
                for m, s in d["models"].items()
            ),
        )
    elif event.type == "score":
        logger.debug(
            "%s %s: window %d %.2f-%.2f s calibrated %+.3f %s",
            context,
            d["model"],
            d["window"],
            d["start"],
            d["end"],
            d["calibrated"],
            d["verdict"],
        )
