"""Regression: the 4-point polygon around the fracture, 8 values normalised to [0, 1], canonical order.

Loss: `reg_loss`, one of mse, l1 or smooth_l1 (the reference choice). Metrics: MSE, average point
distance (APD, normalised units), polygon IoU (the two quadrilaterals' convex hulls intersected with
OpenCV) and polygon skill = 1 − APD / APD of always predicting the mean training polygon. val_loss is
Smooth L1 whatever `reg_loss` trains, so validation losses compare across trials.

val_score = polygon skill (0: no better than the mean polygon, 1: perfect). It ranks trials exactly as
APD, the reference's figure, does, and reads the same on every dataset.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from raysearch.data.cache import CachedDataset
from raysearch.models import HeadNet, backbone_from
from raysearch.tasks.base import REG_LOSS, Batch, Task, TaskContext
from raysearch.tasks.losses import regression_loss
from raysearch.tasks.metrics import polygon_metrics, polygon_sums
from raysearch.tasks.registry import register_task


@register_task
class RegressionTask(Task):
    """Fracture polygon from one network."""

    name = "regression"
    hyperparameters = {"reg_loss": REG_LOSS}
    needs = ("polygon",)

    def usable(self, data: CachedDataset, rows: np.ndarray) -> np.ndarray:
        """Images with a polygon."""
        return rows[~np.isnan(data.polygons[rows, 0])]

    def build_model(self, hp: Mapping[str, Any], context: TaskContext) -> nn.Module:
        return HeadNet(backbone_from(hp, context.in_channels), dropout=hp["dropout"], polygon=True)

    def loss(
        self, model: nn.Module, output: Any, batch: Batch, hp: Mapping[str, Any], context: TaskContext
    ) -> torch.Tensor:
        return regression_loss(hp["reg_loss"], output["polygon"], batch["polygon"])

    def metric_sums(self, output: Any, batch: Batch, context: TaskContext) -> dict[str, torch.Tensor]:
        count = torch.tensor(float(len(batch["polygon"])), device=batch["polygon"].device)
        return {"count": count, **polygon_sums(output["polygon"], batch["polygon"])}

    def summarise(self, sums: dict[str, torch.Tensor], context: TaskContext) -> dict[str, float]:
        count = max(sums["count"].item(), 1.0)
        metrics = polygon_metrics(sums, count, context.baseline_apd)
        return {"loss": sums["polygon_loss"].item() / count, "score": self.score_of(metrics), **metrics}

    def score_of(self, figures: Mapping[str, Any]) -> Any:
        return figures["polygon_skill"]
