"""``serve --screen``: a cascade in the server. A cheap screen (LFCC-GMM) scores every window of
every stream; windows it finds close go on to the model the stream asked for. Real server, real
WebSocket client, real models."""

from __future__ import annotations

from dataclasses import replace

import httpx
import pytest
from web_support import dev_clip, parse_metrics, run, start_server, web_bundle

from voicescreen.models.bundle import load_bundle
from voicescreen.web.client import converse, pcm_messages
from voicescreen.web.config import ServerConfig
from voicescreen.web.state import ConfigError


@pytest.fixture(scope="module")
def bundle(export_aasist_l):
    return web_bundle(export_aasist_l)


@pytest.fixture(scope="module")
def clip(data_dir):
    return dev_clip(data_dir, "bonafide", 6.0, 12.0)


def stream_through(bundle, screen, band: float, clip) -> tuple[list[dict], dict, dict]:
    config = ServerConfig(bundles=[bundle], screen=screen, cascade_band=band)
    with start_server(config) as server:
        models = httpx.get(server.url("/v1/models")).json()
        result = run(converse(server.ws_url("/v1/stream"), pcm_messages(clip), realtime=False))
        metrics = parse_metrics(httpx.get(server.url("/metrics")).text)
    return result.messages, models, metrics


@pytest.mark.parametrize("band", [0.0, 1e9], ids=["nothing-escalated", "all-escalated"])
def test_cascade_screens_every_window_and_escalates_the_close_ones(bundle, gmm_bundle, clip, band):
    screen = load_bundle(gmm_bundle)
    messages, models, metrics = stream_through(bundle, gmm_bundle, band, clip)
    (model,) = models["models"]
    assert model["name"] == bundle.name
    assert model["cascade"] == {"screen": screen.name, "band": band}
    scores = [m for m in messages if m["type"] == "score"]
    assert messages[-1]["type"] == "summary" and len(scores) >= 3
    # Every window was screened; each event says whose score it carries.
    assert all(m["model"] == bundle.name and m["screen"] is not None for m in scores)
    escalated = [m for m in scores if m["scored_by"] == bundle.name]
    kept = [m for m in scores if m["scored_by"] == screen.name]
    assert len(escalated) + len(kept) == len(scores)
    if band == 0:
        assert not escalated  # a screen score of exactly 0 does not happen on real speech
        assert all(m["calibrated"] == m["screen"] for m in kept)
    else:
        assert not kept
        assert any(m["calibrated"] != m["screen"] for m in escalated)
    label = f'{{model="{bundle.name}"}}'
    assert metrics[f"voicescreen_cascade_screened_total{label}"] == len(scores)
    assert metrics[f"voicescreen_cascade_escalated_total{label}"] == len(escalated)
    assert metrics[f"voicescreen_cascade_escalations_shed_total{label}"] == 0
    assert metrics[f'voicescreen_worker_scored_total{{model="{screen.name}"}}'] == len(scores)
    assert metrics[f"voicescreen_worker_scored_total{label}"] == len(escalated)


def test_cascade_refuses_a_screen_it_cannot_pair(bundle, gmm_bundle):
    with pytest.raises(ConfigError, match="also a served model"):
        start_server(ServerConfig(bundles=[bundle], screen=bundle))
    screen = load_bundle(gmm_bundle)
    other = replace(screen, card={**screen.card, "input_samples": 64000})
    with pytest.raises(ConfigError, match="same windows"):
        start_server(ServerConfig(bundles=[bundle], screen=other))
    with pytest.raises(ValueError, match="cascade-band"):
        ServerConfig(bundles=[bundle], screen=bundle, cascade_band=-1)
