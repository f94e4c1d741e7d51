"""Fixtures shared by the web tests."""

import numpy as np
import pytest
from web_support import dev_clip

from voicescreen.audio import load_audio


@pytest.fixture(scope="module")
def speech(data_dir) -> bytes:
    """2.5 s of speech, PCM16 at 16 kHz."""
    x = load_audio(dev_clip(data_dir, "bonafide", 4.0, 4.3))[:40000]
    return np.round(x * 32767).astype("<i2").tobytes()
