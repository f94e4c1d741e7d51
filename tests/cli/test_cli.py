"""The command line, end to end: import official weights, score real clips, list bundles."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from voicescreen.audio import SAMPLE_RATE, load_audio, sliding_windows
from voicescreen.models.registry import get_architecture


def run(*args, home, check=True):
    env = {**os.environ, "VOICESCREEN_HOME": str(home)}
    p = subprocess.run(
        [sys.executable, "-m", "voicescreen", *args], capture_output=True, text=True, env=env
    )
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}: {p.stderr}")
    return p


@pytest.fixture(scope="module")
def home(tmp_path_factory, reference_dir):
    home = tmp_path_factory.mktemp("home")
    p = run("import-weights", "aasist-l", str(reference_dir / "aasist" / "AASIST-L.pth"), home=home)
    assert "official weights" in p.stdout
    return home


@pytest.fixture(scope="module")
def model(reference_dir):
    m = get_architecture("aasist-l").build()
    path = reference_dir / "aasist" / "AASIST-L.pth"
    m.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return m


def test_import_weights_writes_an_attributed_bundle(home):
    card = json.loads((home / "bundles" / "aasist-l-official" / "card.json").read_text())
    assert card["provenance"]["official_weights"] is True
    assert "NAVER" in card["provenance"]["attribution"]
    assert card["metrics"]["published"]["eer_percent"] == 0.99


def test_score_windows_match_the_model(home, model, data_dir, tmp_path):
    clip = data_dir / "flac" / "VS_D_00601.flac"
    x = load_audio(clip)
    # a long, stereo, 44.1 kHz version of the same speech, to exercise windows and conversion
    long = np.tile(x, 3)
    sf.write(tmp_path / "long.wav", np.stack([long, long], 1), SAMPLE_RATE, subtype="FLOAT")
    p = run("score", str(clip), str(tmp_path / "long.wav"), "--bundle", "aasist-l-official",
            "--windows", "--hop", "1.5", "--json", home=home)  # fmt: skip
    short, longer = (json.loads(line) for line in p.stdout.splitlines())
    wins = list(sliding_windows(np.tile(x, 3), 64600, int(1.5 * SAMPLE_RATE)))
    assert len(longer["windows"]) == len(wins) > 3
    with torch.inference_mode():
        want = model(torch.from_numpy(np.stack([w.samples for w in wins])))[:, 1].numpy()
    got = np.array([w["score"] for w in longer["windows"]])
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert longer["score"] == pytest.approx(float(want.mean()), abs=1e-4)
    assert [w["start"] for w in longer["windows"]] == [w.start / SAMPLE_RATE for w in wins]
    assert len(short["windows"]) == len(list(sliding_windows(x, 64600, int(1.5 * SAMPLE_RATE))))
    # the verdict rule on the mean (hysteresis from uncertain: +-0.5), the clip being all speech
    assert short["speech"] >= 1.0 and short["reason"] is None
    want = (
        "bonafide"
        if short["calibrated"] >= 0.5
        else "spoof"
        if short["calibrated"] <= -0.5
        else "uncertain"
    )
    assert short["verdict"] == want


def test_unreadable_files_are_reported_and_the_rest_scored(home, data_dir, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    good = data_dir / "flac" / "VS_D_00601.flac"
    p = run("score", str(bad), str(good), "--bundle", "aasist-l-official", home=home, check=False)
    assert p.returncode == 1
    assert "bad.wav: error: " in p.stderr and "cannot read audio" in p.stderr
    assert p.stderr.count(str(bad)) == 1  # the path once
    assert str(good) in p.stdout and "1 of 2 files could not be read" in p.stderr
    missing = tmp_path / "missing.wav"
    p = run("score", str(missing), "--bundle", "aasist-l-official", home=home, check=False)
    assert p.returncode == 1 and f"{missing}: error: no such file\n" in p.stderr


def test_missing_bundle_is_a_clear_error(home, data_dir):
    p = run("score", str(data_dir / "flac" / "VS_D_00601.flac"), "--bundle", "nope",
            home=home, check=False)  # fmt: skip
    assert p.returncode == 2 and "no bundle 'nope'" in p.stderr
    # it says what it looked for and where, with no bare "(default)" to puzzle over
    assert "(installed: default, " in p.stderr and "voicescreen models" in p.stderr


def test_import_rejects_weights_of_another_architecture(home, reference_dir, tmp_path):
    p = run("import-weights", "aasist", str(reference_dir / "aasist" / "AASIST-L.pth"),
            "--out", str(tmp_path / "x"), home=home, check=False)  # fmt: skip
    assert p.returncode == 2 and "does not fit the aasist architecture" in p.stderr
    assert not (tmp_path / "x").exists()


def test_models_lists_installed_bundles(home):
    listing = json.loads(run("models", "--json", home=home).stdout)
    names = {b["name"]: b for b in listing["bundles"]}
    assert names["aasist-l-official"]["architecture"] == "aasist-l"
    assert "lcnn" in listing["architectures"]
    broken = home / "bundles" / "broken"
    broken.mkdir()
    (broken / "card.json").write_text("{}")
    listing = json.loads(run("models", "--json", home=home).stdout)
    assert "error" in {b["name"]: b for b in listing["bundles"]}["broken"]
    # the table: every description starts in one column, whatever the architecture's name
    text = run("models", home=home).stdout.split("Architectures:")[1].splitlines()[1:]
    starts = {line.index(desc) for line in text for desc in listing["architectures"].values()
              if line.endswith(desc)}  # fmt: skip
    assert len(text) == len(listing["architectures"]) and len(starts) == 1, text


def test_shipped_default_bundle_works_offline_and_its_card_is_true(tmp_path, data_dir):
    """No --bundle: the bundle inside the package scores; the eval figures its card states are
    what `voicescreen eval` measures on the eval split now."""
    from voicescreen.models.bundle import load_bundle
    from voicescreen.models.store import DEFAULT_BUNDLE
    from voicescreen.train.evaluate import evaluate

    p = run("score", str(data_dir / "flac" / "VS_E_00801.flac"), "--json", home=tmp_path)
    assert json.loads(p.stdout)["bundle"] == "default"
    card = load_bundle(DEFAULT_BUNDLE).card
    stated = card["metrics"]["eval"]
    assert stated["data"].startswith("../shared/data eval split")
    measured = evaluate(DEFAULT_BUNDLE, data_dir, "eval", tmp_path / "report").figures
    assert measured.eer == pytest.approx(stated["eer"], abs=1e-9)
    assert measured.bonafide_accepted == pytest.approx(stated["bonafide_accepted"], abs=1e-9)
    assert measured.spoof_rejected == pytest.approx(stated["spoof_rejected"], abs=1e-9)


def test_a_reader_that_leaves_early_and_ctrl_c_end_quietly(tmp_path):
    """`voicescreen models --json | head`: the pipe closes before the output is written; and
    Ctrl-C on `serve`: it shuts down. Neither prints a traceback; the exit status says which."""
    import signal
    import socket
    import time

    import httpx

    env = {**os.environ, "VOICESCREEN_HOME": str(tmp_path)}
    p = subprocess.Popen(
        [sys.executable, "-m", "voicescreen", "models", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    p.stdout.close()  # the reader is gone before the first write
    _, err = p.communicate(timeout=120)
    assert p.returncode == 141 and b"Traceback" not in err, err.decode()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve = ["serve", "--port", str(port), "--fast-path", "none", "--no-reuse"]
    p = subprocess.Popen(
        [sys.executable, "-m", "voicescreen", *serve], stderr=subprocess.PIPE, text=True, env=env
    )
    deadline = time.monotonic() + 120
    while True:
        assert p.poll() is None and time.monotonic() < deadline, p.stderr.read()
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz")
            break
        except httpx.TransportError:
            time.sleep(0.5)
    # a second server on the same port is refused at once, before it loads any model
    second = subprocess.run(
        [sys.executable, "-m", "voicescreen", *serve], capture_output=True, text=True, env=env,
        timeout=120,
    )  # fmt: skip
    assert second.returncode == 2, second.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in second.stderr and "--port" in second.stderr
    assert "chosen" not in second.stderr and "Traceback" not in second.stderr
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130 and "Traceback" not in err, err
    assert "Shutting down" in err and "KeyboardInterrupt" not in err


def test_help_describes_score_and_states_defaults(tmp_path):
    """``score --help`` says what it does; ``--hop``, ``--min-speech`` and ``tap --url`` say
    their defaults (through the real command)."""
    score = run("score", "--help", home=tmp_path).stdout
    assert "Score audio files offline" in score
    assert "(default: 1)" in " ".join(score.split())  # --hop and --min-speech
    tap = " ".join(run("tap", "--help", home=tmp_path).stdout.split())
    assert "(default: ws://127.0.0.1:8000/v1/stream)" in tap
    serve = " ".join(run("serve", "--help", home=tmp_path).stdout.split())
    assert "window hop, seconds (default: 1)" in serve
