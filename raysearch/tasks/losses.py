"""Losses by name: polygon regression losses (torch) and binary segmentation losses (smp.losses)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from raysearch.errors import ConfigError

REGRESSION_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "mse": F.mse_loss, "l1": F.l1_loss, "smooth_l1": F.smooth_l1_loss,
}
SEGMENTATION_LOSSES = ("dice", "bce", "focal", "dice_focal", "dice_bce")


def regression_loss(name: str, predicted: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """The polygon loss `name` (mse, l1 or smooth_l1 with beta 1) between (N, 8) predictions and targets."""
    if name not in REGRESSION_LOSSES:
        raise ConfigError(f"reg_loss: unknown {name!r}; valid: {', '.join(REGRESSION_LOSSES)}")
    return REGRESSION_LOSSES[name](predicted, target, reduction=reduction)


class SumLoss(nn.Module):
    """The sum of several losses of the same (output, target) pair, e.g. Dice + focal."""

    def __init__(self, *losses: nn.Module) -> None:
        super().__init__()
        self.losses = nn.ModuleList(losses)

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum((loss(output, target) for loss in self.losses), torch.zeros((), device=output.device))


@functools.cache
def segmentation_loss(name: str) -> nn.Module:
    """The binary mask loss `name` on logits (N, 1, H, W) and 0/1 targets: dice, bce, focal (gamma 2), or
    the sums dice_focal and dice_bce; each part from smp.losses."""
    from segmentation_models_pytorch import losses

    parts: dict[str, Callable[[], nn.Module]] = {
        "dice": lambda: losses.DiceLoss(losses.BINARY_MODE, from_logits=True),
        "bce": losses.SoftBCEWithLogitsLoss,
        "focal": lambda: losses.FocalLoss(losses.BINARY_MODE),
    }
    if name not in SEGMENTATION_LOSSES:
        raise ConfigError(f"seg_loss: unknown {name!r}; valid: {', '.join(SEGMENTATION_LOSSES)}")
    return SumLoss(*(parts[part]() for part in name.split("_")))
