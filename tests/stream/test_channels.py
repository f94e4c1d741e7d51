"""Channel-aware calibration: a bundle's calibration per kind of audio (wideband, narrowband),
chosen per stream from its declared format and per file from its measured bandwidth.

Units: the card format (old cards still load), the bandwidth measure on the real corpus (its
wideband splits against its telephone eval split), the fit per channel, the worker applying a
stream's calibration. End to end: one real server on a loopback port hears the same speech over
``/v1/stream`` (16 kHz PCM16) and ``/v1/twilio`` (8 kHz mu-law), and each stream's events carry
and use its own calibration; ``/v1/score`` measures an uploaded file's channel; ``voicescreen
calibrate`` fits a real bundle's calibrations on real clips.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from web_support import dev_clip, run, start_server

from voicescreen.audio import (
    NARROWBAND,
    WIDEBAND,
    band_ratio_db,
    load_audio,
    measure_channel,
    read_audio,
)
from voicescreen.models.bundle import Calibration, ScoreSpec, load_bundle
from voicescreen.runtimes import open_runtime
from voicescreen.stream import AudioFormat, BatchOptions, InferenceWorker
from voicescreen.train.augment import channel as through
from voicescreen.train.calibrate import MIN_SCORES, fit, fit_channels
from voicescreen.train.data import load_split
from voicescreen.web.client import converse, mulaw_frames, pcm_messages, twilio_messages
from voicescreen.web.config import ServerConfig

WIDE = Calibration(threshold=1.0, scale=2.0)
NARROW = Calibration(threshold=-1.5, scale=0.5)
POOLED = (0.25, 1.25)  # threshold, scale


# --- the card ------------------------------------------------------------------------------------


def test_a_score_spec_picks_its_channel_and_old_cards_still_load() -> None:
    spec = ScoreSpec("bonafide_logit", *POOLED, channels=(("narrowband", NARROW),))
    narrow, used = spec.for_channel(NARROWBAND)
    assert used == "narrowband" and (narrow.threshold, narrow.scale) == (-1.5, 0.5)
    assert narrow.calibrate(0.5) == pytest.approx(0.5 * (0.5 + 1.5))
    # a channel the card has no calibration for, or none given: the pooled one
    for channel in (WIDEBAND, None):
        same, used = spec.for_channel(channel)
        assert used == "pooled" and (same.threshold, same.scale) == POOLED
    # the card round trip, and an old card (no channels)
    d = spec.to_dict()
    assert d["channels"] == {"narrowband": {"threshold": -1.5, "scale": 0.5}}
    assert ScoreSpec.from_dict(d) == spec
    old = {k: v for k, v in d.items() if k != "channels"}
    assert ScoreSpec.from_dict(old).for_channel(NARROWBAND)[1] == "pooled"
    with pytest.raises(ValueError, match="unknown channels"):
        ScoreSpec.from_dict({**d, "channels": {"satellite": {"threshold": 0}}})


# --- the kind of audio ----------------------------------------------------------------------------


def test_the_corpus_wideband_splits_and_its_telephone_split_are_told_apart(data_dir) -> None:
    """Every clip of ../shared/data: train and dev (G.722, 16 kHz) are wideband, eval (8 kHz
    mu-law, stored at 16 kHz) narrowband; a G.711 or GSM round trip makes a dev clip narrowband."""
    for split, want in (("train", WIDEBAND), ("dev", WIDEBAND), ("eval", NARROWBAND)):
        got = [measure_channel(*read_audio(u.path)) for u in load_split(data_dir, split)]
        assert got.count(want) == len(got), (split, got.count(want), len(got))
    x = load_audio(load_split(data_dir, "dev")[0].path)
    for name in ("mulaw", "mobile"):
        assert measure_channel(through(x, name)) == NARROWBAND
    assert measure_channel(x, 8000) == NARROWBAND  # an 8 kHz source, whatever its content
    assert band_ratio_db(np.zeros(100, np.float32)) is None


def test_a_stream_format_implies_its_channel() -> None:
    assert AudioFormat("mulaw", 8000).channel == NARROWBAND
    assert AudioFormat("alaw", 16000).channel == NARROWBAND  # G.711 is telephone audio
    assert AudioFormat("pcm16", 8000).channel == NARROWBAND
    assert AudioFormat("pcm16", 16000).channel == WIDEBAND
    assert AudioFormat("float32", 48000, 2).channel == WIDEBAND


# --- fitting --------------------------------------------------------------------------------------


def test_each_channel_gets_the_threshold_of_its_own_scores() -> None:
    rng = np.random.default_rng(0)
    n = 200
    labels = np.tile([True, False], n)
    # narrowband audio scores 3 lower than wideband for both classes
    base = np.where(labels, 1.0, -1.0) + rng.normal(0, 0.7, labels.size)
    kinds = np.array([WIDEBAND] * n + [NARROWBAND] * n)
    scores = base + np.where(kinds == NARROWBAND, -3.0, 0.0)
    fitted = fit_channels(scores, labels, kinds)
    wide, narrow = fitted.channels[WIDEBAND], fitted.channels[NARROWBAND]
    assert wide.threshold == pytest.approx(0.0, abs=0.35)
    assert narrow.threshold == pytest.approx(-3.0, abs=0.35)
    assert fitted.pooled.threshold < wide.threshold and fitted.pooled.threshold > narrow.threshold
    # the channel's own threshold is what fit() gives on its scores alone
    assert narrow == fit(scores[kinds == NARROWBAND], labels[kinds == NARROWBAND])
    assert fitted.counts == {WIDEBAND: (n // 2, n // 2), NARROWBAND: (n // 2, n // 2)}
    # a kind with too few scores of a class gets no calibration of its own
    few = kinds.copy()
    few[np.flatnonzero((kinds == NARROWBAND) & ~labels)[MIN_SCORES - 1 :]] = WIDEBAND
    assert set(fit_channels(scores, labels, few).channels) == {WIDEBAND}


def test_the_worker_calibrates_each_stream_for_its_channel() -> None:
    spec = ScoreSpec("bonafide_logit", *POOLED, channels=((NARROWBAND, NARROW), (WIDEBAND, WIDE)))

    def runtime(x: np.ndarray):
        return None, x[:, 0].astype(np.float64)  # the raw score is the first sample

    async def main():
        worker = InferenceWorker(
            runtime, name="m", input_samples=8, score=spec, options=BatchOptions(4, 5.0)
        )
        async with worker:
            x = np.full(8, 0.5, np.float32)
            return [await worker.score(x, ch) for ch in (NARROWBAND, WIDEBAND, None)]

    narrow, wide, pooled = asyncio.run(main())
    assert (narrow.calibration, wide.calibration, pooled.calibration) == (
        "narrowband",
        "wideband",
        "pooled",
    )
    assert narrow.calibrated == pytest.approx(0.5 * (0.5 + 1.5))
    assert wide.calibrated == pytest.approx(2.0 * (0.5 - 1.0))
    assert pooled.calibrated == pytest.approx(1.25 * (0.5 - 0.25))


# --- end to end: one server, the same speech over two transports ----------------------------------


@pytest.fixture(scope="module")
def bundle(export_aasist_l):
    return export_aasist_l(
        threshold=POOLED[0],
        scale=POOLED[1],
        name="channels",
        channels={WIDEBAND: WIDE, NARROWBAND: NARROW},
    )


@pytest.fixture(scope="module")
def server(bundle):
    server = start_server(ServerConfig(bundles=[bundle]))
    yield server
    server.stop()


def _check_stream(messages: list[dict], channel: str, cal: Calibration) -> int:
    started = messages[0]
    assert started["type"] == "started" and started["channel"] == channel
    assert started["models"]["channels"]["calibration"] == channel
    assert started["models"]["channels"]["threshold"] == cal.threshold
    scores = [m for m in messages if m["type"] == "score"]
    for m in scores:
        assert m["calibration"] == channel
        assert m["calibrated"] == pytest.approx(cal.scale * (m["raw"] - cal.threshold), abs=1e-9)
    summary = messages[-1]["models"]["channels"]
    assert summary["channel"] == channel and summary["calibration"] == channel
    return len(scores)


def test_a_twilio_call_and_a_wideband_stream_of_the_same_speech_get_their_own_calibration(
    server, data_dir
) -> None:
    clip = dev_clip(data_dir, "bonafide", 5.0, 7.0)
    wide = run(converse(server.ws_url("/v1/stream"), pcm_messages(clip), realtime=False))
    call = twilio_messages({"inbound": mulaw_frames(clip)})
    narrow = run(converse(server.ws_url("/v1/twilio"), call, realtime=False))
    assert wide.close_code == narrow.close_code == 1000
    assert not wide.errors and not narrow.errors
    assert _check_stream(wide.messages, WIDEBAND, WIDE) >= 2
    assert _check_stream(narrow.messages, NARROWBAND, NARROW) >= 2
    # a 16 kHz stream that declares itself narrowband (a phone call upsampled upstream)
    declared = pcm_messages(clip, channel=NARROWBAND)
    told = run(converse(server.ws_url("/v1/stream"), declared, realtime=False))
    assert _check_stream(told.messages, NARROWBAND, NARROW) >= 2
    # an unknown channel is refused at the start
    bad = run(converse(server.ws_url("/v1/stream"), pcm_messages(clip, channel="satellite")))
    assert bad.errors and bad.errors[0]["code"] == "bad_start"
    assert "channel must be one of" in bad.errors[0]["message"]


def test_an_uploaded_file_is_calibrated_for_its_measured_channel(server, data_dir, tmp_path):
    clip = dev_clip(data_dir, "bonafide", 4.0, 6.0)
    phone = tmp_path / "phone.wav"
    sf.write(phone, load_audio(clip, 8000), 8000, subtype="PCM_16")

    def score(path: Path, **params) -> httpx.Response:
        with path.open("rb") as f:
            return httpx.post(
                server.url("/v1/score"), params=params, files={"file": f}, timeout=120
            )

    for path, params, channel, cal in (
        (clip, {}, WIDEBAND, WIDE),
        (phone, {}, NARROWBAND, NARROW),
        (phone, {"channel": WIDEBAND}, WIDEBAND, WIDE),
    ):
        r = score(path, **params)
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["channel"], body["calibration"]) == (channel, channel)
        assert body["threshold"] == cal.threshold
        for w in body["windows"]:
            assert w["calibrated"] == pytest.approx(cal.scale * (w["score"] - cal.threshold))
    r = score(phone, channel="satellite")
    assert r.status_code == 422 and "channel must be one of" in r.text


# --- voicescreen calibrate ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def calibration_corpus(tmp_path_factory, data_dir) -> Path:
    """12 bona fide and 12 spoof clips of the real dev split, in the flat layout."""
    root = tmp_path_factory.mktemp("calibration-corpus")
    (root / "flac").mkdir()
    (root / "protocols").mkdir()
    dev = load_split(data_dir, "dev")
    picked = [u for u in dev if u.is_bonafide][:12] + [u for u in dev if not u.is_bonafide][:12]
    for u in picked:
        (root / "flac" / u.path.name).symlink_to(u.path)
    lines = [f"{u.speaker} {u.file} - {u.attack} {u.label}" for u in picked]
    (root / "protocols" / "VS.cm.dev.trl.txt").write_text("\n".join(lines) + "\n")
    return root


def test_calibrate_fits_pooled_and_per_channel_calibrations(
    gmm_bundle, calibration_corpus, tmp_path
) -> None:
    out = tmp_path / "recalibrated"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "voicescreen",
            "calibrate",
            "--bundle",
            str(gmm_bundle),
            "--data-root",
            str(calibration_corpus),
            "--channels",
            "clean,mulaw",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "narrowband" in done.stdout and "wideband" in done.stdout
    source, made = load_bundle(gmm_bundle), load_bundle(out)
    assert made.files["model.onnx"] == source.files["model.onnx"]  # only the card changed
    card = made.card["calibration"]
    assert card["channels"] == ["clean", "mulaw"] and card["clips"] == 24
    assert card["fitted"]["counts"] == {
        WIDEBAND: {"bonafide": 12, "spoof": 12},
        NARROWBAND: {"bonafide": 12, "spoof": 12},
    }
    # the same fit, computed here from the bundle's own scores of the same windows
    from voicescreen.train.evaluate import score_utterances

    utts = load_split(calibration_corpus, "dev")
    labels = np.array([u.is_bonafide for u in utts])
    runtime = open_runtime(source, "onnx")
    for name, kind in (("clean", WIDEBAND), ("mulaw", NARROWBAND)):
        scores = score_utterances(lambda x: runtime(x)[1], utts, source.input_samples, name)
        spec, used = made.score.for_channel(kind)
        want = fit(scores, labels)
        assert used == kind
        assert (spec.threshold, spec.scale) == pytest.approx((want.threshold, want.scale))
    assert json.loads((out / "card.json").read_text())["score"]["channels"].keys() == {
        WIDEBAND,
        NARROWBAND,
    }


def test_eval_judges_each_clip_at_its_channel_threshold() -> None:
    from voicescreen.train.data import Utterance
    from voicescreen.train.evaluate import compute_figures

    labels = ["bonafide", "bonafide", "spoof", "spoof"]
    utts = [
        Utterance("s", f"f{i}", "-" if b == "bonafide" else "A01", b, Path(f"f{i}"))
        for i, b in enumerate(labels)
    ]
    scores = np.array([0.5, -1.0, 0.2, -2.0])
    # one threshold: 0.0 accepts clip 0 and the spoof at 0.2
    one = compute_figures(utts, scores, 0.0)
    assert (one.bonafide_accepted, one.spoof_rejected, one.calibrations) == (0.5, 0.5, {})
    # clips 1 and 3 are narrowband, judged at -1.5: clip 1 is now accepted, clip 3 still rejected
    cut = [("wideband", 0.0), ("narrowband", -1.5), ("wideband", 0.0), ("narrowband", -1.5)]
    per = compute_figures(utts, scores, 0.0, calibrations=cut)
    assert (per.bonafide_accepted, per.spoof_rejected, per.accuracy) == (1.0, 0.5, 0.75)
    assert per.calibrations == {
        "wideband": {"clips": 2, "threshold": 0.0},
        "narrowband": {"clips": 2, "threshold": -1.5},
    }
    assert per.eer == one.eer  # the EER is the model's, whatever the calibration


def test_the_fit_reports_each_channel_at_the_pooled_and_its_own_threshold() -> None:
    labels = np.array([True] * 12 + [False] * 12 + [True] * 12 + [False] * 12)
    kinds = np.array([WIDEBAND] * 24 + [NARROWBAND] * 24)
    # wideband separates at 0, narrowband at -2: the pooled threshold lies between
    scores = np.concatenate([np.linspace(0.5, 3, 12), np.linspace(-3, -0.5, 12)])
    scores = np.concatenate([scores, scores - 2.0])
    f = fit_channels(scores, labels, kinds).figures
    assert f[WIDEBAND]["eer"] == f[NARROWBAND]["eer"] == 0.0
    for kind in (WIDEBAND, NARROWBAND):
        assert f[kind]["bonafide_accepted_at_own"] == f[kind]["spoof_rejected_at_own"] == 1.0
    # at the pooled threshold (between the two) wideband spoofs pass or narrowband humans fail
    paid = (f[WIDEBAND]["spoof_rejected_at_pooled"], f[NARROWBAND]["bonafide_accepted_at_pooled"])
    assert min(paid) < 1.0
