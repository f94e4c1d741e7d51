"""Calibrate a trained model on the dev clips and write it as a bundle.

The dev scores come from ONNX Runtime on the graph the bundle will hold, through each of the
recipe's ``calibration`` channels; the card records the dev figures per channel, the training
data, the recipe and history, and where the initial weights came from.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from voicescreen.audio import load_audio
from voicescreen.models.registry import get_architecture
from voicescreen.models.store import portable_path
from voicescreen.train.calibrate import Fitted, fit_scored, score_channels
from voicescreen.train.data import Utterance
from voicescreen.train.evaluate import (
    compute_figures,
    find_asv_scores,
    first_window,
    is_asvspoof2019,
)
from voicescreen.train.recipes import Recipe

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

AASIST_ATTRIBUTION = (
    "initialised from the AASIST weights (c) 2021-present NAVER Corp., MIT licence, "
    "clovaai/aasist (Jung et al., ICASSP 2022)"
)


def calibrate(
    model: nn.Module,
    architecture: str,
    samples: int,
    dev: Sequence[Utterance],
    channels: Sequence[str],
    *,
    seed: int = 0,
    progress: bool = False,
) -> tuple[Fitted, dict[str, np.ndarray]]:
    """Calibrations of the dev scores through ``channels`` (e.g. clean and mulaw): pooled over
    them all (the EER threshold and a logistic-regression scale, so that ``scale * (score -
    threshold)`` reads as a log-odds) and per kind of audio (``train.calibrate``).

    Returns the fitted calibrations and the scores per channel."""
    from voicescreen.models.bundle import export_onnx
    from voicescreen.runtimes.local import OnnxRuntime

    # Scored by ONNX Runtime on the graph the bundle will hold (what serving runs, and several
    # times faster than eager PyTorch on CPU).
    convention = get_architecture(architecture).score
    runtime = OnnxRuntime(export_onnx(model.eval(), convention, samples), samples, name="calibrate")
    per_channel, kinds = score_channels(
        lambda x: runtime(x)[1], dev, samples, channels, progress=progress
    )
    return fit_scored(dev, per_channel, kinds), per_channel


def _portable_recipe(recipe: Recipe) -> dict[str, Any]:
    """The recipe as a card holds it: an ``init`` file's path written portably."""
    d = recipe.to_dict()
    if d.get("init") and Path(str(d["init"])).expanduser().is_file():
        d["init"] = portable_path(d["init"])
    return d


def export_trained(
    model: nn.Module,
    recipe: Recipe,
    data_root: str | Path,
    dev: Sequence[Utterance],
    out: str | Path,
    *,
    history: list[dict],
    data_card: dict[str, Any],
    origin: dict[str, str] | None = None,
    name: str | None = None,
    progress: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """Calibrate on dev (the recipe's ``calibration`` channels) and write the bundle."""
    from voicescreen.models.bundle import export_bundle

    arch = get_architecture(recipe.architecture)
    config = recipe.model_config()
    samples = arch.input_samples(config)
    model = model.cpu().eval()
    fitted, per_channel = calibrate(
        model, recipe.architecture, samples, dev, recipe.calibration, progress=progress
    )
    threshold, scale = fitted.pooled.threshold, fitted.pooled.scale
    asv = find_asv_scores(data_root, "dev")
    note = None if is_asvspoof2019(data_root, "dev") else "ASVspoof 2019 ASV rates, other corpus"
    dev_metrics: dict[str, Any] = {
        "split": "dev",
        "channels": list(recipe.calibration),
        "threshold": threshold,
        "scale": scale,
        "calibration": fitted.to_dict(),
    }
    for ch, scores in per_channel.items():
        dev_metrics[ch] = compute_figures(dev, scores, threshold, asv, note).headline()
    first = dev_metrics[recipe.calibration[0]]
    dev_metrics["eer"] = first["eer"]
    if note and asv is not None:
        dev_metrics["tdcf_note"] = note
    last = history[-1] if history else {}
    metrics = {
        "dev": dev_metrics,
        "train": {k: last[k] for k in ("train_loss", "train_acc") if k in last},
    }
    provenance: dict[str, Any] = {
        "trained_by": "voicescreen train",
        "recipe": recipe.name,
        **(origin or {}),
    }
    if recipe.architecture.startswith("aasist") and "init_sha256" in provenance:
        provenance["attribution"] = AASIST_ATTRIBUTION
    training = {
        "data": data_card,
        "recipe": _portable_recipe(recipe),
        "seed": recipe.seed,
        "subset": recipe.subset,
        "history": history,
    }
    check = np.stack([first_window(load_audio(u.path), samples) for u in dev[:2]])
    out = Path(out)
    export_bundle(
        model,
        out,
        architecture=recipe.architecture,
        config=config,
        name=name or f"{recipe.name}-{Path(data_root).resolve().name}-seed{recipe.seed}",
        threshold=threshold,
        scale=scale,
        channels=fitted.channels,
        provenance=provenance,
        training=training,
        metrics=metrics,
        check_input=check,
    )
    log.info("exported %s: dev EER %.2f %%, threshold %+.4f", out, 100 * first["eer"], threshold)
    return out, metrics


__all__ = ["calibrate", "export_trained"]
