"""Who may use the API: a bearer token (when the server has one) and, for browsers, an origin
allow-list.

A token is read from ``Authorization: Bearer TOKEN``, or from a ``token`` query parameter for
clients that cannot set headers (a browser's WebSocket). Twilio can send neither, so
``/v1/twilio`` also takes it from the start message's ``customParameters.token``.

A browser names the page that opened a connection in ``Origin``: the server's own origin (the
demo page) is always allowed, others only when listed. Requests without ``Origin`` (not from a
browser) are left to the token.

Twilio signs each request it makes, the WebSocket upgrade of a Media Stream included, with
``X-Twilio-Signature``: base64 HMAC-SHA1, keyed by the account's Auth Token, of the URL it
requested (followed, for a form POST, by the parameters sorted by name, each name then its value;
the upgrade is a GET and signs the URL alone). With the Auth Token configured, ``/v1/twilio``
recomputes it on the URL Twilio was given (``public_url`` behind a proxy) and refuses a request
whose signature is missing or wrong.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from voicescreen.web.config import ServerConfig


def presented_token(
    headers: Mapping[str, str], query: Mapping[str, str] | None = None
) -> str | None:
    """The token a request carries, if any: its bearer token, or ``query``'s ``token`` (given
    only for WebSockets, which a browser cannot give headers; elsewhere a token in the URL would
    end up in histories and logs)."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return (query or {}).get("token") or None


def token_ok(config: ServerConfig, token: str | None) -> bool:
    """True when the server has no token, or ``token`` is it (compared in constant time)."""
    if config.token is None:
        return True
    if token is None:
        return False
    return hmac.compare_digest(token.encode(), config.token.encode())


WEB_SCHEMES = {"http": "http", "ws": "http", "https": "https", "wss": "https"}


def origin_ok(
    config: ServerConfig, origin: str | None, host: str | None, scheme: str = "http"
) -> bool:
    """May a page from ``origin`` use a server reached as ``host`` (the Host header) over
    ``scheme`` (the request's: http, https, ws or wss)? The page's own origin is the request's
    scheme and host (or ``public_url``'s, behind a proxy), scheme included: a page served over
    plain http may not drive the server reached over https."""
    if origin is None:
        return True
    if "*" in config.allowed_origins or origin in config.allowed_origins:
        return True
    if origin == "null":
        return False
    own = {f"{WEB_SCHEMES.get(scheme, scheme)}://{host.lower()}"} if host else set()
    if config.public_url:
        public = urlsplit(config.public_url)
        own.add(f"{WEB_SCHEMES.get(public.scheme, public.scheme)}://{public.netloc.lower()}")
    return origin.lower() in own


LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


def host_name(host: str) -> str:
    """The name in a ``Host`` header, without its port and brackets, lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end > 0 else host
    name, colon, port = host.rpartition(":")
    if colon and port.isdigit() and ":" not in name:
        host = name
    return host.rstrip(".")


def allowed_hosts(config: ServerConfig, server_address: str | None) -> tuple[str, ...]:
    """The host names a request may name in ``Host``: ``allowed_hosts``, or by default the
    loopback names, the address the request came in on and ``public_url``'s host."""
    if config.allowed_hosts is not None:
        return tuple(host_name(h) if h != "*" else h for h in config.allowed_hosts)
    hosts = [*LOCAL_HOSTS]
    if server_address:
        hosts.append(host_name(server_address))
    if config.public_url:
        hosts.append((urlsplit(config.public_url).hostname or "").lower())
    return tuple(hosts)


def host_ok(config: ServerConfig, host: str | None, server_address: str | None) -> bool:
    """Does the server answer to ``host`` (the Host header)? A page on another name that has
    been made to resolve to this server (DNS rebinding) names that other name. No Host header
    (HTTP/1.0; never a browser) is let through."""
    if host is None:
        return True
    name = host_name(host)
    for allowed in allowed_hosts(config, server_address):
        if allowed == "*" or name == allowed:
            return True
        if allowed.startswith("*.") and name.endswith(allowed[1:]):
            return True
    return False


TWILIO_SIGNATURE = "x-twilio-signature"
DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}
WEBSOCKET_SCHEMES = {"http": "ws", "https": "wss"}


def twilio_signature(auth_token: str, url: str, params: Mapping[str, str] | None = None) -> str:
    """Twilio's signature of a request to ``url``: base64 HMAC-SHA1 keyed by ``auth_token`` of
    the URL, then (a form POST) each parameter's name and value in the order of their names."""
    data = url + "".join(name + params[name] for name in sorted(params or {}))
    digest = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def port_variants(url: str) -> list[str]:
    """``url`` as given, without its port, and with its scheme's default port: Twilio does not
    always sign the port the way it was written, and its own validators accept each form."""
    parts = urlsplit(url)
    out = [url]
    port = parts.port
    if port is not None and parts.netloc.endswith(f":{port}"):
        out.append(urlunsplit(parts._replace(netloc=parts.netloc[: -len(f":{port}")])))
    elif port is None and parts.scheme in DEFAULT_PORTS:
        netloc = f"{parts.netloc}:{DEFAULT_PORTS[parts.scheme]}"
        out.append(urlunsplit(parts._replace(netloc=netloc)))
    return out


def websocket_url(config: ServerConfig, scope: Mapping[str, Any]) -> str:
    """The URL a WebSocket request was made to, as its client named it: ``public_url`` (http
    and https read as ws and wss) plus the request's path and query when the server has one,
    else the scheme, the ``Host`` header, the path and the query the server received."""
    raw_path = scope.get("raw_path") or scope["path"].encode()
    target = raw_path.decode("latin-1")
    query = scope.get("query_string", b"").decode("latin-1")
    if query:
        target += "?" + query
    if config.public_url:
        base = urlsplit(config.public_url)
        scheme = WEBSOCKET_SCHEMES.get(base.scheme, base.scheme)
        return f"{scheme}://{base.netloc}{base.path.rstrip('/')}{target}"
    host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
    return f"{scope.get('scheme', 'ws')}://{host}{target}"


def twilio_signature_ok(config: ServerConfig, signature: str | None, url: str) -> bool:
    """True when the server checks no Twilio signatures, or ``signature`` (the header) is
    Twilio's for ``url`` (in one of its port forms), compared in constant time."""
    if config.twilio_auth_token is None:
        return True
    if not signature:
        return False
    given = signature.strip().encode("latin-1", "replace")
    ok = False
    for candidate in port_variants(url):
        expected = twilio_signature(config.twilio_auth_token, candidate).encode()
        ok |= hmac.compare_digest(expected, given)
    return ok
