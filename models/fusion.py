"""Score fusion: two or more models of the zoo and a logistic regression of their scores.

A fusion bundle holds the member models whole (their weights under ``members.<i>.``) and the
weights of a logistic regression fitted on their raw scores (``train/fusion.py``, on validation
folds). One window flows through every member, then through the regression:

    waveform (B, nb_samp)
      -> member i -> logits_i (B, 2) -> score_i (B,)  (member i's own score convention)
      -> parts (B, K) = stack(score_i)
      -> fused (B,) = bias + parts @ weights          (log-odds of bona fide)
      -> logits (B, 2) = [0, fused]                   (convention ``log_odds``: score = fused)

so the worker serves a fusion as one model: each member runs on the whole batch of windows from
every stream, and the card's calibration (pooled and per channel) applies to the fused score as
to any other. Its graph has a third output, ``parts`` (B, K): the members' raw scores, which
a caller may ask for (``forward_parts``). ``member_bundles`` gives the members as bundles of their
own, for serving them one by one (``runtimes/members.py``: an AASIST member keeps encoder reuse).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from voicescreen.audio import WINDOW_SAMPLES

if TYPE_CHECKING:
    from voicescreen.models.bundle import Bundle

ARCHITECTURE = "fusion"


@dataclass(frozen=True)
class Member:
    """One model of a fusion: its name (the bundle it came from), architecture and config."""

    name: str
    architecture: str
    config: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "architecture": self.architecture, "config": self.config}


@dataclass(frozen=True)
class FusionConfig:
    nb_samp: int = WINDOW_SAMPLES  # input samples of one window, the same for every member
    members: tuple[Member, ...] = ()
    weights: tuple[float, ...] = ()  # one per member, on its raw score
    bias: float = 0.0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> FusionConfig:
        """Build from a dict (``CONFIGS`` or a bundle card), checking that it holds together."""
        from voicescreen.models.registry import get_architecture

        d = dict(d or {})
        members = []
        for m in d.get("members") or ():
            if isinstance(m, Member):
                m = m.to_dict()
            arch = get_architecture(str(m["architecture"]))
            if arch.name == ARCHITECTURE:
                raise ValueError("a fusion cannot hold another fusion")
            members.append(Member(str(m["name"]), arch.name, arch.config(m.get("config"))))
        weights = tuple(float(w) for w in d.get("weights") or ())
        if len(weights) != len(members):
            raise ValueError(f"{len(members)} fusion members but {len(weights)} weights")
        nb_samp = int(d.get("nb_samp", WINDOW_SAMPLES))
        for m in members:
            samples = get_architecture(m.architecture).input_samples(m.config)
            if samples != nb_samp:
                raise ValueError(
                    f"fusion member {m.name} ({m.architecture}) takes {samples} samples, "
                    f"the fusion {nb_samp}: members must share one window length"
                )
        return cls(nb_samp, tuple(members), weights, float(d.get("bias", 0.0)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "nb_samp": self.nb_samp,
            "members": [m.to_dict() for m in self.members],
            "weights": list(self.weights),
            "bias": self.bias,
        }


CONFIGS: dict[str, dict[str, Any]] = {ARCHITECTURE: FusionConfig().to_dict()}


def member_score(logits: Tensor, convention: str) -> Tensor:
    """A member's score from its (B, 2) logits (``models.bundle.score_from_logits``'s rule)."""
    from voicescreen.models.bundle import score_from_logits

    return score_from_logits(logits, convention)


class Fusion(nn.Module):
    def __init__(self, config: Mapping[str, Any] | FusionConfig | None = None) -> None:
        super().__init__()
        from voicescreen.models.registry import get_architecture

        cfg = config if isinstance(config, FusionConfig) else FusionConfig.from_dict(config)
        if not cfg.members:
            raise ValueError("a fusion needs its members: make one with voicescreen fuse")
        self.config = cfg
        self.members = nn.ModuleList(
            get_architecture(m.architecture).build(m.config) for m in cfg.members
        )
        self.conventions = [get_architecture(m.architecture).score for m in cfg.members]
        self.register_buffer("weights", torch.tensor(cfg.weights, dtype=torch.float32))
        self.register_buffer("bias", torch.tensor(cfg.bias, dtype=torch.float32))
        # Frozen weights a member takes from an optional extra: the card records them.
        found = [getattr(m, "pretrained", None) for m in self.members]
        self.pretrained = next((p for p in found if p), None)

    @property
    def requires(self) -> tuple[str, ...]:
        """The optional extras the members need."""
        from voicescreen.models.registry import get_architecture

        names = [r for m in self.config.members for r in get_architecture(m.architecture).requires]
        return tuple(dict.fromkeys(names))

    def parts(self, x: Tensor) -> Tensor:
        """(B, nb_samp) -> (B, K): each member's raw score."""
        scores = [
            member_score(model(x), convention)
            for model, convention in zip(self.members, self.conventions, strict=True)
        ]
        return torch.stack(scores, dim=1)

    def fuse(self, parts: Tensor) -> Tensor:
        """(B, K) -> (B,): the regression's log-odds of bona fide."""
        return self.bias + parts @ self.weights

    def forward_parts(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, nb_samp) -> logits (B, 2) and the members' raw scores (B, K)."""
        parts = self.parts(x)
        fused = self.fuse(parts)
        return torch.stack([torch.zeros_like(fused), fused], dim=1), parts

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_parts(x)[0]


def combine(models: Sequence[nn.Module], members: Sequence[Member], weights, bias) -> Fusion:
    """A fusion of trained ``models`` (their weights copied in) with the regression's
    ``weights`` and ``bias``."""
    config = FusionConfig.from_dict(
        {
            "nb_samp": get_nb_samp(members),
            "members": [m.to_dict() for m in members],
            "weights": list(map(float, weights)),
            "bias": float(bias),
        }
    )
    fusion = Fusion(config)
    for target, source in zip(fusion.members, models, strict=True):
        target.load_state_dict(source.state_dict(), strict=True)
    return fusion.eval()


def get_nb_samp(members: Sequence[Member]) -> int:
    from voicescreen.models.registry import get_architecture

    if not members:
        return WINDOW_SAMPLES
    return get_architecture(members[0].architecture).input_samples(members[0].config)


def member_graph_file(index: int) -> str:
    """The file in a fusion bundle that holds member ``index``'s own ONNX graph (written by
    ``voicescreen fuse`` for the members that a graph serves on a live stream)."""
    return f"member-{index}.onnx"


def member_bundles(bundle: Bundle) -> list[Bundle]:
    """A fusion bundle's members as bundles in memory: name, architecture, config and weights
    from the fusion's card and weights, their raw score (threshold 0, scale 1: the regression
    calibrates), and their ``model.onnx`` where the fusion holds it (``member_graph_file``;
    otherwise none: ``runtimes.members.with_graph`` exports one)."""
    from safetensors.torch import save

    from voicescreen.models.bundle import ONNX_FILE, WEIGHTS_FILE, Bundle
    from voicescreen.models.registry import get_architecture

    config = FusionConfig.from_dict(bundle.config)
    state = bundle.state_dict()
    members = []
    for i, member in enumerate(config.members):
        arch = get_architecture(member.architecture)
        prefix = f"members.{i}."
        weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        card = {
            "name": member.name,
            "architecture": member.architecture,
            "config": member.config,
            "sample_rate": bundle.sample_rate,
            "input_samples": arch.input_samples(member.config),
            "score": {"convention": arch.score, "threshold": 0.0, "scale": 1.0},
        }
        if arch.requires and bundle.card.get("pretrained"):
            card["pretrained"] = bundle.card["pretrained"]
        source = Path(bundle.source) / f"members.{i}"
        files = {WEIGHTS_FILE: save(weights)}
        if member_graph_file(i) in bundle.files:
            files[ONNX_FILE] = bundle.files[member_graph_file(i)]
        members.append(Bundle(source, card, files))
    return members
