"""The server: ``create_app(config)`` builds a FastAPI app from one ``ServerConfig``, no globals.

    GET  /               the demo page (web/static)
    GET  /healthz        liveness and the models served
    GET  /metrics        Prometheus text
    GET  /v1/models      the models, for clients and the page
    POST /v1/score       an audio file -> per-file and per-window scores (= `voicescreen score`)
    WS   /v1/stream      call-tap: JSON start, binary audio, JSON events
    WS   /v1/twilio      Twilio Media Streams
    POST /v1/rtc/offer   WebRTC signalling; events on a data channel
    GET  /docs           the API in Swagger UI, served from this server (works offline)

``docs/server.md`` describes each, with the limits and error codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import swagger_ui_bundle
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
)
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

import voicescreen
from voicescreen.audio import (
    HOP_SECONDS,
    SAMPLE_RATE,
    AudioError,
    AudioTooLarge,
    check_channel,
    check_header,
    read_audio,
)
from voicescreen.runtimes.plan import describe
from voicescreen.stream import Cascade
from voicescreen.web.auth import origin_ok, presented_token, token_ok
from voicescreen.web.config import ServerConfig
from voicescreen.web.guard import Guard
from voicescreen.web.metrics import render
from voicescreen.web.rtc import MAX_SDP, RtcError
from voicescreen.web.state import AppState
from voicescreen.web.streams import MAX_MODELS, QUOTE_LIMIT, STREAM_ID, TRANSPORTS, quote
from voicescreen.web.twilio import twilio_endpoint
from voicescreen.web.ws import stream_endpoint

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
SWAGGER_UI = Path(str(swagger_ui_bundle.swagger_ui_path))  # Swagger UI's files, from the package
MIN_HOP = 0.25  # seconds: /v1/score refuses denser windows (each costs a model call)


class HttpError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class ErrorBody(BaseModel):
    """An error's body: ``detail`` says what went wrong and ``code`` names it (``docs/server.md``);
    a parameter of the wrong type gets FastAPI's 422, whose ``detail`` lists the errors."""

    detail: str | list[dict[str, Any]]
    code: str | None = None


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of an endpoint's errors: each of ``statuses`` with an ErrorBody."""
    return {status: {"model": ErrorBody, "description": ERRORS[status]} for status in statuses}


ERRORS = {
    400: "Bad request (`bad_request`, `bad_sdp`, `bad_host`, ...)",
    401: "Missing or wrong bearer token (`unauthorized`)",
    403: "Origin not allowed (`forbidden_origin`)",
    404: "No such model (`unknown_model`)",
    413: "Too large (`too_large`, `too_long`)",
    422: "Unreadable audio (`bad_audio`), a bad parameter (`bad_request`), or a parameter of the "
    "wrong type (FastAPI's list of errors)",
    429: "Too many streams for this client (`too_many_streams`)",
    503: "Too busy: try again later (`too_many_uploads`, `too_many_connections`)",
}


OFFER = {  # the body of POST /v1/rtc/offer, for the API's schema (``RtcPeers.offer`` checks it)
    "type": "object",
    "properties": {
        "sdp": {"type": "string", "maxLength": MAX_SDP},
        "type": {"type": "string", "enum": ["offer"]},
        "models": {"type": "array", "items": {"type": "string"}, "maxItems": MAX_MODELS},
        "stream_id": {"type": "string", "pattern": STREAM_ID.pattern},
    },
    "required": ["sdp", "type"],
    "additionalProperties": False,
}


def error_response(status: int, code: str, message: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"detail": message, "code": code}, status_code=status, headers=headers)


def _state(request: Request) -> AppState:
    return request.app.state.voicescreen


def short_input(value: Any) -> Any:
    """A client's input as an error may repeat it: as it is when short, else ``quote``d."""
    if value is None or isinstance(value, bool | int | float) and len(str(value)) <= QUOTE_LIMIT:
        return value
    if isinstance(value, str) and len(value) <= QUOTE_LIMIT:
        return value
    return quote(value)


def check_access(request: Request, browser: bool = True) -> None:
    """Token (when configured) and, for endpoints a page may call, the origin."""
    state = _state(request)
    if browser and not origin_ok(
        state.config,
        request.headers.get("origin"),
        request.headers.get("host"),
        request.url.scheme,
    ):
        raise HttpError(
            403, "forbidden_origin", f"origin {quote(request.headers['origin'])} not allowed"
        )
    if not token_ok(state.config, presented_token(request.headers)):  # no ?token= over HTTP
        raise HttpError(401, "unauthorized", "missing or wrong bearer token")


def create_app(config: ServerConfig) -> FastAPI:
    """A server for ``config``. Loads the bundles now (so a bad bundle fails here, with its
    reason); the workers start with the first stream."""
    state = AppState(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.start()
        try:
            yield
        finally:
            await state.close()

    app = FastAPI(
        title="voicescreen",
        version=voicescreen.__version__,
        summary="Real-time screening of live speech for audio deepfakes.",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's pages load Swagger UI and ReDoc from a CDN: /docs is ours
        redoc_url=None,
        openapi_url=None,  # ours too: it follows the token
    )
    app.state.voicescreen = state
    if config.allowed_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.allowed_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )

    app.add_middleware(Guard, state=state)  # the outermost: Host and connection count first

    @app.exception_handler(HttpError)
    async def http_error(request: Request, exc: HttpError) -> JSONResponse:
        if request.url.path == "/v1/score":
            state.metrics.score_requests[str(exc.status)] += 1
        return error_response(exc.status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's 422 for a parameter of the wrong type, with the input it repeats cut short
        (a 1 MB ``?hop=`` came back whole)."""
        errors = [
            {**e, "input": short_input(e["input"])} if "input" in e else e for e in exc.errors()
        ]
        return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    add_docs(app)

    @app.get("/healthz", summary="Liveness and the models served")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "version": voicescreen.__version__, "models": list(state.workers)}

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        summary="Prometheus metrics",
        responses=errors(401),
    )
    async def metrics(request: Request) -> Response:
        check_access(request, browser=False)
        text = render(
            state.metrics,
            state.workers_and_screen,
            TRANSPORTS,
            len(state.streams.clients),
            {n: c for n, c in state.scorers.items() if isinstance(c, Cascade)},
        )
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models", summary="The models this server scores with", responses=errors(401, 403))
    async def models(request: Request) -> dict[str, Any]:
        check_access(request)
        return {
            "models": [
                {
                    "name": name,
                    "architecture": bundle.architecture,
                    "input_samples": bundle.input_samples,
                    "window_seconds": bundle.input_samples / SAMPLE_RATE,
                    "threshold": bundle.score.threshold,
                    "scale": bundle.score.scale,
                    "metrics": bundle.card.get("metrics", {}),
                    "runtime": describe(state.runtimes[name]),
                    "cascade": None
                    if state.screen is None
                    else {"screen": state.screen.name, "band": config.cascade_band},
                }
                for name, bundle in state.bundles.items()
            ],
            "default": state.default_model,
            "hop_seconds": config.window.hop_seconds,
            "smoothing": {
                "windows": config.smoothing.windows,
                "enter": config.smoothing.enter,
                "leave": config.smoothing.leave,
                "min_speech": config.smoothing.min_speech,
            },
            "auth": config.token is not None,
        }

    @app.post(
        "/v1/score",
        summary="Score an audio file",
        responses=errors(400, 401, 403, 404, 413, 422, 503),
        description=(
            "Upload a WAV/FLAC/OGG file (multipart field `file`, or the raw file as the body); "
            "get the same JSON as `voicescreen score --json --windows`. `channel` "
            "(`wideband` or `narrowband`) picks the bundle's calibration for that kind of "
            "audio; left out, it is measured from the file's sample rate and bandwidth."
        ),
        openapi_extra={
            "requestBody": {
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "properties": {"file": {"type": "string", "format": "binary"}},
                            "required": ["file"],
                        }
                    },
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                },
                "required": True,
            }
        },
    )
    async def score(
        request: Request,
        model: str | None = None,
        hop: float = HOP_SECONDS,
        channel: str | None = None,
    ) -> dict[str, Any]:
        check_access(request)
        name = model or state.default_model
        if name not in state.workers:
            raise HttpError(
                404, "unknown_model", f"no model {quote(name)}; have {list(state.workers)}"
            )
        if not MIN_HOP <= hop <= 60:
            raise HttpError(422, "bad_request", f"hop must be {MIN_HOP}-60 s, got {hop}")
        try:
            check_channel(channel)
        except ValueError as e:
            raise HttpError(422, "bad_request", str(e)) from None
        if state.uploads >= config.max_score_queue:  # each holds a file of up to the limit
            raise HttpError(
                503,
                "too_many_uploads",
                f"{config.max_score_queue} uploads are already in progress (the limit); try "
                "again later",
            )
        state.uploads += 1
        try:
            async with spooled_upload(request, config.max_upload_bytes) as (filename, path):
                await check_upload(state, path, filename)
                async with state.score_slots:
                    result = await score_upload(state, name, filename, path, hop, channel)
        finally:
            state.uploads -= 1
        state.metrics.score_requests["200"] += 1
        return result

    app.add_api_websocket_route("/v1/stream", stream_endpoint, name="stream")
    app.add_api_websocket_route("/v1/twilio", twilio_endpoint, name="twilio")

    @app.post(
        "/v1/rtc/offer",
        summary="WebRTC signalling: an SDP offer in, the answer out",
        responses=errors(400, 401, 403, 413, 429),
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": OFFER}}}
        },
        description=(
            'Body: {"sdp": "...", "type": "offer", "models": [...]?, "stream_id": "..."?}. The '
            "offer must hold one audio track and a data channel; events come back on it."
        ),
    )
    async def rtc_offer(request: Request) -> dict[str, Any]:
        check_access(request)
        limit = MAX_SDP + 4096  # the SDP and the few fields around it
        body_request = capped(request, limit, f"the offer is over the {limit}-byte limit")
        try:
            body = await body_request.json()
        except ValueError:
            raise HttpError(400, "bad_sdp", "the offer must be JSON") from None
        client = request.client.host if request.client else "unknown"
        try:
            return await state.rtc.offer(body, client)
        except RtcError as e:
            state.metrics.rejected["rtc", e.code] += 1
            raise HttpError(e.status, e.code, e.message) from None

    return app


def add_docs(app: FastAPI) -> None:
    """``GET /docs``: Swagger UI from the ``swagger_ui_bundle`` package under ``/docs/static``,
    so the page works on a machine without internet access. The bundled Swagger UI (4.x) reads
    OpenAPI 3.0 only, so it is given ``/docs/openapi-3.0.json``, a 3.0 rendition of the schema;
    ``/openapi.json`` stays the 3.1 document FastAPI writes. With a token, all three need it, as
    the API does (in the ``Authorization`` header)."""
    app.mount("/docs/static", StaticFiles(directory=SWAGGER_UI), name="swagger-ui")

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request) -> JSONResponse:
        check_access(request, browser=False)
        return JSONResponse(app.openapi())

    @app.get("/docs/openapi-3.0.json", include_in_schema=False)
    async def openapi_30(request: Request) -> JSONResponse:
        check_access(request, browser=False)
        return JSONResponse(openapi_3_0(app.openapi()))

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        check_access(request, browser=False)
        root = request.scope.get("root_path", "").rstrip("/")  # as FastAPI's own /docs does
        return get_swagger_ui_html(
            openapi_url=f"{root}/docs/openapi-3.0.json",
            title=f"{app.title} API",
            swagger_js_url=f"{root}/docs/static/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/docs/static/swagger-ui.css",
            swagger_favicon_url=f"{root}/static/favicon.svg",
        )


NAMED_SCHEMAS = ("properties", "patternProperties", "$defs", "schemas")  # name -> schema maps


def openapi_3_0(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec``, an OpenAPI 3.1 document as FastAPI and pydantic write it, as OpenAPI 3.0.3: a
    schema ``anyOf [X, {"type": "null"}]`` becomes X with ``nullable: true``, a ``const`` an
    ``enum`` of one, a list of ``examples`` one ``example``, a numeric ``exclusiveMinimum`` or
    ``exclusiveMaximum`` the 3.0 boolean form; ``info.summary`` (3.1 only) becomes the
    description when there is none."""

    def convert(node: Any, names: bool = False) -> Any:
        if isinstance(node, list):
            return [convert(v) for v in node]
        if not isinstance(node, dict):
            return node
        if names:  # keys are names, not keywords
            return {k: convert(v) for k, v in node.items()}
        out = {k: convert(v, names=k in NAMED_SCHEMAS) for k, v in node.items()}
        options = out.get("anyOf")
        if isinstance(options, list) and {"type": "null"} in options:
            rest = [o for o in options if o != {"type": "null"}]
            del out["anyOf"]
            if len(rest) == 1 and "$ref" not in rest[0]:
                out = {**rest[0], **out}
            elif len(rest) == 1:
                out["allOf"] = rest  # 3.0 ignores what sits beside a $ref
            elif rest:
                out["anyOf"] = rest
            out["nullable"] = True
        if "const" in out:
            out["enum"] = [out.pop("const")]
        if isinstance(out.get("examples"), list):  # (a parameter's 3.0 `examples` is a map)
            examples = out.pop("examples")
            if examples:
                out["example"] = examples[0]
        for bound, limit in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
            value = out.get(bound)
            if isinstance(value, int | float) and not isinstance(value, bool):
                out[limit], out[bound] = value, True
        return out

    doc = convert(spec)
    doc["openapi"] = "3.0.3"
    info = doc.setdefault("info", {})
    summary = info.pop("summary", None)
    if summary and not info.get("description"):
        info["description"] = summary
    return doc


def capped(request: Request, cap: int, too_large: str) -> Request:
    """``request`` whose body refuses to be read past ``cap`` bytes (413 ``too_large``, saying
    ``too_large``): at once when its Content-Length says so, else as soon as more has arrived,
    so an oversized body is never held whole."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > cap:
        raise HttpError(413, "too_large", too_large)
    received = 0

    async def receive() -> dict[str, Any]:
        nonlocal received
        message = await request.receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > cap:
                raise HttpError(413, "too_large", too_large)
        return message

    return Request(request.scope, receive)


UPLOAD_CHUNK = 1 << 20  # bytes copied at a time from a multipart upload into its spool file


@contextlib.asynccontextmanager
async def spooled_upload(request: Request, limit: int) -> AsyncIterator[tuple[str, str]]:
    """The uploaded file's name and the path of a temporary copy of its bytes, refusing more
    than ``limit`` bytes of body. The body goes to disk as it arrives, so an upload waiting for
    a scoring slot holds a file, not its bytes in memory; the copy is removed on the way out."""
    too_large = f"the upload is over the {limit}-byte limit"
    capped_request = capped(request, limit + 64 * 1024, too_large)  # room for multipart framing
    content_type = request.headers.get("content-type", "")
    fd, path = tempfile.mkstemp(prefix="voicescreen-", suffix=".upload")
    try:
        with os.fdopen(fd, "wb") as spool:
            if content_type.startswith("multipart/form-data"):
                name = await _spool_form(capped_request, spool)
            else:
                async for chunk in capped_request.stream():
                    spool.write(chunk)
                name = request.query_params.get("filename")
            size = spool.tell()
        # a name to report (as given): no control characters (a NUL in one once
        # broke the temporary file), bounded length
        name = "".join(c for c in (name or "") if c.isprintable())[:200] or "upload"
        if size > limit:
            raise HttpError(413, "too_large", too_large)
        if not size:
            raise HttpError(400, "bad_request", "the upload is empty")
        yield name, path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


async def _spool_form(request: Request, spool: Any) -> str | None:
    """Copy a multipart body's field ``file`` into ``spool``; the name it was uploaded as.
    (Starlette keeps each part in memory up to 1 MiB, on disk beyond.)"""
    try:
        form = await request.form(max_files=1, max_fields=4)
    except HttpError:
        raise
    except Exception as e:  # python-multipart's parse errors
        raise HttpError(400, "bad_request", f"cannot parse the multipart body ({e})") from None
    try:
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise HttpError(400, "bad_request", "the multipart body has no file field 'file'")
        while chunk := await upload.read(UPLOAD_CHUNK):
            spool.write(chunk)
        return upload.filename
    finally:
        await form.close()


def _audio_error(e: AudioError, path: str, filename: str) -> HttpError:
    message = str(e).replace(path, filename)
    if isinstance(e, AudioTooLarge):
        return HttpError(413, "too_large", message)
    return HttpError(422, "bad_audio", message)


async def check_upload(state: AppState, path: str, filename: str) -> None:
    """Refuse an upload by its header, before it waits for a scoring slot: unreadable (422
    ``bad_audio``), a rate out of bounds (422), more than ``max_upload_samples`` decoded
    samples (413 ``too_large``) or ``max_upload_seconds`` of audio (413 ``too_long``)."""
    import soundfile as sf

    config = state.config
    try:
        info = await asyncio.to_thread(sf.info, path)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise HttpError(
            422, "bad_audio", f"{filename}: cannot read audio ({e})".replace(path, filename)
        ) from None
    try:
        frames = info.frames if info.frames < 1 << 62 else 0  # unknown: counted as decoded
        check_header(
            path, frames, info.channels, info.samplerate, SAMPLE_RATE, config.max_upload_samples
        )
    except AudioError as e:
        raise _audio_error(e, path, filename) from None
    seconds = info.frames / info.samplerate
    if seconds > config.max_upload_seconds:
        raise HttpError(
            413,
            "too_long",
            f"{seconds:.0f} s of audio; the limit is {config.max_upload_seconds:g} s",
        )


async def score_upload(
    state: AppState, model: str, filename: str, path: str, hop: float, channel: str | None
) -> dict[str, Any]:
    """Score the upload at ``path``, reported as ``filename``, off the event loop."""

    def work() -> dict[str, Any]:
        x, rate = read_audio(path, max_samples=state.config.max_upload_samples)
        scorer = state.scorer(model)
        result = scorer.score_signal(x, filename, hop, rate=rate, channel=channel)
        return result.to_dict(windows=True)

    try:
        return await asyncio.to_thread(work)
    except AudioError as e:
        raise _audio_error(e, path, filename) from None
