"""Optimizers and learning-rate schedulers from hyperparameters (all from torch.optim)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.optim import lr_scheduler

from raysearch.errors import ConfigError

PER_BATCH_SCHEDULERS = frozenset({"onecycle"})
OPTIMIZERS: dict[str, Callable[[Any, Mapping[str, Any]], torch.optim.Optimizer]] = {
    "adam": lambda parameters, hp: torch.optim.Adam(parameters, lr=hp["lr"], weight_decay=hp["weight_decay"]),
    "adamw": lambda parameters, hp: torch.optim.AdamW(parameters, lr=hp["lr"], weight_decay=hp["weight_decay"]),
    "sgd": lambda parameters, hp: torch.optim.SGD(parameters, lr=hp["lr"], momentum=hp["momentum"],
                                                  weight_decay=hp["weight_decay"], nesterov=True),
}
LRBuilder = Callable[[torch.optim.Optimizer, Mapping[str, Any], int, int], Any]
# name -> builder(optimizer, hp, epochs it schedules, steps per epoch): the one table of learning-rate schedulers
LR_SCHEDULERS: dict[str, LRBuilder] = {
    "none": lambda optimizer, hp, epochs, steps: lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0),
    "step": lambda optimizer, hp, epochs, steps: lr_scheduler.StepLR(optimizer, step_size=hp["step_size"],
                                                                     gamma=hp["gamma"]),
    "cosine": lambda optimizer, hp, epochs, steps: lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs),
    "cosine_restarts": lambda optimizer, hp, epochs, steps: lr_scheduler.CosineAnnealingWarmRestarts(
        optimizer, T_0=hp["step_size"]),
    "plateau": lambda optimizer, hp, epochs, steps: lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=hp["gamma"], patience=hp["plateau_patience"]),
    "onecycle": lambda optimizer, hp, epochs, steps: lr_scheduler.OneCycleLR(
        optimizer, max_lr=hp["lr"], total_steps=max(epochs * steps, 1)),
}
OWN_WARM_UP = frozenset({"onecycle", "plateau"})  # no warm-up epochs: onecycle ramps itself, plateau follows loss


def create_optimizer(parameters: Any, hp: Mapping[str, Any]) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD with (Nesterov) momentum."""
    name = hp["optimizer"]
    if name not in OPTIMIZERS:
        raise ConfigError(f"optimizer: unknown {name!r}; valid: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](parameters, hp)


def create_scheduler(
    optimizer: torch.optim.Optimizer, hp: Mapping[str, Any], *, epochs: int, steps_per_epoch: int
) -> Any:
    """The scheduler named by `scheduler`, after `warmup_epochs` of linear warm-up (epoch-stepped ones).

    `onecycle` is stepped per batch and has its own warm-up; `plateau` watches the validation loss.
    """
    name, warmup = hp["scheduler"], hp["warmup_epochs"]
    if name not in LR_SCHEDULERS:
        raise ConfigError(f"scheduler: unknown {name!r}; valid: {', '.join(sorted(LR_SCHEDULERS))}")
    own = name in OWN_WARM_UP
    scheduler = LR_SCHEDULERS[name](optimizer, hp, epochs if own else max(epochs - warmup, 1), steps_per_epoch)
    if own or warmup <= 0:
        return scheduler
    ramp = lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=warmup)
    return lr_scheduler.SequentialLR(optimizer, [ramp, scheduler], milestones=[warmup])


def step_epoch(scheduler: Any, val_loss: float) -> None:
    """Advance an epoch-stepped scheduler at the end of an epoch."""
    if isinstance(scheduler, lr_scheduler.ReduceLROnPlateau):
        scheduler.step(val_loss)
    elif not isinstance(scheduler, lr_scheduler.OneCycleLR):
        scheduler.step()
