"""voicescreen.web: the HTTP/WebSocket/WebRTC server and the demo page.

Transport only: endpoints turn frames into audio for ``voicescreen.stream`` sessions and the
sessions' events into messages. ``create_app(ServerConfig(...))`` builds a server; see
``docs/server.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from voicescreen.web.config import ServerConfig

if TYPE_CHECKING:
    from fastapi import FastAPI


def create_app(config: ServerConfig) -> FastAPI:
    """A FastAPI app for ``config`` (``voicescreen.web.app``; FastAPI is imported on first use)."""
    from voicescreen.web.app import create_app as _create_app

    return _create_app(config)


__all__ = ["ServerConfig", "create_app"]
