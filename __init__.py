"""voicescreen: real-time screening of live speech for audio deepfakes.

The small public API lives here; everything else is in the subpackages
``voicescreen.models``, ``voicescreen.stream``, ``voicescreen.train`` and ``voicescreen.web``.
"""

__version__ = "0.1.0"

from voicescreen.audio import (  # noqa: E402
    HOP_SECONDS,
    SAMPLE_RATE,
    WINDOW_SAMPLES,
    load_audio,
    pad_repeat,
)

__all__ = [
    "HOP_SECONDS",
    "SAMPLE_RATE",
    "WINDOW_SAMPLES",
    "__version__",
    "load_audio",
    "pad_repeat",
]
