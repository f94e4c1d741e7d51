"""Train a recipe on a corpus, checkpoint every epoch, resume, and export a calibrated bundle.

    result = train(load_recipe("aasist-l", overrides={"init": "AASIST-L.pth"}), "../shared/data",
                   "runs/aasist-l", export="runs/aasist-l/bundle")

Data: the train split (optionally a seeded class-balanced ``subset``, plus the train splits of the
recipe's ``extra_train`` corpora) for training, the dev split (plus the dev splits of its
``extra_dev`` corpora) for the per-epoch figures and for calibration; the eval split is never read
here.

A run is one of three loops: an EM fit per class for the GMM (``_train_gmm``), the whole network
on fresh windows every epoch (``_train_torch``, here), or the last blocks on cached features of a
frozen front (``train.frozen``). The pieces they share live in their own modules:

- ``train.dataset``: the training windows (a seeded crop per clip and epoch, augmented) and their
  seeded order; dev uses the first window, repeat-padded (``evaluate.first_window``), as the
  reference evaluation loaders and ``voicescreen score``'s window 0;
- ``train.start``: the device, and the model with its initial weights;
- ``train.optim``: Adam, the learning-rate schedule and the loss;
- ``train.checkpoints``: a history row and a checkpoint per epoch, resuming, the run's result;
- ``train.export``: calibration on dev and the bundle.

Determinism: the model is built under ``torch.manual_seed(seed)``; epoch ``e`` shuffles with a
generator seeded from (seed, e), reseeds torch's global generator (dropout, AASIST's frequency mask)
from (seed, e), and augments clip ``i`` with ``rng_for(seed, e, i)``. A run resumed from the
checkpoint of epoch ``e`` therefore replays epochs ``e+1...`` exactly as the uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from voicescreen.audio import load_audio
from voicescreen.models.registry import get_architecture
from voicescreen.models.store import portable_path
from voicescreen.train.augment import rng_for
from voicescreen.train.checkpoints import (
    EpochTally,
    TrainResult,
    end_epoch,
    load_checkpoint,
    restore_checkpoint,
)
from voicescreen.train.data import Utterance, balanced_subset, load_split
from voicescreen.train.dataset import ClipDataset, EpochSampler, describe, files_digest, mix_seed
from voicescreen.train.evaluate import is_asvspoof2019, score_utterances
from voicescreen.train.export import export_trained
from voicescreen.train.frozen import train_frozen
from voicescreen.train.metrics import eer
from voicescreen.train.optim import adam, cross_entropy, learning_rate, set_learning_rate, take_step
from voicescreen.train.recipes import Recipe
from voicescreen.train.start import TrainError, build_model, resolve_device, set_deterministic

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)


def _loader(dataset: Any, sampler: Any, batch_size: int, recipe: Recipe, device) -> Any:
    import torch

    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=recipe.num_workers,
        pin_memory=device.type == "cuda",
        drop_last=False,
    )


def dev_figures(
    model: nn.Module,
    recipe: Recipe,
    dev: Sequence[Utterance],
    device: torch.device,
    batch_size: int,
    progress: bool,
) -> dict[str, float]:
    """Dev loss, accuracy (argmax, as the study) and EER on first windows."""
    import torch

    from voicescreen.models.bundle import score_from_logits

    arch = get_architecture(recipe.architecture)
    samples = arch.input_samples(recipe.model_config())
    criterion = cross_entropy(recipe, device)
    model.eval()
    targets = torch.tensor([u.target for u in dev])
    logits_all: list[torch.Tensor] = []

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            logits = model(torch.from_numpy(x).to(device)).float()
        logits_all.append(logits.cpu())
        return score_from_logits(logits, arch.score).cpu().numpy()

    scores = score_utterances(run, dev, samples, "clean", batch_size, progress, "dev")
    logits = torch.cat(logits_all)
    loss = float(criterion(logits.to(device), targets.to(device)))
    correct = int((logits.argmax(dim=1) == targets).sum())
    is_bona = targets.numpy() == 1
    return {
        "dev_loss": loss,
        "dev_acc": correct / len(dev),
        "dev_eer": eer(scores[is_bona], scores[~is_bona])[0],
    }


def train(
    recipe: Recipe,
    data_root: str | Path,
    out_dir: str | Path,
    *,
    resume: bool = False,
    export: str | Path | None = None,
    bundle_name: str | None = None,
    stop_after: int | None = None,
    device: str | None = None,
    progress: bool | None = None,
) -> TrainResult:
    """Train ``recipe`` on ``data_root``'s train split, writing checkpoints under ``out_dir``.

    ``resume`` continues from ``out_dir/checkpoint.pt`` (the recipe must match it);
    ``stop_after`` ends this call after that many epochs in total (a later ``resume`` finishes
    the run); ``export`` writes a calibrated bundle there once all epochs are done.
    """
    out = Path(out_dir)
    if resume:  # say so now, not after minutes of loading data and caching features
        load_checkpoint(out / "checkpoint.pt")
    out.mkdir(parents=True, exist_ok=True)
    progress = sys.stderr.isatty() if progress is None else progress
    (out / "recipe.json").write_text(json.dumps(recipe.to_dict(), indent=2) + "\n")

    all_train = load_split(data_root, "train")
    train_utts = balanced_subset(all_train, recipe.subset, recipe.seed, recipe.per_attack)
    extra = {root: load_split(root, "train") for root in recipe.extra_train}
    for utts in extra.values():
        train_utts += utts
    dev_utts = load_split(data_root, "dev")
    extra_dev = {root: load_split(root, "dev") for root in recipe.extra_dev}
    for utts in extra_dev.values():
        dev_utts += utts
    log.info("train: %s", describe(train_utts))
    data_card = {
        "root": portable_path(data_root),
        "corpus": "ASVspoof 2019 LA" if is_asvspoof2019(data_root, "train") else "custom",
        "train": describe(train_utts),
        "train_split_clips": len(all_train),
        "extra_train": [{"root": portable_path(root), **describe(u)} for root, u in extra.items()],
        "subset": recipe.subset,
        "per_attack": recipe.per_attack,
        "seed": recipe.seed,
        "dev": describe(dev_utts),
        "extra_dev": [
            {"root": portable_path(root), **describe(u)} for root, u in extra_dev.items()
        ],
        "train_files_sha": files_digest(train_utts),
    }

    if recipe.is_gmm:
        result = _train_gmm(recipe, train_utts, out)
    elif recipe.frozen_blocks:
        result = train_frozen(
            recipe, train_utts, dev_utts, out, resume, stop_after, device, progress
        )
    else:
        result = _train_torch(
            recipe, train_utts, dev_utts, out, resume, stop_after, device, progress
        )
    if export is not None and result.finished:
        result.bundle, result.metrics = export_trained(
            result.model,
            recipe,
            data_root,
            dev_utts,
            export,
            history=result.history,
            data_card=data_card,
            origin=result.origin,
            name=bundle_name,
            progress=progress,
        )
    elif export is not None:
        log.warning("not exporting: %d of %d epochs done", result.epochs_done, recipe.epochs)
    return result


def _train_gmm(recipe: Recipe, utts: Sequence[Utterance], out: Path) -> TrainResult:
    from voicescreen.models.gmm import fit_lfcc_gmm

    t0 = time.time()
    augment = recipe.augment if recipe.augment.enabled else None
    clips: dict[bool, list[np.ndarray]] = {True: [], False: []}
    for i, u in enumerate(utts):
        x = load_audio(u.path)
        if augment is not None:
            x = augment(x, rng_for(recipe.seed, 1, i))
        clips[u.is_bonafide].append(x)
    config = {**recipe.model_config(), "seed": recipe.seed}
    model = fit_lfcc_gmm(clips[True], clips[False], config)
    history = [{"epoch": 1, "fit_s": round(time.time() - t0, 1)}]
    (out / "history.json").write_text(json.dumps(history, indent=2) + "\n")
    origin = {"init": "fit (scikit-learn GaussianMixture)", "seed": str(recipe.seed)}
    return TrainResult(out, recipe, model.eval(), history, 1, True, origin=origin)


def _train_torch(
    recipe: Recipe,
    train_utts: Sequence[Utterance],
    dev_utts: Sequence[Utterance],
    out: Path,
    resume: bool,
    stop_after: int | None,
    device_name: str | None,
    progress: bool,
) -> TrainResult:
    import torch
    from tqdm import tqdm

    device = resolve_device(device_name)
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    if recipe.deterministic and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    set_deterministic(recipe.deterministic, device)
    arch = get_architecture(recipe.architecture)
    samples = arch.input_samples(recipe.model_config())
    model, origin = build_model(recipe, device)
    optimizer = adam(model.parameters(), recipe)
    use_amp = recipe.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    # float16 with loss scaling on CUDA; bfloat16 (same exponent range, no scaling) on CPU.
    autocast_dtype = torch.float16 if use_amp else torch.bfloat16
    use_autocast = use_amp or (recipe.cpu_bf16 and device.type == "cpu")
    criterion = cross_entropy(recipe, device)

    dataset = ClipDataset(
        train_utts, samples, crop=recipe.crop, augment=recipe.augment, seed=recipe.seed
    )
    sampler = EpochSampler(len(dataset), recipe.seed)
    loader = _loader(dataset, sampler, recipe.batch_size, recipe, device)
    steps_per_epoch = math.ceil(len(dataset) / recipe.batch_size)
    total_steps = steps_per_epoch * recipe.epochs

    history: list[dict] = []
    start_epoch, step = 1, 0
    if resume:
        history, start_epoch, step = restore_checkpoint(
            out, recipe, model, optimizer, scaler if use_amp else None
        )

    last = recipe.epochs if stop_after is None else min(recipe.epochs, stop_after)
    for epoch in range(start_epoch, last + 1):
        t0 = time.time()
        dataset.set_epoch(epoch)
        sampler.set_epoch(epoch)
        torch.manual_seed(mix_seed(recipe.seed, epoch, 2))  # dropout, frequency masks
        model.train()
        tally = EpochTally()
        bar = tqdm(
            loader,
            total=steps_per_epoch,
            desc=f"epoch {epoch}/{recipe.epochs}",
            unit="batch",
            disable=not progress,
            dynamic_ncols=True,
        )
        for x, y in bar:
            lr = learning_rate(recipe, step, epoch, total_steps)
            set_learning_rate(optimizer, lr)
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=use_autocast):
                logits = model(x)
            loss = criterion(logits.float(), y)
            where = f"epoch {epoch}, step {step}"
            take_step(optimizer, loss, model.parameters(), recipe, where, scaler)
            step += 1
            tally.add(loss, logits, y)
            bar.set_postfix(**tally.postfix(lr))
        bar.close()
        end_epoch(
            out,
            recipe,
            epoch=epoch,
            step=step,
            lr=lr,
            tally=tally,
            started=t0,
            history=history,
            model=model,
            optimizer=optimizer,
            scaler=scaler,
            dev=lambda: dev_figures(model, recipe, dev_utts, device, recipe.batch_size, progress),
        )

    done = history[-1]["epoch"] if history else 0
    model = model.cpu().eval()
    return TrainResult(out, recipe, model, history, done, done >= recipe.epochs, origin=origin)


__all__ = ["TrainError", "TrainResult", "dev_figures", "train"]
