"""Multitask: fracture class and 4-point polygon from one backbone with two heads.

Loss = cross-entropy (with `label_smoothing`) + loss_weight × the `reg_loss` polygon loss ("fixed"), or
Kendall et al.'s uncertainty weighting ("uncertainty": each loss scaled by a learned precision exp(−s)
plus s), the searchable fix for the reference multitask network's lost accuracy. Metrics: those of
classification and of regression; val_loss = cross-entropy + Smooth L1, whatever the training loss.

val_score = ½ · accuracy + ½ · polygon skill, where polygon skill = 1 − APD / APD of always predicting
the mean training polygon (0 = no localisation at all, 1 = perfect).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from raysearch.core.schema import choice, real
from raysearch.data.cache import CachedDataset
from raysearch.models import HeadNet, backbone_from
from raysearch.tasks.base import LABEL_SMOOTHING, REG_LOSS, Batch, Task, TaskContext
from raysearch.tasks.losses import regression_loss
from raysearch.tasks.metrics import (
    classification_metrics,
    classification_samples,
    classification_sums,
    polygon_metrics,
    polygon_sums,
)
from raysearch.tasks.registry import register_task

LOSS_WEIGHTINGS = ("fixed", "uncertainty")


class TwoHeadNet(HeadNet):
    """Backbone → dropout → class logits and sigmoid polygon; with `uncertainty`, the two learned log
    variances of uncertainty weighting (trained with the network by the same optimizer)."""

    def __init__(self, backbone: nn.Module, num_classes: int, dropout: float, uncertainty: bool) -> None:
        super().__init__(backbone, dropout=dropout, num_classes=num_classes, polygon=True)
        self.log_variances = nn.Parameter(torch.zeros(2)) if uncertainty else None


@register_task
class MultitaskTask(Task):
    """Class + polygon from one network."""

    name = "multitask"
    hyperparameters = {"loss_weight": real(1.0, 0.0), "loss_weighting": choice("fixed", LOSS_WEIGHTINGS),
                       "reg_loss": REG_LOSS, "label_smoothing": LABEL_SMOOTHING}
    needs = ("class", "polygon")

    def usable(self, data: CachedDataset, rows: np.ndarray) -> np.ndarray:
        """Images with both a class and a polygon."""
        return rows[(data.labels[rows] >= 0) & ~np.isnan(data.polygons[rows, 0])]

    def build_model(self, hp: Mapping[str, Any], context: TaskContext) -> nn.Module:
        return TwoHeadNet(backbone_from(hp, context.in_channels), context.num_classes, hp["dropout"],
                          uncertainty=hp["loss_weighting"] == "uncertainty")

    def loss(
        self, model: nn.Module, output: Any, batch: Batch, hp: Mapping[str, Any], context: TaskContext
    ) -> torch.Tensor:
        classification = F.cross_entropy(
            output["logits"], batch["label"], weight=context.class_weights, label_smoothing=hp["label_smoothing"]
        )
        regression = regression_loss(hp["reg_loss"], output["polygon"], batch["polygon"])
        log_variances = getattr(model, "module", model).log_variances
        if log_variances is None:
            return classification + hp["loss_weight"] * regression
        precision = torch.exp(-log_variances)
        return precision[0] * classification + precision[1] * regression + log_variances.sum()

    def metric_sums(self, output: Any, batch: Batch, context: TaskContext) -> dict[str, torch.Tensor]:
        return {**classification_sums(output["logits"], batch["label"], context.num_classes),
                **polygon_sums(output["polygon"], batch["polygon"])}

    def metric_samples(self, output: Any, batch: Batch, context: TaskContext) -> dict[str, torch.Tensor]:
        return classification_samples(output["logits"], batch["label"])

    def score_of(self, figures: Mapping[str, Any]) -> Any:
        return 0.5 * figures["accuracy"] + 0.5 * figures["polygon_skill"]

    def summarise(self, sums: dict[str, torch.Tensor], context: TaskContext) -> dict[str, float]:
        count = max(sums["count"].item(), 1.0)
        classes = classification_metrics(sums)
        polygons = polygon_metrics(sums, count, context.baseline_apd)
        return {
            "loss": (sums["class_loss"].item() + sums["polygon_loss"].item()) / count,
            "score": self.score_of({**classes, **polygons}),
            **classes,
            **polygons,
        }
