"""train/default.py, what scripts/make_default_bundle.py runs: the card lines it writes, and that
its recipe is the one the shipped default was trained with (so its documented command reproduces
that model).

Training the default itself takes ~1 h here; its pieces (the frozen trainer, the calibration, the
eval report, the validation figures) have end-to-end tests of their own."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from voicescreen.train import default as mdb

REPO = Path(__file__).resolve().parents[2]

CARD = json.loads((REPO / "models" / "default" / "card.json").read_text())
VALIDATION = {"eer": 0.0634, "at": {"card": {"bonafide_accepted": 0.937}}}


def test_status_line_states_the_recipe_the_figures_and_the_targets():
    good = {"eer": 0.01, "bonafide_accepted": 0.98, "spoof_rejected": 1.0}
    line = mdb.status_line({"frozen_blocks": 3, "epochs": 8}, good, VALIDATION)
    assert "front end + 3 encoder blocks frozen, 8 epochs" in line
    assert "EER 1.0 %, 98 % bona fide accepted, 100 % spoofs rejected" in line
    assert "targets (EER <= 5 %, >= 95 %, >= 90 %) met." in line
    assert line.endswith("EER 6.3 %, 93.7 % bona fide accepted.")

    # each target on its own: just inside is met, just outside is missed
    for key, inside, outside in [
        ("eer", 0.05, 0.051),
        ("bonafide_accepted", 0.95, 0.949),
        ("spoof_rejected", 0.90, 0.899),
    ]:
        assert mdb.met({**good, key: inside})
        assert not mdb.met({**good, key: outside})
    missed = mdb.status_line({"epochs": 5}, {**good, "bonafide_accepted": 0.53}, None)
    assert "all layers trained, 5 epochs" in missed and missed.endswith(") MISSED.")
    assert "53 % bona fide accepted" in missed and "Validation" not in missed


@pytest.mark.parametrize(
    "key",
    ["init", "frozen_blocks", "feature_copies", "epochs", "batch_size", "lr", "lr_min",
     "weight_decay", "scheduler", "crop", "calibration"],
)  # fmt: skip
def test_the_script_recipe_is_the_shipped_defaults(key):
    shipped = CARD["training"]["recipe"][key]
    mine = mdb.RECIPE[key]
    if key == "init":  # the checkout's path to the same file
        assert Path(mine).name == Path(shipped).name == "AASIST-L.pth"
        assert CARD["provenance"]["init_sha256"]  # and the card pins its bytes
    else:
        assert mine == shipped


def test_the_shipped_card_meets_the_targets_and_names_the_portable_command():
    measured = {k: CARD["metrics"]["eval"][k] for k in mdb.TARGETS}
    assert mdb.met(measured)
    assert CARD["provenance"]["command"] == mdb.COMMAND
    codecs = CARD["training"]["recipe"]["augment"]["codec"]
    assert codecs == mdb.RECIPE["augment"]["codec"]


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def test_the_shipped_card_speaks_of_the_project_only():
    """No build machine's absolute paths, and no tracker numbers: paths relative to the
    repository (``runs/...``), to ``../shared`` or to the home directory."""
    absolute = [s for s in _strings(CARD) if re.search(r"(^|[\s=(])/(work|root|home|tmp)/", s)]
    assert not absolute
    assert not [s for s in _strings(CARD) if re.search(r"\bissue \d", s, re.I)]
    assert CARD["provenance"]["init"] == "../shared/reference/aasist/AASIST-L.pth"


def test_paths_are_written_portably(tmp_path):
    from voicescreen.models.store import REPO, portable_path

    assert portable_path(REPO.parent / "shared" / "data") == "../shared/data"  # a link or not
    assert portable_path(REPO / "runs" / ".." / "models") == "../" + REPO.name + "/models"
    home = Path.home().resolve()
    under_repo = home.is_relative_to(REPO.parent)  # a checkout outside the home directory?
    want = f"../{(home / '.cache/x').relative_to(REPO.parent)}" if under_repo else "~/.cache/x"
    assert portable_path(Path.home() / ".cache" / "x") == want
    elsewhere = "/nonexistent-root/data"
    assert portable_path(elsewhere) == elsewhere


def test_the_script_is_a_command_line_over_the_package():
    """``scripts/make_default_bundle.py`` parses its options without training: --help, and the
    refusal to install without a bundle."""
    script = str(REPO / "scripts" / "make_default_bundle.py")
    p = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "--extra-dev" in p.stdout and str(REPO / "models" / "default") in p.stdout
    p = subprocess.run(
        [sys.executable, script, "--out", "x", "--install", "--no-export"],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2 and "--install needs a bundle" in p.stderr


def test_install_copies_every_file_the_card_lists(gmm_bundle, tmp_path):
    from voicescreen.models.bundle import load_bundle, write_bundle

    source = load_bundle(gmm_bundle)
    card = {k: v for k, v in source.card.items() if k != "files"}
    files = {**source.files, "member-7.onnx": source.files["model.onnx"]}
    files.pop("card.json", None)
    bundle = write_bundle(tmp_path / "with-extra", card, files)
    (tmp_path / "with-extra" / "notes.txt").write_text("not listed: not shipped")
    mdb.install(bundle.source, tmp_path / "installed")
    installed = load_bundle(tmp_path / "installed")
    assert installed.files["member-7.onnx"] == source.files["model.onnx"]
    assert not (tmp_path / "installed" / "notes.txt").exists()
