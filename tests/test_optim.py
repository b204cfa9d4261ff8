"""The searched optimiser and scheduler dimensions do what their names say: learning rates epoch by epoch against
the schedules' formulas, and each optimiser's update on a hand-computed step."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from raysearch.errors import ConfigError
from raysearch.training.hparams import OPTIMISATION
from raysearch.training.optim import create_optimizer, create_scheduler, step_epoch

LR = 1.0


def _hp(**changes: Any) -> dict[str, Any]:
    return {**OPTIMISATION, "lr": LR, **changes}


def _lrs(epochs: int, val_losses: list[float] | None = None, **changes: Any) -> list[float]:
    """The learning rate of each of `epochs` epochs, stepping the scheduler as the loop does after each epoch."""
    hp = _hp(**changes)
    optimizer = create_optimizer([torch.nn.Parameter(torch.zeros(1))], hp)
    scheduler = create_scheduler(optimizer, hp, epochs=epochs, steps_per_epoch=1)
    found = []
    for epoch in range(epochs):
        found.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        step_epoch(scheduler, 1.0 if val_losses is None else val_losses[epoch])
    return found


def _cosine(step: int, period: int) -> float:
    return LR * (1 + math.cos(math.pi * step / period)) / 2


def test_no_scheduler_keeps_the_learning_rate() -> None:
    assert _lrs(4, scheduler="none") == [LR] * 4


def test_step_multiplies_by_gamma_every_step_size_epochs() -> None:
    assert _lrs(6, scheduler="step", step_size=2, gamma=0.5) == pytest.approx([1, 1, 0.5, 0.5, 0.25, 0.25])
    assert _lrs(4, scheduler="step", step_size=1, gamma=0.1) == pytest.approx([1, 0.1, 0.01, 0.001])


def test_cosine_anneals_to_zero_over_the_run() -> None:
    assert _lrs(5, scheduler="cosine") == pytest.approx([_cosine(e, 5) for e in range(5)])


def test_cosine_restarts_every_step_size_epochs() -> None:
    assert _lrs(6, scheduler="cosine_restarts", step_size=3) == pytest.approx([_cosine(e % 3, 3) for e in range(6)])


def test_plateau_multiplies_by_gamma_after_patience_epochs_without_a_better_val_loss() -> None:
    losses = [1.0, 0.5, 0.6, 0.6, 0.6, 0.4, 0.4]
    # the best loss (0.5) is not beaten at epochs 3 and 4: after the second (> patience 1) the rate halves
    assert _lrs(7, losses, scheduler="plateau", gamma=0.5, plateau_patience=1) == pytest.approx(
        [1, 1, 1, 1, 0.5, 0.5, 0.5])
    assert _lrs(7, losses, scheduler="plateau", gamma=0.5, plateau_patience=5) == [LR] * 7


@pytest.mark.parametrize("warmup", [1, 3])
def test_warmup_ramps_linearly_from_a_tenth_then_hands_over_to_the_schedule(warmup: int) -> None:
    epochs = 7
    ramp = [LR * (0.1 + 0.9 * e / warmup) for e in range(warmup)]
    assert _lrs(epochs, scheduler="cosine", warmup_epochs=warmup) == pytest.approx(
        ramp + [_cosine(e, epochs - warmup) for e in range(epochs - warmup)])
    assert _lrs(epochs, scheduler="step", step_size=2, gamma=0.5, warmup_epochs=warmup) == pytest.approx(
        ramp + [0.5 ** (e // 2) for e in range(epochs - warmup)])


def test_onecycle_steps_per_batch_from_a_25th_to_lr_and_down() -> None:
    hp = _hp(scheduler="onecycle")
    optimizer = create_optimizer([torch.nn.Parameter(torch.zeros(1))], hp)
    scheduler = create_scheduler(optimizer, hp, epochs=2, steps_per_epoch=10)
    lrs = []
    for step in range(20):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
        if step == 9:
            before = optimizer.param_groups[0]["lr"]
            step_epoch(scheduler, 1.0)  # the loop's end-of-epoch step leaves a per-batch schedule alone
            assert optimizer.param_groups[0]["lr"] == before
    assert lrs[0] == pytest.approx(LR / 25)
    assert max(lrs) == pytest.approx(LR, rel=0.05) and lrs.index(max(lrs)) == 5  # peak at 30 % of 20 steps
    assert lrs[-1] < LR / 1e3


def test_onecycle_spans_every_batch_of_the_run() -> None:
    hp = _hp(scheduler="onecycle")
    optimizer = create_optimizer([torch.nn.Parameter(torch.zeros(1))], hp)
    assert create_scheduler(optimizer, hp, epochs=2, steps_per_epoch=7).total_steps == 14
    assert create_scheduler(optimizer, hp, epochs=3, steps_per_epoch=0).total_steps == 1  # no batch: still valid


def _one_parameter_steps(hp: dict[str, Any], gradient: float, steps: int) -> list[float]:
    """The parameter (starting at 1) after each of `steps` optimiser steps with a constant gradient."""
    parameter = torch.nn.Parameter(torch.ones(1))
    optimizer = create_optimizer([parameter], hp)
    values = []
    for _ in range(steps):
        parameter.grad = torch.full((1,), gradient)
        optimizer.step()
        values.append(parameter.item())
    return values


def test_sgd_uses_nesterov_momentum() -> None:
    hp = _hp(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=0.0)
    # Nesterov: buffer b ← m·b + g, update g + m·b: 1.9 then 1 + 0.9 · 1.9 = 2.71
    assert _one_parameter_steps(hp, 1.0, 2) == pytest.approx([1 - 0.19, 1 - 0.19 - 0.271])
    optimizer = create_optimizer([torch.nn.Parameter(torch.ones(1))], hp)
    assert type(optimizer) is torch.optim.SGD and optimizer.defaults["nesterov"]


def test_adam_adds_weight_decay_to_the_gradient_and_adamw_decouples_it() -> None:
    # zero gradient, weight decay 0.5: Adam sees gradient 0.5 · p and takes a full lr step (0.1);
    # AdamW shrinks p by lr · decay · p (0.05) and its Adam step on a zero gradient is 0
    adam = _one_parameter_steps(_hp(optimizer="adam", lr=0.1, weight_decay=0.5), 0.0, 1)
    adamw = _one_parameter_steps(_hp(optimizer="adamw", lr=0.1, weight_decay=0.5), 0.0, 1)
    assert adam == pytest.approx([0.9], abs=1e-6)
    assert adamw == pytest.approx([0.95], abs=1e-6)
    for name, kind in {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}.items():
        optimizer = create_optimizer([torch.nn.Parameter(torch.ones(1))], _hp(optimizer=name, weight_decay=0.01))
        assert type(optimizer) is kind
        assert optimizer.defaults["betas"] == (0.9, 0.999) and optimizer.defaults["weight_decay"] == 0.01


def test_unknown_optimiser_and_scheduler_names_are_refused_with_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="optimizer: unknown 'rmsprop'; valid: adam, adamw, sgd"):
        create_optimizer([torch.nn.Parameter(torch.ones(1))], _hp(optimizer="rmsprop"))
    optimizer = create_optimizer([torch.nn.Parameter(torch.ones(1))], _hp())
    with pytest.raises(ConfigError, match="scheduler: unknown 'linear'; valid: cosine, cosine_restarts, none, "
                                          "onecycle, plateau, step"):
        create_scheduler(optimizer, _hp(scheduler="linear"), epochs=3, steps_per_epoch=1)
