"""``/docs`` works offline: Swagger UI comes from the installed ``swagger_ui_bundle``
package, served by the server itself, never from a CDN. Checked over HTTP (the page names only
local URLs, and they serve the right files) and in Debian's headless Chromium with every request
to another host refused: the operation list must render.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
import swagger_ui_bundle
from web_support import start_server

from voicescreen.web.app import openapi_3_0
from voicescreen.web.config import ServerConfig

CHROMIUM = Path("/usr/bin/chromium")
WAIT_MS = 60_000
OPERATIONS = ["/healthz", "/metrics", "/v1/models", "/v1/score", "/v1/rtc/offer"]


@pytest.fixture(scope="module")
def server():
    server = start_server(ServerConfig())  # the shipped default bundle: quick to load
    yield server
    server.stop()


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.headers.get("content-type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("content-type", ""), e.read()


def test_docs_page_names_only_local_files_and_they_are_served(server):
    status, kind, body = get(server.url("/docs"))
    assert status == 200 and kind.startswith("text/html")
    html = body.decode()
    assert not re.search(r"https?://", html), html  # nothing from a CDN, nor any other host
    refs = re.findall(r'(?:href|src)="([^"]+)"', html) + re.findall(r"url: '([^']+)'", html)
    want = {
        "/docs/static/swagger-ui-bundle.js": "javascript",
        "/docs/static/swagger-ui.css": "text/css",
        "/static/favicon.svg": "image/svg+xml",
        "/docs/openapi-3.0.json": "application/json",
    }
    assert sorted(refs) == sorted(want), refs
    for ref, content_type in want.items():
        status, kind, body = get(urljoin(server.url("/docs"), ref))
        assert status == 200 and content_type in kind, (ref, status, kind)
        assert body, ref
    local = Path(str(swagger_ui_bundle.swagger_ui_path)) / "swagger-ui-bundle.js"
    assert get(server.url("/docs/static/swagger-ui-bundle.js"))[2] == local.read_bytes()
    assert get(server.url("/redoc"))[0] == 404  # ReDoc would come from a CDN: not offered


def test_docs_schema_is_the_api_in_openapi_3_0(server):
    """The bundled Swagger UI (4.x) reads OpenAPI 3.0; /openapi.json stays FastAPI's 3.1."""
    import json

    full = json.loads(get(server.url("/openapi.json"))[2])
    ui = json.loads(get(server.url("/docs/openapi-3.0.json"))[2])
    assert full["openapi"].startswith("3.1") and ui["openapi"] == "3.0.3"
    assert sorted(ui["paths"]) == sorted(full["paths"]) == sorted(OPERATIONS)
    assert "/docs" not in full["paths"] and "/docs/openapi-3.0.json" not in full["paths"]
    model = next(p for p in ui["paths"]["/v1/score"]["post"]["parameters"] if p["name"] == "model")
    assert model["schema"] == {"type": "string", "title": "Model", "nullable": True}
    assert '"type": "null"' not in json.dumps(ui)  # no 3.1 null type anywhere


def test_openapi_3_0_conversion():
    ref = {"$ref": "#/components/schemas/A"}
    spec = {
        "openapi": "3.1.0",
        "info": {"title": "t", "summary": "s", "version": "1"},
        "components": {
            "schemas": {
                "A": {
                    "type": "object",
                    "properties": {
                        "const": {"const": "x", "type": "string"},  # a field named like a keyword
                        "n": {"type": "number", "exclusiveMinimum": 0, "examples": [2.5, 3]},
                        "a": {"anyOf": [ref, {"type": "null"}], "description": "d"},
                        "b": {"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]},
                    },
                }
            }
        },
    }
    out = openapi_3_0(spec)
    assert out["openapi"] == "3.0.3" and out["info"] == {
        "title": "t",
        "version": "1",
        "description": "s",
    }
    props = out["components"]["schemas"]["A"]["properties"]
    assert props["const"] == {"enum": ["x"], "type": "string"}
    assert props["n"] == {
        "type": "number",
        "minimum": 0,
        "exclusiveMinimum": True,
        "example": 2.5,
    }
    assert props["a"] == {"allOf": [ref], "description": "d", "nullable": True}
    assert props["b"] == {"anyOf": [{"type": "string"}, {"type": "integer"}], "nullable": True}
    assert spec["openapi"] == "3.1.0" and "summary" in spec["info"]  # the input is left alone


def test_docs_render_in_a_browser_without_internet(server):
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    ours = urlsplit(server.url("/")).netloc
    refused: list[str] = []

    def only_ours(route) -> None:
        if urlsplit(route.request.url).netloc == ours:
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort("internetdisconnected")

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page()
            page.route("**/*", only_ours)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: m.type == "error" and errors.append(m.text))
            page.goto(server.url("/docs"))
            page.wait_for_selector(".opblock-summary-path", timeout=WAIT_MS)
            paths = page.locator(".opblock-summary-path").all_inner_texts()
            title = page.locator(".information-container .title").inner_text()
            score = page.get_by_text("/v1/score", exact=True)
            assert score.is_visible()
        finally:
            browser.close()
    assert sorted(p.replace("\u200b", "") for p in paths) == sorted(OPERATIONS), paths
    assert title.startswith("voicescreen"), title
    assert not refused, refused
    assert not errors, errors
