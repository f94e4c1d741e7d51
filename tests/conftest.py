"""Shared fixtures: where the reference material and the corpus live.

``../shared`` sits beside the repository on every developer machine and on CI; a test that needs it
fails (never skips) when it is missing, since CI always has it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VOICESCREEN_SHARED", REPO.parent / "shared")).resolve()


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"{path} is missing: tests read the reference material from ../shared")
    return path


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return _need(SHARED / "reference")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return _need(SHARED / "data")


@pytest.fixture(scope="session")
def speech_clips(data_dir: Path) -> dict[str, np.ndarray]:
    """A few real clips of the corpus (train split), by label, as 16 kHz float32."""
    from voicescreen.audio import load_audio

    proto = (data_dir / "protocols" / "VS.cm.train.trn.txt").read_text().split("\n")
    rows = [line.split() for line in proto if line.strip()]
    bona = next(r[1] for r in rows if r[4] == "bonafide")
    spoof = next(r[1] for r in rows if r[4] == "spoof")
    return {
        "bonafide": load_audio(data_dir / "flac" / f"{bona}.flac"),
        "spoof": load_audio(data_dir / "flac" / f"{spoof}.flac"),
    }
