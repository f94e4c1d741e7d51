"""Training windows: one seeded random crop per clip and epoch, in a seeded order.

Clip ``i`` of epoch ``e`` is cropped and augmented with ``augment.rng_for(seed, e, i)`` and the
epoch's order is a permutation seeded from (seed, e), so a run resumed after epoch ``e`` replays
epochs ``e+1...`` exactly as the uninterrupted run. Windows are ``input_samples`` long: a random
crop (AASIST's ``pad_random``; ``crop = "first"`` takes the first window, as Tak's RawNet2
loader), augmented, a short clip repeat-padded (``audio.pad_repeat``).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from voicescreen.audio import load_audio, pad_repeat
from voicescreen.train.augment import rng_for
from voicescreen.train.data import Utterance


class ClipDataset:
    """Training windows: (float32 (samples,), target) per utterance, seeded per (epoch, index)."""

    def __init__(
        self,
        utts: Sequence[Utterance],
        samples: int,
        *,
        crop: str = "random",
        augment=None,
        seed: int = 0,
    ) -> None:
        self.utts = list(utts)
        self.samples = samples
        self.crop = crop
        self.augment = augment if augment is not None and augment.enabled else None
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.utts)

    def window(self, index: int) -> np.ndarray:
        u = self.utts[index]
        x = load_audio(u.path)
        rng = rng_for(self.seed, self.epoch, index)
        if x.size > self.samples:
            start = int(rng.integers(0, x.size - self.samples + 1)) if self.crop == "random" else 0
            x = x[start : start + self.samples]
        if self.augment is not None:
            x = self.augment(x, rng)
        return pad_repeat(x, self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        import torch

        return torch.from_numpy(self.window(index)), self.utts[index].target


class EpochSampler:
    """A permutation of the dataset that depends only on (seed, epoch)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        import torch

        g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, 1))
        return iter(torch.randperm(self.n, generator=g).tolist())


def mix_seed(*keys: int) -> int:
    """A 63-bit seed from several integers (stable across runs and platforms)."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)
    return int(state[0]) >> 1


def describe(utts: Sequence[Utterance]) -> dict[str, Any]:
    return {
        "clips": len(utts),
        "bonafide": sum(u.is_bonafide for u in utts),
        "spoof": sum(not u.is_bonafide for u in utts),
        "attacks": dict(sorted(Counter(u.attack for u in utts if not u.is_bonafide).items())),
        "speakers": len({u.speaker for u in utts}),
    }


def files_digest(utts: Sequence[Utterance]) -> str:
    """A short digest of the clips' file names (their order ignored)."""
    h = hashlib.sha256()
    for name in sorted(u.file for u in utts):
        h.update(name.encode() + b"\n")
    return h.hexdigest()[:16]


__all__ = ["ClipDataset", "EpochSampler", "describe", "files_digest", "mix_seed"]
