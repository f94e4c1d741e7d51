"""X-Twilio-Signature on /v1/twilio: with the account's Auth Token configured, the server admits a
Media Stream only when its WebSocket upgrade carries Twilio's signature of the URL Twilio was given
(base64 HMAC-SHA1 keyed by the Auth Token); the signatures here are computed in the test itself,
with hmac and hashlib, from Twilio's description. Other endpoints do not ask for it."""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json

import httpx
import pytest
from web_support import dev_clip, parse_metrics, run, start_server, web_bundle
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from voicescreen.cli.serve import TWILIO_AUTH_TOKEN_ENV, add_parsers, config_from_args
from voicescreen.web.auth import twilio_signature
from voicescreen.web.client import converse, mulaw_frames, pcm_messages, twilio_messages
from voicescreen.web.config import ServerConfig

AUTH_TOKEN = "0123456789abcdef0123456789abcdef"  # an account's Auth Token: 32 hex digits
PUBLIC = "wss://screen.example.com/voice"  # the server as Twilio reaches it, through a proxy


def sign(url: str, key: str = AUTH_TOKEN) -> str:
    """What Twilio sends for a WebSocket upgrade (a GET: the URL alone is signed)."""
    return base64.b64encode(hmac.new(key.encode(), url.encode(), hashlib.sha1).digest()).decode()


@pytest.fixture(scope="module")
def bundle(export_aasist_l):
    return web_bundle(export_aasist_l)


@pytest.fixture(scope="module")
def server(bundle):
    server = start_server(ServerConfig(bundles=[bundle], twilio_auth_token=AUTH_TOKEN))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def proxied(bundle):
    config = ServerConfig(bundles=[bundle], twilio_auth_token=AUTH_TOKEN, public_url=PUBLIC)
    server = start_server(config)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def call(data_dir):
    """A 2-second Twilio call."""
    frames = mulaw_frames(dev_clip(data_dir, "bonafide", 4.0, 4.3))[:100]
    return twilio_messages({"inbound": frames})


def twilio_call(url: str, messages, signature: str | None):
    headers = {} if signature is None else {"X-Twilio-Signature": signature}
    return run(converse(url, messages, realtime=False, headers=headers))


async def refusal(url: str, signature: str | None):
    headers = {} if signature is None else {"X-Twilio-Signature": signature}
    with pytest.raises(InvalidStatus) as e:
        await connect(url, additional_headers=headers)
    return e.value.response


def check_refused(response, detail: str):
    assert response.status_code == 403
    assert json.loads(response.body) == {"detail": detail, "code": "bad_signature"}


def test_the_signature_is_twilios():
    """Twilio's own worked example (a form POST: the URL, then the parameters by name)."""
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": "+14158675309",
        "Digits": "1234",
        "From": "+14158675309",
        "To": "+18005551212",
    }
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    assert twilio_signature("12345", url, params) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    assert twilio_signature(AUTH_TOKEN, "wss://a.example/v1/twilio") == sign(
        "wss://a.example/v1/twilio"
    )


def test_a_signed_stream_is_screened(server, call):
    url = server.ws_url("/v1/twilio")
    result = twilio_call(url, call, sign(url))
    assert result.close_code == 1000 and not result.errors
    assert result.messages[0]["type"] == "started"
    summary = result.messages[-1]
    assert summary["type"] == "summary" and summary["reason"] == "end"
    assert summary["duration"] == pytest.approx(2.0, abs=0.01)
    # Twilio's signing is loose about ports: its validators take the URL without it too
    bare = url.replace(f":{server.port}", "")
    assert twilio_call(url, call, sign(bare)).messages[-1]["reason"] == "end"
    # a query string is part of what is signed
    query = url + "?call=42"
    assert twilio_call(query, call, sign(query)).messages[-1]["reason"] == "end"


def test_a_missing_or_wrong_signature_is_refused(server):
    url = server.ws_url("/v1/twilio")

    async def main():
        return [
            await refusal(url, None),
            await refusal(url, sign(url, key="f" * 32)),  # another account's token
            await refusal(url, sign(server.ws_url("/v1/stream"))),  # another URL
            await refusal(url + "?call=43", sign(url + "?call=42")),  # another query
            await refusal(url, sign(url) + "x"),
        ]

    missing, *wrong = run(main())
    check_refused(missing, "missing X-Twilio-Signature")
    for response in wrong:
        check_refused(response, "wrong X-Twilio-Signature")
    m = parse_metrics(httpx.get(server.url("/metrics")).text)
    assert m['voicescreen_streams_rejected_total{transport="twilio",code="bad_signature"}'] == 5


def test_other_endpoints_need_no_signature(server, data_dir):
    path = dev_clip(data_dir, "bonafide", 4.0, 4.3)
    result = run(converse(server.ws_url("/v1/stream"), pcm_messages(path), realtime=False))
    assert result.close_code == 1000 and result.messages[-1]["reason"] == "end"
    assert httpx.get(server.url("/v1/models")).status_code == 200
    assert httpx.get(server.url("/healthz")).status_code == 200


def test_behind_a_proxy_the_public_url_is_what_twilio_signed(proxied, call):
    url = proxied.ws_url("/v1/twilio")  # where the proxy forwards to
    result = twilio_call(url, call, sign(f"{PUBLIC}/v1/twilio"))
    assert result.close_code == 1000 and result.messages[-1]["reason"] == "end"

    async def main():
        return await refusal(url, sign(url))  # the URL the server sees is not the one signed

    check_refused(run(main()), "wrong X-Twilio-Signature")


def test_the_serve_flags(monkeypatch):
    parser = argparse.ArgumentParser(prog="voicescreen")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    config = config_from_args(parser.parse_args(["serve"]))
    assert config.twilio_auth_token is None and config.public_url is None
    assert (config.max_realtime_factor, config.realtime_burst_seconds) == (4.0, 5.0)
    assert config.rate_limit == "throttle"
    args = parser.parse_args(
        [
            "serve",
            "--max-realtime-factor",
            "0",
            "--realtime-burst",
            "2",
            "--rate-limit",
            "close",
            "--twilio-auth-token",
            AUTH_TOKEN,
            "--public-url",
            PUBLIC,
        ]
    )
    config = config_from_args(args)
    assert config.max_realtime_factor is None and config.realtime_burst_seconds == 2.0
    assert config.rate_limit == "close" and config.twilio_auth_token == AUTH_TOKEN
    assert config.public_url == PUBLIC
    monkeypatch.setenv(TWILIO_AUTH_TOKEN_ENV, "from-the-environment")
    config = config_from_args(parser.parse_args(["serve"]))
    assert config.twilio_auth_token == "from-the-environment"
    with pytest.raises(ValueError, match="public_url"):
        ServerConfig(public_url="screen.example.com")
