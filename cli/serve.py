"""``voicescreen serve`` and ``voicescreen tap``: the server and its command-line client, and the
flags of the remote backends (``voicescreen worker`` shares them). The server itself is
``voicescreen.web``; this module only turns flags into its ``ServerConfig``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
from typing import Any

from voicescreen.cli import (
    EXIT_INTERRUPTED,
    add_hop_argument,
    add_runtime_arguments,
    add_verdict_arguments,
    fail,
    plan_bundles,
    verdict_options,
)
from voicescreen.runtimes import AUTO, LOCAL_BACKENDS, NO_FAST_PATH, with_fast_path

log = logging.getLogger("voicescreen")

TOKEN_ENV = "VOICESCREEN_TOKEN"
# The server's latency budget: a window not in a batch 2 s after it was cut is shed and reported
# (overloaded) rather than scored ever later; the library's BatchOptions default is no limit.
SERVE_MAX_DELAY_MS = 2000.0


def _csv(value: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in (value or "").split(",") if v.strip())


# --- remote backends (shared with ``voicescreen worker``) ---------------------------------------


def add_remote_arguments(parser: argparse.ArgumentParser, ingest: bool = True) -> None:
    """The flags of the Ray Serve backend, and with ``ingest`` those of the ingest side of the
    remote backends (Triton's URL, timeouts, batches in flight)."""
    from voicescreen.runtimes import RayOptions

    d = RayOptions()
    g = parser.add_argument_group("Ray Serve backend (--backend ray)")
    g.add_argument(
        "--ray-address",
        default=d.address,
        help="the Ray cluster: auto (the one this machine joined with `ray start`), "
        "ray://HOST:10001, HOST:6379, or local (a Ray instance in this process) (default auto)",
    )
    g.add_argument(
        "--replicas",
        type=int,
        default=None,
        help="deploy (or rescale) each model to N replicas (default: use the running "
        "deployment, or deploy 1 where there is none)",
    )
    g.add_argument(
        "--cpus-per-replica",
        type=float,
        default=d.cpus_per_replica,
        help="CPUs each replica reserves (also its ONNX Runtime threads)",
    )
    g.add_argument(
        "--gpus-per-replica",
        type=float,
        default=d.gpus_per_replica,
        help="GPUs each replica reserves (> 0: run it on CUDA)",
    )
    g.add_argument(
        "--replica-max-batch",
        type=int,
        default=d.max_batch,
        help="windows per model call on a replica (@serve.batch)",
    )
    g.add_argument(
        "--replica-batch-wait-ms",
        type=float,
        default=d.batch_wait_ms,
        help="how long a replica waits for requests to batch together",
    )
    if not ingest:
        return
    g = parser.add_argument_group("remote backends (--backend ray or triton)")
    g.add_argument("--triton-url", help="the Triton server's gRPC endpoint, HOST:8001")
    g.add_argument(
        "--remote-timeout",
        type=float,
        default=d.timeout_s,
        help="seconds a batch may take remotely before its windows fail (default %(default)s)",
    )
    g.add_argument(
        "--remote-inflight",
        type=int,
        default=None,
        help="batches in flight per model (default: 1 per Ray replica, 4 for Triton)",
    )


def ray_options_from_args(args: argparse.Namespace) -> Any:
    from voicescreen.runtimes import RayOptions

    d = RayOptions()
    return RayOptions(
        address=args.ray_address,
        replicas=args.replicas,
        cpus_per_replica=args.cpus_per_replica,
        gpus_per_replica=args.gpus_per_replica,
        max_batch=args.replica_max_batch,
        batch_wait_ms=args.replica_batch_wait_ms,
        timeout_s=getattr(args, "remote_timeout", d.timeout_s),
        inflight=getattr(args, "remote_inflight", None),
    )


def triton_options_from_args(args: argparse.Namespace) -> Any:
    from voicescreen.runtimes import TritonOptions

    inflight = {} if args.remote_inflight is None else {"inflight": args.remote_inflight}
    return TritonOptions(url=args.triton_url, timeout_s=args.remote_timeout, **inflight)


# --- voicescreen serve -------------------------------------------------------------------------


def config_from_args(args: argparse.Namespace) -> Any:
    from voicescreen.stream import BatchOptions, VadOptions, WindowOptions
    from voicescreen.web.config import ServerConfig

    sinks = _csv(args.twilio_sink) or (
        ("socket", "log", "webhook") if args.webhook else ("socket", "log")
    )
    return ServerConfig(
        bundles=args.bundle or (),
        backend="onnx" if args.backend == AUTO else args.backend,  # auto: plan_bundles
        providers=args.providers,
        threads=args.threads,
        reuse=bool(args.reuse),
        screen=args.screen,
        cascade_band=args.cascade_band,
        batch=BatchOptions(
            max_batch=args.max_batch,
            max_wait_ms=args.max_wait_ms,
            max_queue=args.max_queue,
            max_delay_ms=args.max_delay_ms,
        ),
        ray=ray_options_from_args(args),
        triton=triton_options_from_args(args),
        window=WindowOptions(hop_seconds=args.hop),
        vad=VadOptions(min_voiced=args.min_voiced, enabled=not args.no_vad),
        smoothing=verdict_options(args),
        token=args.token or os.environ.get(TOKEN_ENV) or None,
        allowed_origins=_csv(args.allow_origin),
        max_frame_bytes=args.max_frame_bytes,
        max_stream_seconds=args.max_stream_seconds,
        max_streams_per_client=args.max_streams_per_client,
        idle_timeout=args.idle_timeout,
        twilio_sinks=sinks,
        webhook_url=args.webhook,
        webhook_events=_csv(args.webhook_events) or ServerConfig.webhook_events,
        ice_servers=_csv(args.ice_server),
        **guard_options(args),
        **limit_options(args),
    )


def limit_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``ServerConfig`` fields of the server-wide limits and of who is believed."""
    return {
        "max_upload_bytes": args.max_upload_bytes,
        "max_upload_seconds": args.max_upload_seconds,
        "max_upload_samples": args.max_upload_samples,
        "max_score_jobs": args.max_score_jobs,
        "max_score_queue": args.max_score_queue,
        "max_streams": args.max_streams,
        "max_connections": args.max_connections,
        "header_timeout": args.header_timeout,
        "ws_ping_interval": args.ws_ping_interval,
        "ws_ping_timeout": args.ws_ping_timeout,
        "trusted_proxies": _csv(args.trusted_proxies),
        "allowed_hosts": _csv(args.allowed_hosts) or None,
        "access_log": bool(args.access_log),
    }


TWILIO_AUTH_TOKEN_ENV = "VOICESCREEN_TWILIO_AUTH_TOKEN"


def guard_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``ServerConfig`` fields of the pace and Twilio-signature flags."""
    return {
        "max_realtime_factor": args.max_realtime_factor or None,  # 0: no limit
        "realtime_burst_seconds": args.realtime_burst,
        "rate_limit": args.rate_limit,
        "twilio_auth_token": args.twilio_auth_token
        or os.environ.get(TWILIO_AUTH_TOKEN_ENV)
        or None,
        "public_url": args.public_url,
    }


def cmd_serve(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from voicescreen.stream.loading import LoadError, load_bundles
    from voicescreen.web.server import listen, serve

    try:  # before the models load (seconds to a minute): a port in use is said at once
        sock = listen(args.host, args.port)
    except OSError as e:
        return fail(
            f"cannot listen on {args.host}:{args.port}: {e.strerror or e}; another server may "
            "hold it: stop it, or choose another port with --port"
        )
    if not getattr(args, "verbose", 0):  # a server's own progress is worth seeing by default
        for name in ("uvicorn.error", "voicescreen.web", "voicescreen.models"):
            logging.getLogger(name).setLevel(logging.INFO)
    try:
        config = config_from_args(args)
        if args.backend in (AUTO, *LOCAL_BACKENDS):  # each bundle's runtime, chosen or forced
            bundles = list(load_bundles(list(config.bundles)).values())
            planned = plan_bundles(bundles, args, streams=True, command="serve")
            config = replace(config, bundles=planned, reuse=False)  # reuse: in each plan
        elif args.fast_path not in (AUTO, NO_FAST_PATH):  # built here, run elsewhere: refused
            bundles = load_bundles(list(config.bundles)).values()
            config = replace(config, bundles=[with_fast_path(b, args.fast_path) for b in bundles])
    except ValueError as e:  # LoadError and FastPathError are ValueErrors
        sock.close()
        return fail(str(e))
    if config.token is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s without a token: anyone who reaches it can use it", args.host)
    try:
        stopped_by = serve(config, args.host, args.port, sock)
    except LoadError as e:  # the server's ConfigError
        return fail(str(e))
    finally:
        sock.close()
    if signal.SIGINT in stopped_by:  # Ctrl-C, whether or not it came back as KeyboardInterrupt
        return EXIT_INTERRUPTED
    return 0


# --- voicescreen tap ---------------------------------------------------------------------------


def _describe(message: dict[str, Any]) -> str | None:
    kind = message.get("type")
    stream = message.get("stream", "")
    if kind == "started":
        return f"{stream}: started, models {', '.join(message.get('models', {}))}"
    if kind == "score":
        return (
            f"{stream} {message['model']}: [{message['start']:6.2f} s - {message['end']:6.2f} s]"
            f"{' early' if message['early'] else '      '}"
            f"  calibrated {message['calibrated']:+7.3f}"
            f"  smoothed {message['smoothed']:+7.3f}  {message['verdict']:<9}"
            f"  {message['latency_ms']:6.0f} ms"
        )
    if kind == "no_speech":
        return (
            f"{stream} {message['model']}: [{message['start']:6.2f} s - {message['end']:6.2f} s]"
            f"  no speech (voiced {message['voiced']:.2f})"
        )
    if kind == "verdict":
        return (
            f"{stream} {message['model']}: verdict {message['previous']} -> "
            f"{message['verdict'].upper()} at {message['time']:.2f} s"
        )
    if kind == "overloaded":
        return f"{stream} {message['model']}: windows {message['windows']} shed (server overloaded)"
    if kind == "error":
        return f"{stream}: error {message['code']}: {message['message']}"
    if kind == "summary":
        parts = [
            f"{name} {s['verdict'].upper()} ("
            + (
                f"mean {s['mean']:+.3f}, {s['scored']}/{s['windows']} windows scored"
                if s["mean"] is not None
                else f"nothing scored, {s['windows']} windows"
            )
            + (f"; {s['reason']}" if s.get("reason") and s["mean"] is not None else "")
            + ")"
            for name, s in message["models"].items()
        ]
        return (
            f"{stream}: summary ({message['reason']}, {message['duration']:.2f} s): "
            + "; ".join(parts)
        )
    return None


def cmd_tap(args: argparse.Namespace) -> int:
    from voicescreen.audio import AudioError
    from voicescreen.web.client import TapError, check_url, converse, tap_messages

    url = args.url
    try:
        check_url(url)
    except TapError as e:
        return fail(str(e))
    if args.twilio and url.rstrip("/").endswith("/v1/stream"):
        return fail("--twilio streams to the /v1/twilio endpoint; fix --url")
    try:
        outgoing = list(
            tap_messages(
                args.file,
                twilio=args.twilio,
                encoding=args.encoding,
                chunk_ms=args.chunk_ms,
                models=list(_csv(args.models)) or None,
                stream_id=args.stream_id,
                channel=args.channel,
            )
        )
    except (AudioError, OSError, RuntimeError) as e:
        return fail(f"{args.file}: {e}")

    def show(message: dict[str, Any]) -> None:
        if args.json:
            print(json.dumps(message), flush=True)
            return
        line = _describe(message)
        if line is not None:
            print(line, flush=True)

    try:
        result = asyncio.run(
            converse(
                url,
                outgoing,
                realtime=not args.fast,
                token=args.token or os.environ.get(TOKEN_ENV) or None,
                on_message=show,
            )
        )
    except TapError as e:
        return fail(str(e))
    except KeyboardInterrupt:
        return 130
    if result.errors and any(e.get("fatal", True) for e in result.errors):
        return 1
    if not result.summaries:
        return fail(f"the server closed the stream without a summary (code {result.close_code})")
    return 0


# --- registration ------------------------------------------------------------------------------


def add_parsers(subparsers: Any) -> None:
    """Register ``serve`` and ``tap`` on the CLI's subparsers."""
    from voicescreen.audio import CHANNELS
    from voicescreen.runtimes import BACKENDS
    from voicescreen.stream import BatchOptions, VadOptions
    from voicescreen.web.config import ServerConfig

    d = ServerConfig.__dataclass_fields__
    batch = BatchOptions()
    s = subparsers.add_parser(
        "serve",
        help="run the server: demo page, call-tap WebSockets, Twilio, WebRTC, REST",
        description="Serve the demo page at / and the API (see docs/server.md).",
    )
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument(
        "--bundle",
        action="append",
        help="bundle path or installed name; repeat to serve several models "
        "(default: the shipped one)",
    )
    add_runtime_arguments(
        s,
        BACKENDS,
        "who scores the windows: auto (default: chosen for this machine), onnx or torch in "
        "this process, ray (a Ray Serve deployment), triton (a Triton server); see "
        "docs/deploy.md",
        streams=True,
    )
    s.add_argument(
        "--screen",
        metavar="BUNDLE",
        help="a cascade: this cheap bundle (e.g. LFCC-GMM, LCNN) scores every window first and "
        "only windows it scores within --cascade-band of its threshold go on to the served "
        "model (docs/benchmarks.md 'cascade' measures what it costs in EER)",
    )
    s.add_argument(
        "--cascade-band",
        type=float,
        default=ServerConfig.cascade_band,
        help="escalate windows whose calibrated screen score is within this of 0 "
        "(default %(default)s)",
    )
    s.add_argument("--max-batch", type=int, default=batch.max_batch)
    s.add_argument("--max-wait-ms", type=float, default=batch.max_wait_ms)
    s.add_argument("--max-queue", type=int, default=batch.max_queue)
    s.add_argument(
        "--max-delay-ms",
        type=float,
        default=SERVE_MAX_DELAY_MS,
        help="shed a window still queued this long, with an overloaded event; 0: never "
        f"(default {SERVE_MAX_DELAY_MS:g})",
    )
    add_hop_argument(s)
    add_verdict_arguments(s)
    s.add_argument(
        "--min-voiced",
        type=float,
        default=VadOptions().min_voiced,
        help="voiced fraction a window needs to be scored",
    )
    s.add_argument("--no-vad", action="store_true", help="score every window")
    s.add_argument("--token", help=f"bearer token required by the API (or ${TOKEN_ENV})")
    s.add_argument(
        "--allow-origin", help="comma-separated browser origins allowed besides the server's own"
    )
    s.add_argument("--max-frame-bytes", type=int, default=d["max_frame_bytes"].default)
    s.add_argument("--max-stream-seconds", type=float, default=d["max_stream_seconds"].default)
    s.add_argument(
        "--max-streams-per-client", type=int, default=d["max_streams_per_client"].default
    )
    s.add_argument("--idle-timeout", type=float, default=d["idle_timeout"].default)
    g = s.add_argument_group("server-wide limits and trust (docs/server.md, Limits)")
    g.add_argument(
        "--max-streams",
        type=int,
        default=d["max_streams"].default,
        help="streams open at once over all clients (default %(default)s)",
    )
    g.add_argument(
        "--max-connections",
        type=int,
        default=d["max_connections"].default,
        help="HTTP requests and WebSockets in progress at once; more get 503 (default %(default)s)",
    )
    g.add_argument(
        "--header-timeout",
        type=float,
        default=d["header_timeout"].default,
        help="seconds a connection has to send a request's headers (default %(default)s)",
    )
    g.add_argument(
        "--ws-ping-interval",
        type=float,
        default=d["ws_ping_interval"].default,
        help="seconds between keep-alive pings on a WebSocket (default %(default)s)",
    )
    g.add_argument(
        "--ws-ping-timeout",
        type=float,
        default=d["ws_ping_timeout"].default,
        help="a stream whose client leaves a ping unanswered this long ends with "
        "connection_lost (default %(default)s)",
    )
    g.add_argument(
        "--max-upload-bytes",
        type=int,
        default=d["max_upload_bytes"].default,
        help="largest POST /v1/score body (default %(default)s)",
    )
    g.add_argument(
        "--max-upload-seconds",
        type=float,
        default=d["max_upload_seconds"].default,
        help="longest audio POST /v1/score takes (default %(default)s)",
    )
    g.add_argument(
        "--max-upload-samples",
        type=int,
        default=d["max_upload_samples"].default,
        help="most samples (frames x channels) an upload may decode to, judged from its "
        "header before decoding (default %(default)s: 30 min of 48 kHz stereo)",
    )
    g.add_argument(
        "--max-score-jobs",
        type=int,
        default=d["max_score_jobs"].default,
        help="uploads scored at once; the others wait their turn, spooled to disk "
        "(default %(default)s)",
    )
    g.add_argument(
        "--max-score-queue",
        type=int,
        default=d["max_score_queue"].default,
        help="uploads arriving, waiting or scored at once (each spooled to disk, up to "
        "--max-upload-bytes); more get 503 (default %(default)s)",
    )
    g.add_argument(
        "--trusted-proxies",
        help="comma-separated addresses or networks of reverse proxies whose X-Forwarded-For "
        "and X-Forwarded-Proto are believed (default none: each connection is its own client)",
    )
    g.add_argument(
        "--allowed-hosts",
        help="comma-separated host names the server answers to in Host, *.example.com "
        "wildcards, * for any (default: localhost, the loopback and bind addresses, and "
        "--public-url's host)",
    )
    g.add_argument(
        "--access-log",
        action="store_true",
        help="log each request (a token in a query is shown as token=...)",
    )
    s.add_argument(
        "--twilio-sink",
        help="where Twilio results go: comma-separated socket,webhook,log (default socket,log, "
        "plus webhook with --webhook)",
    )
    s.add_argument("--webhook", help="URL to POST Twilio stream events to (JSON)")
    s.add_argument(
        "--webhook-events",
        help="event types posted to the webhook (default verdict,summary,error)",
    )
    s.add_argument("--ice-server", help="comma-separated STUN/TURN URLs for WebRTC (default none)")
    add_remote_arguments(s)
    from voicescreen.web.config import RATE_LIMITS

    g = s.add_argument_group("stream pace and Twilio signatures")
    g.add_argument(
        "--max-realtime-factor",
        type=float,
        default=d["max_realtime_factor"].default,
        help="fastest a stream's audio may arrive on /v1/stream and /v1/twilio, in times real "
        "time, after a burst (0: no limit; default %(default)s)",
    )
    g.add_argument(
        "--realtime-burst",
        type=float,
        default=d["realtime_burst_seconds"].default,
        help="seconds of audio a stream may send ahead of that pace (default %(default)s)",
    )
    g.add_argument(
        "--rate-limit",
        choices=RATE_LIMITS,
        default=d["rate_limit"].default,
        help="what a stream beyond its pace gets: throttle (read at the pace; the client's "
        "sends wait, nothing is lost) or close (ended with the error rate_limited) "
        "(default %(default)s)",
    )
    g.add_argument(
        "--twilio-auth-token",
        help="the Twilio account's Auth Token: /v1/twilio refuses connections without a valid "
        f"X-Twilio-Signature (or ${TWILIO_AUTH_TOKEN_ENV}, which stays out of `ps`)",
    )
    g.add_argument(
        "--public-url",
        help="this server's base URL as Twilio reaches it, when a proxy stands between them "
        "(e.g. wss://screen.example.com): the URL Twilio signs",
    )
    s.set_defaults(func=cmd_serve)

    t = subparsers.add_parser(
        "tap",
        help="stream an audio file to a server's call-tap endpoint and print the events",
        description="Stream FILE to ws://HOST/v1/stream (or /v1/twilio with --twilio) at "
        "real-time pace and print what comes back.",
    )
    t.add_argument("file", metavar="FILE", help="wav/flac/ogg")
    t.add_argument(
        "--url",
        default="ws://127.0.0.1:8000/v1/stream",
        help="the endpoint, ws:// or wss:// (default: %(default)s)",
    )
    t.add_argument(
        "--twilio", action="store_true", help="speak Twilio Media Streams (8 kHz mu-law)"
    )
    t.add_argument("--fast", action="store_true", help="send as fast as possible, not real time")
    t.add_argument(
        "--encoding",
        choices=["pcm16", "float32", "mulaw", "alaw"],
        default="pcm16",
        help="audio encoding for /v1/stream",
    )
    t.add_argument("--chunk-ms", type=float, default=20.0, help="audio per frame (ms)")
    t.add_argument("--models", help="comma-separated models to score with (default: all)")
    t.add_argument("--stream-id", help="the stream id to ask for")
    t.add_argument(
        "--channel",
        choices=CHANNELS,
        help="declare the audio wideband or narrowband (default: the server decides from the "
        "format; not with --twilio, which is narrowband)",
    )
    t.add_argument("--token", help=f"bearer token (or ${TOKEN_ENV})")
    t.add_argument("--json", action="store_true", help="print each message as one JSON line")
    t.set_defaults(func=cmd_tap)
