"""What a run starts from: the device, and the recipe's model with its initial weights.

``init`` is None or "none" (random weights, seeded by the recipe), "official" (the installed
``{architecture}-official`` bundle), a reference checkpoint (``.pth``), a bundle (folder or
``.zip``) or an installed bundle's name.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voicescreen.models.registry import get_architecture
from voicescreen.models.store import portable_path
from voicescreen.train.recipes import Recipe

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)


class TrainError(RuntimeError):
    """A training run that cannot go on, with the reason."""


def resolve_device(device: str | None) -> torch.device:
    import torch

    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise TrainError("CUDA was asked for but torch sees no GPU")
    return torch.device(device)


def resolve_init(init: str | None, architecture: str) -> Path | None:
    """Where ``init`` points: None (random init) for None/"none", the installed
    ``{architecture}-official`` bundle for "official" (``voicescreen import-weights`` writes it),
    else a checkpoint or bundle path, or an installed bundle's name."""
    from voicescreen.models.store import resolve_bundle

    if not init or init.lower() == "none":
        return None
    if init == "official":
        try:
            return resolve_bundle(f"{architecture}-official")
        except FileNotFoundError:
            raise TrainError(
                f"init = official needs the {architecture}-official bundle: run `voicescreen "
                f"import-weights {architecture} PATH/TO/{architecture.upper()}.pth` once, or "
                "pass --init PATH (a .pth or bundle), or --init none to train from scratch"
            ) from None
    path = Path(init)
    if path.exists():
        return path
    try:
        return resolve_bundle(init)
    except FileNotFoundError:
        raise TrainError(f"{init}: no such checkpoint, bundle or installed bundle") from None


def load_init_weights(path: str | Path, architecture: str) -> tuple[dict[str, Any], str]:
    """A state dict from a bundle (directory or .zip) or a reference checkpoint (.pth), and the
    sha256 of the weights it came from."""
    import hashlib

    import torch

    from voicescreen.models.bundle import BundleError, load_bundle

    path = Path(path)
    if path.is_dir() or path.suffix == ".zip":
        try:
            bundle = load_bundle(path)
        except BundleError as e:
            raise TrainError(str(e)) from e
        if get_architecture(bundle.architecture).module != get_architecture(architecture).module:
            raise TrainError(f"{path}: a {bundle.architecture} bundle cannot start {architecture}")
        return bundle.state_dict(), bundle.card["files"]["weights.safetensors"]["sha256"]
    data = path.read_bytes()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError, EOFError, ...
        raise TrainError(f"{path}: not a loadable PyTorch state dict ({e})") from e
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # our checkpoints, and many others
    if not isinstance(state, dict):
        raise TrainError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return state, hashlib.sha256(data).hexdigest()


def build_model(recipe: Recipe, device: torch.device) -> tuple[nn.Module, dict[str, str]]:
    """The recipe's model, seeded, initialised from ``recipe.init`` if any, on ``device``; and
    where its initial weights came from."""
    import torch

    torch.manual_seed(recipe.seed)
    arch = get_architecture(recipe.architecture)
    model = arch.build(recipe.model_config())
    origin = {"init": "random", "seed": str(recipe.seed)}
    path = resolve_init(recipe.init, recipe.architecture)
    if path is not None:
        state, digest = load_init_weights(path, recipe.architecture)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise TrainError(f"{path}: does not fit {recipe.architecture}: {e}") from e
        origin = {"init": portable_path(path), "init_sha256": digest}
        log.info("initialised %s from %s", recipe.architecture, path)
    if hasattr(model, "freq_aug"):
        model.freq_aug = recipe.freq_aug
    return model.to(device), origin


def set_deterministic(enabled: bool, device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.backends.cudnn.deterministic = enabled
        torch.backends.cudnn.benchmark = not enabled


__all__ = [
    "TrainError",
    "build_model",
    "load_init_weights",
    "resolve_device",
    "resolve_init",
    "set_deterministic",
]
