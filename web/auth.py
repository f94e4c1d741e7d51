"""Who may use the API: a bearer token (when the server has one) and, for browsers, an origin
allow-list.

A token is read from ``Authorization: Bearer TOKEN``, or from a ``token`` query parameter for
clients that cannot set headers (a browser's WebSocket). Twilio can send neither, so
``/v1/twilio`` also takes it from the start message's ``customParameters.token``.

A browser names the page that opened a connection in ``Origin``: the server's own origin (the
demo page) is always allowed, others only when listed. Requests without ``Origin`` (not from a
browser) are left to the token.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from urllib.parse import urlsplit

from voicescreen.web.config import ServerConfig


def presented_token(headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    """The token a request carries, if any."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return query.get("token") or None


def token_ok(config: ServerConfig, token: str | None) -> bool:
    """True when the server has no token, or ``token`` is it (compared in constant time)."""
    if config.token is None:
        return True
    if token is None:
        return False
    return hmac.compare_digest(token.encode(), config.token.encode())


def origin_ok(config: ServerConfig, origin: str | None, host: str | None) -> bool:
    """May a page from ``origin`` use a server reached as ``host`` (the Host header)?"""
    if origin is None:
        return True
    if "*" in config.allowed_origins or origin in config.allowed_origins:
        return True
    if origin == "null":
        return False
    return bool(host) and urlsplit(origin).netloc.lower() == host.lower()
