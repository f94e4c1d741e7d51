"""voicescreen: real-time screening of live speech for audio deepfakes.

The small public API (the audio facts and helpers of ``voicescreen.audio``) is re-exported
here. The modules and packages: ``audio`` (audio facts, loading, padding, windows), ``verdict``
(the verdict rule), ``scoring`` (offline scoring), ``models`` (architectures, registry, bundles),
``runtimes`` (onnx, torch, fast paths, Ray and Triton: a batch of windows in, scores out),
``stream`` (the live path: decode, resample, VAD, windows, batched workers, sessions,
events), ``web`` (HTTP, WebSocket and WebRTC transport), ``monitor`` (the live terminal monitor),
``train`` (data, recipes, training, export) and ``cli`` (the ``voicescreen`` command, above all
the others). ARCHITECTURE.md at the repository root shows how they fit together.
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
