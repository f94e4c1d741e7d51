"""What a run leaves behind: a history row and a checkpoint per epoch, and its result.

``OUT/checkpoints/epoch-NNN.pt`` and ``OUT/checkpoint.pt`` (the latest), each a plain dict of
tensors and numbers (the recipe and history as JSON strings), read back with
``torch.load(weights_only=True)``. ``OUT/history.json`` holds the per-epoch figures. A run
resumes from ``OUT/checkpoint.pt`` only with the recipe it was saved with (``RESUME_MAY_CHANGE``
apart).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voicescreen.train.recipes import Recipe
from voicescreen.train.start import TrainError

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "voicescreen-checkpoint"
CHECKPOINT_VERSION = 1

# Recipe fields that only change how a run executes, or what it is measured and calibrated on,
# not what it trains.
RESUME_MAY_CHANGE = frozenset({"num_workers", "threads", "eval_every", "extra_dev"})


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


def _fmt_row(row: dict[str, Any]) -> str:
    return ", ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
        for k, v in row.items()
        if k != "epoch"
    )


__all__ = [
    "EpochTally",
    "TrainResult",
    "end_epoch",
    "load_checkpoint",
    "restore_checkpoint",
    "save_checkpoint",
]
