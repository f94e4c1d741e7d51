"""Training recipes: one per model, with the fine-tuning study's settings as defaults.

The study (1,000 clips of ASVspoof 2019 LA) trained every model with Adam and cross-entropy:

| recipe | epochs | batch | schedule | start |
|---|---|---|---|---|
| aasist, aasist-l | 5 | 16 | cosine, per step, to lr_min | the official weights |
| rawnet2 (-tak, -clova) | 10 | 8 | cosine, per step | random |
| lcnn, lcnn-mel | 10 | 16 | step decay (halved every 5 epochs) | random |
| lfcc-gmm | one EM fit per class (scikit-learn) | | | |

Optimiser values are the reference codes': AASIST's ``optim_config`` (lr 1e-4, lr_min 5e-6,
weight decay 1e-4), Tak's RawNet2 (lr 1e-4, weight decay 1e-4), the LFCC-LCNN baseline (lr 3e-4,
no weight decay; it halves the rate every 10 epochs, which 10 epochs never reach, so our step is
5). AASIST's class-weighted cross-entropy (0.1 spoof, 0.9 bona fide, for ASVspoof's 1:9 class
ratio) is the option ``class_weights = [0.1, 0.9]``; the default is plain cross-entropy, as the
study and a class-balanced subset call for.

"The official weights" is ``init = "official"``: the bundle that ``voicescreen import-weights
aasist-l AASIST-L.pth`` installs as ``aasist-l-official``; ``init`` may also be a ``.pth`` path or
any bundle, and ``none`` trains from random weights.

Every field can be overridden from a TOML file (top-level keys, ``[model]`` for the architecture's
config, ``[augment]`` for augmentation) and from the command line (``--set key=value``, dotted keys
for nested fields, values in TOML syntax).
"""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from voicescreen.models.registry import ARCHITECTURES, get_architecture
from voicescreen.train.augment import CHANNELS, Augment

SCHEDULERS = ("cosine", "step", "constant")
CROPS = ("random", "first")


@dataclass
class Recipe:
    """Everything a training run depends on; ``to_dict`` goes into checkpoints and bundle cards."""

    name: str
    architecture: str  # a name of the model registry
    model: dict = field(default_factory=dict)  # overrides of the architecture's default config
    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-4
    lr_min: float = 5e-6  # floor of the cosine schedule
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    amsgrad: bool = False
    scheduler: str = "cosine"  # cosine (per step), step (per epoch), constant
    step_size: int = 5  # epochs between step decays
    gamma: float = 0.5  # step decay factor
    class_weights: tuple[float, float] | None = None  # cross-entropy weights (spoof, bona fide)
    crop: str = "random"  # training windows: random crop (AASIST's loader) or first (Tak's)
    freq_aug: bool = False  # AASIST's random sinc-band masking while training
    # Start from: "official" (the installed {architecture}-official bundle that
    # `voicescreen import-weights` writes), a .pth state dict, a bundle path or name; None: random.
    init: str | None = None
    subset: int | None = None  # seeded class-balanced subset of the train split (None: all)
    per_attack: bool = False  # spread the subset's spoofs evenly over the attacks
    # More corpora in the same layout whose whole train split joins the (subset of the) main one,
    # e.g. the one scripts/make_extra_data.py builds.
    extra_train: tuple[str, ...] = ()
    # More corpora whose dev split joins the main dev split for the per-epoch figures and the
    # calibration, e.g. the held-out voices of scripts/make_extra_data.py (their train split is
    # not read).
    extra_dev: tuple[str, ...] = ()
    seed: int = 1234
    augment: Augment = field(default_factory=Augment)
    amp: bool = True  # mixed precision (float16 autocast + grad scaling) on CUDA
    # bfloat16 autocast on CPU (weights and optimizer stay float32): on CPUs with AVX-512 BF16
    # or AMX it trains AASIST ~2.3x faster; off by default, so CPU runs are float32.
    cpu_bf16: bool = False
    deterministic: bool = True  # deterministic kernels (cuDNN) where available
    num_workers: int = 0  # DataLoader workers
    threads: int | None = None  # torch intra-op threads on CPU (None: torch's default)
    grad_clip: float | None = None  # max gradient norm (None: no clipping)
    eval_every: int = 1  # dev loss/accuracy/EER every N epochs (0: only at export)
    # Dev channels whose pooled scores set the exported threshold (the product's channel).
    calibration: tuple[str, ...] = ("clean",)
    # AASIST: keep the front end and this many encoder blocks at their initial weights and
    # train the rest on features cached once per window (train/frozen.py); 0: train it all.
    # whisper-tiny-pool: any value > 0 (its encoder is always frozen; model.layers picks what
    # the back-end sees); 0 runs the frozen encoder on every training step instead.
    frozen_blocks: int = 0
    feature_copies: int = (
        4  # cached windows per training clip with frozen_blocks (1 clean + augmented)
    )

    def __post_init__(self) -> None:
        self.model = dict(self.model or {})
        if isinstance(self.init, str) and self.init.strip().lower() in ("", "none"):
            self.init = None
        if not isinstance(self.augment, Augment):
            self.augment = Augment.from_dict(self.augment)
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        if self.class_weights is not None:
            self.class_weights = tuple(float(w) for w in self.class_weights)  # type: ignore
            if len(self.class_weights) != 2:
                raise ValueError("class_weights needs two values: (spoof, bona fide)")
        self.calibration = tuple(self.calibration)
        self.extra_train = tuple(str(p) for p in self.extra_train)
        self.extra_dev = tuple(str(p) for p in self.extra_dev)
        problems = []
        if self.architecture not in ARCHITECTURES:
            problems.append(f"unknown architecture {self.architecture!r}")
        elif not ARCHITECTURES[self.architecture].trainable:
            problems.append(f"{self.architecture} is not trained: make one with voicescreen fuse")
        if self.scheduler not in SCHEDULERS:
            problems.append(f"scheduler must be one of {SCHEDULERS}")
        if self.crop not in CROPS:
            problems.append(f"crop must be one of {CROPS}")
        if self.epochs < 1 or self.batch_size < 1:
            problems.append("epochs and batch_size must be >= 1")
        if self.subset is not None and self.subset < 2:
            problems.append("subset must be >= 2 (or absent for all clips)")
        if self.frozen_blocks < 0 or self.feature_copies < 1:
            problems.append("frozen_blocks must be >= 0 and feature_copies >= 1")
        if self.frozen_blocks and not get_architecture(self.architecture).frozen_prefix:
            problems.append("frozen_blocks works for the AASIST family and whisper-tiny-pool only")
        bad = [c for c in self.calibration if c not in CHANNELS]
        if bad or not self.calibration:
            problems.append(f"calibration channels must be among {list(CHANNELS)}, got {bad}")
        if problems:
            raise ValueError(f"recipe {self.name!r}: " + "; ".join(problems))

    @property
    def is_gmm(self) -> bool:
        return self.architecture == "lfcc-gmm"

    def model_config(self) -> dict:
        """The architecture's full config with this recipe's overrides."""
        return get_architecture(self.architecture).config(self.model)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["augment"] = self.augment.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Recipe:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown recipe field(s) {unknown}; known: {sorted(names)}")
        return cls(**copy.deepcopy(dict(d)))

    def override(self, changes: Mapping[str, Any]) -> Recipe:
        """A new recipe with ``changes`` merged in (nested dicts merge; other values replace;
        an ``augment`` table naming a ``preset`` replaces the augmentation as a whole)."""
        base = self.to_dict()
        augment = changes.get("augment")
        if isinstance(augment, Mapping) and "preset" in augment:
            base["augment"] = {}
        return Recipe.from_dict(merge(base, changes))


def merge(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: tables merge key by key, everything else replaces."""
    out = copy.deepcopy(dict(base))
    for k, v in changes.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


_AASIST = {
    "epochs": 5,
    "batch_size": 16,
    "lr": 1e-4,
    "lr_min": 5e-6,
    "weight_decay": 1e-4,
    "scheduler": "cosine",
    "crop": "random",
}
_RAWNET2 = {
    "epochs": 10,
    "batch_size": 8,
    "lr": 1e-4,
    "lr_min": 5e-6,
    "weight_decay": 1e-4,
    "scheduler": "cosine",
    "crop": "random",
}
_LCNN = {
    "epochs": 10,
    "batch_size": 16,
    "lr": 3e-4,
    "weight_decay": 0.0,
    "scheduler": "step",
    "step_size": 5,
    "gamma": 0.5,
    "crop": "random",
}

# The back-end of a frozen pretrained encoder: small, trained from scratch on cached frames.
_WHISPER = {
    "epochs": 20,
    "batch_size": 32,
    "lr": 1e-3,
    "lr_min": 1e-5,
    "weight_decay": 1e-4,
    "scheduler": "cosine",
    "crop": "random",
    "frozen_blocks": 1,
}

RECIPES: dict[str, dict[str, Any]] = {
    "aasist": {"architecture": "aasist", "init": "official", **_AASIST},
    "aasist-l": {"architecture": "aasist-l", "init": "official", **_AASIST},
    "rawnet2": {"architecture": "rawnet2-tak", **_RAWNET2},
    "rawnet2-tak": {"architecture": "rawnet2-tak", **_RAWNET2},
    "rawnet2-clova": {"architecture": "rawnet2-clova", **_RAWNET2},
    "lcnn": {"architecture": "lcnn", **_LCNN},
    "lcnn-mel": {"architecture": "lcnn-mel", **_LCNN},
    "lfcc-gmm": {"architecture": "lfcc-gmm", "epochs": 1, "batch_size": 1},
    "whisper-tiny-pool": {"architecture": "whisper-tiny-pool", **_WHISPER},
}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise KeyError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    return Recipe.from_dict({"name": name, **RECIPES[name]})


def parse_value(text: str) -> Any:
    """A command-line value in TOML syntax (``5``, ``1e-4``, ``true``, ``[0.1, 0.9]``,
    ``"x"``); anything that is not valid TOML is taken as a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_sets(items: list[str] | None) -> dict[str, Any]:
    """``["epochs=3", "model.gat_dims=[8, 8]", "augment.noise.p=0.5"]`` -> a nested dict."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        parts = key.strip().split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {key}: {p} is not a table")
        node[parts[-1]] = parse_value(value.strip())
    return out


def load_recipe(
    name: str | None = None,
    file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Recipe:
    """The named recipe, then the TOML ``file`` over it, then ``overrides`` over both.

    The file may name its base recipe with ``recipe = "aasist-l"``; ``name`` wins over it.
    """
    table: dict[str, Any] = {}
    if file is not None:
        with open(file, "rb") as f:
            table = tomllib.load(f)
    base = name or table.pop("recipe", None)
    table.pop("recipe", None)
    if base is None:
        raise ValueError(
            "no recipe named: give one (e.g. aasist-l) or set recipe = ... in the file"
        )
    recipe = get_recipe(base)
    if table:
        recipe = recipe.override(table)
    if overrides:
        recipe = recipe.override(overrides)
    return recipe


__all__ = [
    "RECIPES",
    "Recipe",
    "get_recipe",
    "load_recipe",
    "merge",
    "parse_sets",
    "parse_value",
]
