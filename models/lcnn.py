"""LFCC-LCNN: the ASVspoof 2021 LA baseline (Wang & Yamagishi), one file.

waveform (B, T) -> LFCC (B, frames, 60) -> LCNN-9 with Max-Feature-Map units (B, 32, frames/16,
60/16) -> (B, frames/16, 96) -> two BLSTM layers -> mean over time of (BLSTM output + its input)
-> linear output.

The baseline ends in one linear unit ``s`` trained with a sigmoid and binary cross-entropy. Our
models all return two logits (index 1 = bona fide); with ``single_logit`` (the default) they are
``[-s/2, s/2]``, so ``softmax`` gives ``sigmoid(s)``, cross-entropy equals the baseline's BCE and
``logits[:, 1] - logits[:, 0] = s`` (the registry's ``log_odds`` score). ``single_logit=False``
gives a plain two-unit linear output instead. ``frontend="mel"`` swaps LFCC for log-mel.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor, nn

from voicescreen.audio import WINDOW_SAMPLES
from voicescreen.models.frontends import LFCC, LFCCConfig, LogMel, LogMelConfig


@dataclass
class LCNNConfig:
    nb_samp: int = WINDOW_SAMPLES  # input samples of one window
    frontend: str = "lfcc"  # "lfcc" or "mel"
    lfcc: LFCCConfig = field(default_factory=LFCCConfig)
    mel: LogMelConfig = field(default_factory=LogMelConfig)
    dropout: float = 0.7  # after the last LCNN block, as the baseline
    single_logit: bool = True  # the baseline's one output unit, as logits [-s/2, s/2]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> LCNNConfig:
        """Build from a dict (e.g. ``CONFIGS["lcnn"]`` or a bundle card), ignoring unknown keys."""
        d = dict(d or {})
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if not isinstance(kw.get("lfcc", LFCCConfig()), LFCCConfig):
            kw["lfcc"] = LFCCConfig.from_dict(kw["lfcc"])
        if not isinstance(kw.get("mel", LogMelConfig()), LogMelConfig):
            kw["mel"] = LogMelConfig.from_dict(kw["mel"])
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        return {
            "nb_samp": self.nb_samp,
            "frontend": self.frontend,
            "lfcc": self.lfcc.to_dict(),
            "mel": self.mel.to_dict(),
            "dropout": self.dropout,
            "single_logit": self.single_logit,
        }


CONFIGS: dict[str, dict[str, Any]] = {
    "lcnn": LCNNConfig().to_dict(),
    "lcnn-mel": LCNNConfig(frontend="mel").to_dict(),
}


def build_frontend(config: LCNNConfig) -> nn.Module:
    if config.frontend == "lfcc":
        return LFCC(config.lfcc)
    if config.frontend == "mel":
        return LogMel(config.mel)
    raise ValueError(f"unknown front-end {config.frontend!r}; use 'lfcc' or 'mel'")


class MaxFeatureMap(nn.Module):
    """Max-Feature-Map: (B, 2 * channels, ...) -> (B, channels, ...), the element-wise max of the
    first and the second half of the channels. ``channels`` is fixed so that exported graphs know
    the width (BatchNorm needs it)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, x: Tensor) -> Tensor:
        c = self.channels
        return torch.maximum(x[:, :c], x[:, c : 2 * c])


def conv_mfm(c_in: int, c_out: int, kernel: int) -> list[nn.Module]:
    """A convolution with ``2 * c_out`` channels followed by MFM down to ``c_out``."""
    return [nn.Conv2d(c_in, 2 * c_out, kernel, padding=kernel // 2), MaxFeatureMap(c_out)]


def lcnn9(dropout: float) -> nn.Sequential:
    """The baseline's LCNN-9: (B, 1, frames, dims) -> (B, 32, frames // 16, dims // 16).

    Layer for layer as the baseline (BatchNorm without affine parameters, 2x2 max pooling four
    times), so that its weights map onto this one by position.
    """
    return nn.Sequential(
        *conv_mfm(1, 32, 5),
        nn.MaxPool2d(2, 2),
        *conv_mfm(32, 32, 1),
        nn.BatchNorm2d(32, affine=False),
        *conv_mfm(32, 48, 3),
        nn.MaxPool2d(2, 2),
        nn.BatchNorm2d(48, affine=False),
        *conv_mfm(48, 48, 1),
        nn.BatchNorm2d(48, affine=False),
        *conv_mfm(48, 64, 3),
        nn.MaxPool2d(2, 2),
        *conv_mfm(64, 64, 1),
        nn.BatchNorm2d(64, affine=False),
        *conv_mfm(64, 32, 3),
        nn.BatchNorm2d(32, affine=False),
        *conv_mfm(32, 32, 1),
        nn.BatchNorm2d(32, affine=False),
        *conv_mfm(32, 32, 3),
        nn.MaxPool2d(2, 2),
        nn.Dropout(dropout),
    )


class BLSTM(nn.Module):
    """Bidirectional LSTM keeping the width: (B, frames, dim) -> (B, frames, dim)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"BLSTM width must be even, got {dim}")
        self.lstm = nn.LSTM(dim, dim // 2, batch_first=True, bidirectional=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.lstm(x)[0]


class LCNN(nn.Module):
    def __init__(self, config: LCNNConfig | Mapping[str, Any] | None = None) -> None:
        super().__init__()
        cfg = config if isinstance(config, LCNNConfig) else LCNNConfig.from_dict(config)
        self.config = cfg
        self.frontend = build_frontend(cfg)
        feat_dims = cfg.lfcc.dims if cfg.frontend == "lfcc" else cfg.mel.dims
        self.lcnn = lcnn9(cfg.dropout)
        self.dim = 32 * (feat_dims // 16)  # channels x feature axis after four 2x poolings
        if self.dim == 0:
            raise ValueError(f"the front-end gives {feat_dims} dims; LCNN needs at least 16")
        self.blstm = nn.Sequential(BLSTM(self.dim), BLSTM(self.dim))
        self.out = nn.Linear(self.dim, 1 if cfg.single_logit else 2)

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T) waveform -> (embedding (B, dim), logits (B, 2))."""
        feats = self.frontend(x)  # (B, frames, dims)
        h = self.lcnn(feats.unsqueeze(1))  # (B, 32, frames', dims')
        h = h.permute(0, 2, 1, 3).flatten(2)  # (B, frames', 32 * dims'), channel-major
        emb = (self.blstm(h) + h).mean(dim=1)
        out = self.out(emb)
        if self.config.single_logit:
            out = torch.cat([-0.5 * out, 0.5 * out], dim=1)
        return emb, out

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)[1]


__all__ = ["CONFIGS", "LCNN", "LCNNConfig", "MaxFeatureMap", "build_frontend", "lcnn9"]
