"""Synthetic conversations for the streaming benchmarks and the load test.

A conversation is real speech from the corpus (clips of ``../shared/data``, drawn at random from one
split's protocol) separated by gaps, so that about ``speech`` of it is speech, like one side of a
call. Gaps are digital silence by default, or low-level white noise (``noise_dbfs``) for a closer
look at a real line, where the VAD never sees exact zeros.

    from voicescreen.train.conversations import conversation
    x = conversation(60.0, speech=0.5, seed=0)   # 60 s, 16 kHz mono float32
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from voicescreen.audio import SAMPLE_RATE, load_audio
from voicescreen.models.store import REPO

DATA = REPO.parent / "shared" / "data"


def clip_names(split: str = "dev", data: Path = DATA) -> list[str]:
    """File names (no extension) listed in ``split``'s countermeasure protocol, in its order."""
    proto = data / "protocols" / f"VS.cm.{split}.trl.txt"
    return [r.split()[1] for r in proto.read_text().splitlines() if r.strip()]


def conversation(
    seconds: float,
    speech: float = 0.5,
    seed: int = 0,
    *,
    split: str = "dev",
    noise_dbfs: float | None = None,
    data: Path = DATA,
) -> np.ndarray:
    """``seconds`` of ``split`` clips separated by gaps, ``speech`` (0-1] of it speech, 16 kHz.

    Clips are drawn with replacement by ``np.random.default_rng(seed)``; each is followed by a gap
    of ``len(clip) * (1 - speech) / speech`` samples. Gaps are zeros, or white noise with an RMS of
    ``noise_dbfs`` dB full scale (e.g. -60) drawn from a second generator, so the clip sequence is
    the same with or without noise. Returns float32 of exactly ``int(seconds * SAMPLE_RATE)``
    samples.
    """
    if not 0 < speech <= 1:
        raise ValueError(f"speech must be in (0, 1], got {speech}")
    names = clip_names(split, data)
    rng = np.random.default_rng(seed)
    noise = np.random.default_rng([seed, 1]) if noise_dbfs is not None else None
    parts: list[np.ndarray] = []
    total = 0
    while total < seconds * SAMPLE_RATE:
        clip = load_audio(data / "flac" / f"{names[rng.integers(len(names))]}.flac")
        n = int(clip.size * (1 - speech) / speech)
        if noise is None:
            gap = np.zeros(n, np.float32)
        else:
            rms = 10 ** (noise_dbfs / 20)
            gap = (noise.standard_normal(n) * rms).astype(np.float32)
        parts += [clip, gap]
        total += clip.size + gap.size
    return np.concatenate(parts)[: int(seconds * SAMPLE_RATE)]


__all__ = ["DATA", "clip_names", "conversation"]
