"""What a server is: the models it serves, the stream options, and its limits. No globals: every
server is built from one ``ServerConfig`` by ``voicescreen.web.create_app``."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from voicescreen.audio import SAMPLE_RATE, TELEPHONE_RATE
from voicescreen.runtimes.remote import BACKENDS, RayOptions, TritonOptions
from voicescreen.stream import BatchOptions, SmoothingOptions, VadOptions, WindowOptions
from voicescreen.stream.events import EVENT_TYPES as EVENT_CLASSES

if TYPE_CHECKING:
    from voicescreen.models.bundle import Bundle

# Rates a stream may declare. Each needs its own resampling filter, so the set is closed: an
# arbitrary rate (say 95999 Hz) would cost a large filter design per stream.
SAMPLE_RATES = (TELEPHONE_RATE, 11025, 12000, SAMPLE_RATE, 22050, 24000, 32000, 44100, 48000)
TWILIO_SINKS = ("socket", "webhook", "log")
EVENT_TYPES = tuple(EVENT_CLASSES)  # the events a stream emits, as stream.events registers them
RATE_LIMITS = ("throttle", "close")  # what a stream sending faster than allowed gets
MAX_UPLOAD_SAMPLES = 1800 * 48000 * 2  # decoded samples of an upload: 30 min of 48 kHz stereo


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``create_app`` needs.

    Models: ``bundles`` (paths, installed names or loaded bundles; empty: the shipped default),
    batched across streams by ``batch`` and scored by ``backend``: ``onnx`` or ``torch`` in this
    process (on ``providers`` with ``threads`` intra-op threads), ``ray`` on a Ray Serve
    deployment (``ray``), ``triton`` on a Triton server (``triton``); see
    ``voicescreen.runtimes.remote``. Streams: ``window``, ``vad`` and ``smoothing`` as the stream
    core defines them.

    Safety: ``token`` (a bearer token every API call and stream must present, None: open);
    ``allowed_origins`` (browser origins besides the server's own that may use the API);
    ``max_frame_bytes`` per WebSocket message; ``max_stream_seconds`` per stream (audio or wall
    time, whichever runs out first); ``max_streams_per_client`` open at once per client address;
    ``idle_timeout`` seconds without a message before a stream is ended; ``max_upload_bytes``,
    ``max_upload_seconds`` and ``max_upload_samples`` (decoded samples, frames x channels, judged
    from the file's header before it is decoded) for ``POST /v1/score``, where uploads wait
    spooled to disk for one of ``max_score_jobs`` slots, ``max_score_queue`` of them at most.

    The server as a whole: ``max_streams`` open at once over all clients, ``max_connections``
    HTTP requests and WebSockets in progress at once; ``header_timeout`` seconds a connection
    has to send a request's headers (slow senders are cut); a WebSocket is pinged every
    ``ws_ping_interval`` seconds and its stream ends with ``connection_lost`` when a ping goes
    unanswered for ``ws_ping_timeout``; ``trusted_proxies``, the addresses
    whose ``X-Forwarded-For``/``-Proto`` are believed (none: every client is its own address);
    ``allowed_hosts``, the names the server answers to in ``Host`` (None: ``localhost``, the
    loopback addresses, the address a request came in on and ``public_url``'s host; ``*``:
    any); ``access_log`` (with any ``token`` in a query shown as ``token=...``).

    Pace (``/v1/stream`` and ``/v1/twilio``): a stream's audio may run at most
    ``max_realtime_factor`` times real time, after a burst of ``realtime_burst_seconds`` of
    audio (None: no limit). Beyond it ``rate_limit`` decides: ``throttle`` (the default) stops
    reading the stream until its audio is back within the pace, so the client's sends wait and
    nothing is lost; ``close`` ends the stream with the error ``rate_limited``.

    Twilio: where results go (``twilio_sinks``: the socket itself, a webhook, the log);
    ``webhook_url`` and the event types posted to it; ``twilio_auth_token``, the account's Auth
    Token, to check the ``X-Twilio-Signature`` of each connection (None: not checked), on the URL
    Twilio was given: ``public_url`` (the server's base URL as Twilio reaches it, behind a proxy)
    plus the request's path and query, or the URL the request names when there is none. WebRTC:
    ``ice_servers`` (STUN/TURN URLs; none by default, which suits a server the browser reaches
    directly).
    """

    bundles: Sequence[str | Path | Bundle] = ()
    backend: str = "onnx"
    providers: str = "auto"
    threads: int | None = None
    reuse: bool = False  # in process (onnx, torch+bf16), AASIST family: reuse encoder frames
    # A cascade: ``screen`` (a cheap bundle, onnx in this process) scores every window, and a
    # window it scores within ``cascade_band`` (calibrated units) of its threshold goes on to the
    # model the stream asked for; the event's ``scored_by`` says which model's score it carries.
    screen: str | Path | Bundle | None = None
    cascade_band: float = 2.0
    batch: BatchOptions = field(default_factory=BatchOptions)
    ray: RayOptions = field(default_factory=RayOptions)
    triton: TritonOptions = field(default_factory=TritonOptions)
    window: WindowOptions = field(default_factory=WindowOptions)
    vad: VadOptions = field(default_factory=VadOptions)
    smoothing: SmoothingOptions = field(default_factory=SmoothingOptions)

    token: str | None = None
    allowed_origins: tuple[str, ...] = ()
    max_frame_bytes: int = 1 << 20
    max_stream_seconds: float = 4 * 3600.0
    max_streams_per_client: int = 64
    idle_timeout: float = 30.0
    max_upload_bytes: int = 64 << 20
    max_upload_seconds: float = 1800.0
    max_upload_samples: int = MAX_UPLOAD_SAMPLES
    max_score_jobs: int = 1  # uploads scored at once; the others wait their turn
    max_score_queue: int = 16  # uploads arriving, waiting or scored at once (each on disk)
    sample_rates: tuple[int, ...] = SAMPLE_RATES
    max_channels: int = 8
    max_streams: int = 1024
    max_connections: int = 2048
    header_timeout: float = 10.0
    ws_ping_interval: float = 20.0
    ws_ping_timeout: float = 20.0
    trusted_proxies: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] | None = None
    access_log: bool = False

    twilio_sinks: tuple[str, ...] = ("socket", "log")
    webhook_url: str | None = None
    webhook_events: tuple[str, ...] = ("verdict", "summary", "error")
    webhook_timeout: float = 5.0

    ice_servers: tuple[str, ...] = ()

    max_realtime_factor: float | None = 4.0
    realtime_burst_seconds: float = 5.0
    rate_limit: str = "throttle"
    twilio_auth_token: str | None = None
    public_url: str | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; use one of {list(BACKENDS)}")
        if self.cascade_band < 0:
            raise ValueError(f"--cascade-band must be >= 0, got {self.cascade_band:g}")
        if self.reuse and self.backend not in ("onnx", "torch"):
            raise ValueError(
                "--reuse runs in this process (--backend onnx, or torch with --fast-path bf16), "
                f"not on {self.backend}"
            )
        if self.backend == "triton" and not self.triton.url:
            raise ValueError("the triton backend needs the server's gRPC URL (--triton-url)")
        if self.token is not None and not self.token:
            raise ValueError("token must be a non-empty string (or None for no token)")
        for name in (
            "max_frame_bytes",
            "max_streams_per_client",
            "max_upload_bytes",
            "max_upload_samples",
            "max_streams",
            "max_connections",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in (
            "max_stream_seconds",
            "idle_timeout",
            "max_upload_seconds",
            "header_timeout",
            "ws_ping_interval",
            "ws_ping_timeout",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for proxy in self.trusted_proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ValueError(
                    f"trusted proxies are IP addresses or networks (10.0.0.0/8), got {proxy!r}"
                ) from None
        if self.allowed_hosts is not None and (
            not self.allowed_hosts or not all(h.strip() for h in self.allowed_hosts)
        ):
            raise ValueError("allowed_hosts must name at least one host (or be None)")
        if self.max_score_jobs < 1 or self.max_channels < 1 or self.max_score_queue < 1:
            raise ValueError("max_score_jobs, max_score_queue and max_channels must be at least 1")
        unknown = set(self.twilio_sinks) - set(TWILIO_SINKS)
        if unknown:
            raise ValueError(f"unknown Twilio sink(s) {sorted(unknown)}; use {TWILIO_SINKS}")
        if "webhook" in self.twilio_sinks and not self.webhook_url:
            raise ValueError("the webhook sink needs webhook_url")
        if self.webhook_url and not self.webhook_url.startswith(("http://", "https://")):
            raise ValueError(f"webhook_url must be an http(s) URL, got {self.webhook_url!r}")
        unknown = set(self.webhook_events) - set(EVENT_TYPES)
        if unknown:
            raise ValueError(f"unknown event type(s) {sorted(unknown)}; use {EVENT_TYPES}")
        if self.max_realtime_factor is not None and not self.max_realtime_factor >= 1:
            raise ValueError(
                f"max_realtime_factor must be at least 1, got {self.max_realtime_factor}"
            )
        if not self.realtime_burst_seconds > 0:
            raise ValueError("realtime_burst_seconds must be positive")
        if self.rate_limit not in RATE_LIMITS:
            raise ValueError(f"unknown rate_limit {self.rate_limit!r}; use one of {RATE_LIMITS}")
        if self.twilio_auth_token is not None and not self.twilio_auth_token:
            raise ValueError("twilio_auth_token must be a non-empty string (or None)")
        if self.public_url is not None:
            parts = urlsplit(self.public_url)
            if parts.scheme not in ("http", "https", "ws", "wss") or not parts.netloc:
                raise ValueError(
                    f"public_url must be an http(s) or ws(s) URL with a host, got "
                    f"{self.public_url!r}"
                )
            if parts.query or parts.fragment:
                raise ValueError(f"public_url takes no query or fragment: {self.public_url!r}")
