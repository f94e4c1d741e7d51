"""Train a recipe on a corpus, checkpoint every epoch, resume, calibrate on dev and export a bundle.

    result = train(load_recipe("aasist-l", overrides={"init": "AASIST-L.pth"}), "../shared/data",
                   "runs/aasist-l", export="runs/aasist-l/bundle")

Data: the train split (optionally a seeded class-balanced ``subset``, plus the train splits of the
recipe's ``extra_train`` corpora) for training, the dev split (plus the dev splits of its
``extra_dev`` corpora) for the per-epoch figures and for calibration; the eval split is never read
here.

Windows: training draws a random crop of ``input_samples`` from each clip (AASIST's ``pad_random``;
``crop = "first"`` takes the first window, as Tak's RawNet2 loader), augments it, and repeat-pads
a short clip; dev uses the first window, repeat-padded (``evaluate.first_window``), as the
reference evaluation loaders and ``voicescreen score``'s window 0.

Determinism: the model is built under ``torch.manual_seed(seed)``; epoch ``e`` shuffles with a
generator seeded from (seed, e), reseeds torch's global generator (dropout, AASIST's frequency mask)
from (seed, e), and augments clip ``i`` with ``rng_for(seed, e, i)``. A run resumed from the
checkpoint of epoch ``e`` therefore replays epochs ``e+1...`` exactly as the uninterrupted run.

Checkpoints: ``OUT/checkpoints/epoch-NNN.pt`` and ``OUT/checkpoint.pt`` (the latest), each a plain
dict of tensors and numbers (the recipe and history as JSON strings), read back with
``torch.load(weights_only=True)``. ``OUT/history.json`` holds the per-epoch figures.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from voicescreen.audio import load_audio, pad_repeat
from voicescreen.models.registry import get_architecture
from voicescreen.models.store import portable_path
from voicescreen.train.augment import rng_for
from voicescreen.train.calibrate import Fitted, fit_scored, score_channels
from voicescreen.train.data import Utterance, balanced_subset, load_split
from voicescreen.train.evaluate import (
    compute_figures,
    find_asv_scores,
    first_window,
    is_asvspoof2019,
    score_utterances,
)
from voicescreen.train.metrics import eer
from voicescreen.train.recipes import Recipe

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "voicescreen-checkpoint"
CHECKPOINT_VERSION = 1
AASIST_ATTRIBUTION = (
    "initialised from the AASIST weights (c) 2021-present NAVER Corp., MIT licence, "
    "clovaai/aasist (Jung et al., ICASSP 2022)"
)


# Recipe fields that only change how a run executes, or what it is measured and calibrated on,
# not what it trains.
RESUME_MAY_CHANGE = frozenset({"num_workers", "threads", "eval_every", "extra_dev"})


class TrainError(RuntimeError):
    """A training run that cannot go on, with the reason."""


# --- data --------------------------------------------------------------------------------------


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

        g = torch.Generator().manual_seed(_mix(self.seed, self.epoch, 1))
        return iter(torch.randperm(self.n, generator=g).tolist())


def _mix(*keys: int) -> int:
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


# --- model, init, schedule ---------------------------------------------------------------------


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


def learning_rate(recipe: Recipe, step: int, epoch: int, total_steps: int) -> float:
    """The rate for optimiser step ``step`` (0-based) of epoch ``epoch`` (1-based).

    ``cosine``: AASIST's per-step cosine annealing from ``lr`` to ``lr_min`` over the whole run;
    ``step``: ``lr * gamma ** ((epoch - 1) // step_size)``; ``constant``: ``lr``.
    """
    if recipe.scheduler == "cosine":
        t = step / max(total_steps, 1)
        return recipe.lr_min + (recipe.lr - recipe.lr_min) * 0.5 * (1 + math.cos(math.pi * t))
    if recipe.scheduler == "step":
        return recipe.lr * recipe.gamma ** ((epoch - 1) // recipe.step_size)
    return recipe.lr


def set_deterministic(enabled: bool, device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.backends.cudnn.deterministic = enabled
        torch.backends.cudnn.benchmark = not enabled


# --- checkpoints -------------------------------------------------------------------------------


def save_checkpoint(
    out: Path,
    *,
    epoch: int,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: Any,
    recipe: Recipe,
    history: list[dict],
) -> Path:
    import torch

    state = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "epoch": epoch,
        "step": step,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else {},
        "recipe": json.dumps(recipe.to_dict()),
        "history": json.dumps(history),
    }
    folder = out / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"epoch-{epoch:03d}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    latest = out / "checkpoint.pt"
    shutil.copyfile(path, out / "checkpoint.tmp")
    (out / "checkpoint.tmp").replace(latest)
    (out / "history.json").write_text(json.dumps(history, indent=2) + "\n")
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    import torch

    path = Path(path)
    if not path.is_file():
        raise TrainError(f"{path}: no checkpoint to resume from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise TrainError(f"{path}: unreadable checkpoint ({e})") from e
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise TrainError(f"{path}: not a voicescreen training checkpoint")
    state["recipe"] = json.loads(state["recipe"])
    state["history"] = json.loads(state["history"])
    return state


class EpochTally:
    """Running loss and accuracy of one epoch's training batches (the study's figures)."""

    def __init__(self) -> None:
        self.loss, self.correct, self.seen = 0.0, 0, 0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        n = y.numel()
        self.loss += float(loss.detach()) * n
        self.correct += int((logits.argmax(dim=1) == y).sum())
        self.seen += n

    def postfix(self, lr: float) -> dict[str, str]:
        return {
            "loss": f"{self.loss / self.seen:.4f}",
            "acc": f"{self.correct / self.seen:.3f}",
            "lr": f"{lr:.2e}",
        }


def end_epoch(
    out: Path,
    recipe: Recipe,
    *,
    epoch: int,
    step: int,
    lr: float,
    tally: EpochTally,
    started: float,
    history: list[dict],
    model: nn.Module,
    optimizer: Any,
    scaler: Any,
    dev: Callable[[], dict[str, float]],
) -> None:
    """The epoch's history row (with the dev figures every ``eval_every`` epochs and at the
    last), appended to ``history``, and its checkpoint."""
    row: dict[str, Any] = {
        "epoch": epoch,
        "step": step,
        "lr": lr,
        "train_loss": tally.loss / tally.seen,
        "train_acc": tally.correct / tally.seen,
    }
    if recipe.eval_every and (epoch % recipe.eval_every == 0 or epoch == recipe.epochs):
        row.update(dev())
    row["time_s"] = round(time.time() - started, 2)
    history.append(row)
    path = save_checkpoint(
        out,
        epoch=epoch,
        step=step,
        model=model,
        optimizer=optimizer,
        scaler=scaler,
        recipe=recipe,
        history=history,
    )
    log.info("epoch %d: %s (checkpoint %s)", epoch, _fmt_row(row), path)


def restore_checkpoint(
    out: Path, recipe: Recipe, model: nn.Module, optimizer: Any, scaler: Any
) -> tuple[list[dict], int, int]:
    """Load ``out/checkpoint.pt`` into the model, optimiser (and AMP scaler) after checking the
    recipe is the one it was saved with; returns (history, next epoch, step)."""
    state = load_checkpoint(out / "checkpoint.pt")
    now = json.loads(json.dumps(recipe.to_dict()))
    saved = json.loads(json.dumps(Recipe.from_dict(state["recipe"]).to_dict()))
    diff = sorted(k for k in now if k not in RESUME_MAY_CHANGE and saved.get(k) != now[k])
    if diff:
        raise TrainError(f"cannot resume: the recipe differs from the checkpoint's in {diff}")
    model.load_state_dict(state["model"], strict=True)
    optimizer.load_state_dict(state["optimizer"])
    if state["scaler"] and scaler is not None:
        scaler.load_state_dict(state["scaler"])
    log.info("resumed from epoch %d (step %d)", state["epoch"], state["step"])
    return state["history"], int(state["epoch"]) + 1, int(state["step"])


# --- training ----------------------------------------------------------------------------------


@dataclass
class TrainResult:
    out_dir: Path
    recipe: Recipe
    model: Any  # the trained torch module, on CPU, eval mode
    history: list[dict] = field(default_factory=list)
    epochs_done: int = 0
    finished: bool = False  # all of the recipe's epochs are done
    bundle: Path | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)  # where the initial weights came from


def _criterion(recipe: Recipe, device: torch.device) -> nn.Module:
    import torch

    weight = None
    if recipe.class_weights is not None:
        weight = torch.tensor(recipe.class_weights, dtype=torch.float32, device=device)
    return torch.nn.CrossEntropyLoss(weight=weight)


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
    criterion = _criterion(recipe, device)
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
        "train_files_sha": _files_digest(train_utts),
    }

    if recipe.is_gmm:
        result = _train_gmm(recipe, train_utts, out)
    elif recipe.frozen_blocks:
        from voicescreen.train.frozen import train_frozen

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


def _files_digest(utts: Sequence[Utterance]) -> str:
    import hashlib

    h = hashlib.sha256()
    for name in sorted(u.file for u in utts):
        h.update(name.encode() + b"\n")
    return h.hexdigest()[:16]


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
    optimizer = torch.optim.Adam(
        model.parameters(),
        lr=recipe.lr,
        betas=recipe.betas,
        weight_decay=recipe.weight_decay,
        amsgrad=recipe.amsgrad,
    )
    use_amp = recipe.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    # float16 with loss scaling on CUDA; bfloat16 (same exponent range, no scaling) on CPU.
    autocast_dtype = torch.float16 if use_amp else torch.bfloat16
    use_autocast = use_amp or (recipe.cpu_bf16 and device.type == "cpu")
    criterion = _criterion(recipe, device)

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
        torch.manual_seed(_mix(recipe.seed, epoch, 2))  # dropout, frequency masks
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
            for group in optimizer.param_groups:
                group["lr"] = lr
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=use_autocast):
                logits = model(x)
            loss = criterion(logits.float(), y)
            if not torch.isfinite(loss):
                raise TrainError(f"epoch {epoch}, step {step}: the loss is {float(loss)}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if recipe.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            scaler.step(optimizer)
            scaler.update()
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


def _fmt_row(row: dict[str, Any]) -> str:
    return ", ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
        for k, v in row.items()
        if k != "epoch"
    )


# --- calibration and export --------------------------------------------------------------------


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
    from voicescreen.models.runtime import OnnxRuntime

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
        f = compute_figures(dev, scores, threshold, asv, note)
        dev_metrics[ch] = {
            "eer": f.eer,
            "min_tdcf": f.min_tdcf,
            "bonafide_accepted": f.bonafide_accepted,
            "spoof_rejected": f.spoof_rejected,
            "accuracy": f.accuracy,
            "per_attack_eer": {a: v["eer"] for a, v in f.per_attack.items()},
        }
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


__all__ = [
    "ClipDataset",
    "EpochSampler",
    "TrainError",
    "TrainResult",
    "build_model",
    "calibrate",
    "export_trained",
    "learning_rate",
    "load_checkpoint",
    "load_init_weights",
    "resolve_init",
    "restore_checkpoint",
    "train",
]
