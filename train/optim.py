"""The optimiser a recipe asks for, its learning-rate schedule, and the loss."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

from voicescreen.train.recipes import Recipe
from voicescreen.train.start import TrainError

if TYPE_CHECKING:
    import torch
    from torch import nn


def adam(params: Iterable[torch.nn.Parameter], recipe: Recipe) -> torch.optim.Adam:
    """Adam with the recipe's rate, betas, weight decay and AMSGrad switch."""
    import torch

    return torch.optim.Adam(
        params,
        lr=recipe.lr,
        betas=recipe.betas,
        weight_decay=recipe.weight_decay,
        amsgrad=recipe.amsgrad,
    )


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


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def take_step(
    optimizer: torch.optim.Optimizer,
    loss: torch.Tensor,
    params: Iterable[torch.nn.Parameter],
    recipe: Recipe,
    where: str,
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """One optimiser step on ``loss``: a loss that is not finite stops the run (``TrainError``
    naming ``where``), gradients are clipped to ``recipe.grad_clip`` when it is set, and
    ``scaler`` (float16 autocast's loss scaler) scales, unscales before clipping, and steps."""
    import torch

    if not torch.isfinite(loss):
        raise TrainError(f"{where}: the loss is {float(loss)}")
    optimizer.zero_grad(set_to_none=True)
    (scaler.scale(loss) if scaler is not None else loss).backward()
    if recipe.grad_clip:
        if scaler is not None:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, recipe.grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


def cross_entropy(recipe: Recipe, device: torch.device) -> nn.Module:
    """Cross-entropy, weighted per class by ``class_weights`` if set."""
    import torch

    weight = None
    if recipe.class_weights is not None:
        weight = torch.tensor(recipe.class_weights, dtype=torch.float32, device=device)
    return torch.nn.CrossEntropyLoss(weight=weight)


__all__ = ["adam", "cross_entropy", "learning_rate", "set_learning_rate", "take_step"]
