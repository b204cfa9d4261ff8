"""Multitask: fracture class and 4-point polygon from one backbone with two heads.

Loss = cross-entropy + loss_weight × Smooth L1 ("fixed"), or Kendall et al.'s uncertainty weighting
("uncertainty": each loss scaled by a learned precision exp(−s) plus s), the searchable fix for the
reference multitask network's lost accuracy.

val_score = ½ · accuracy + ½ · polygon skill, where polygon skill = 1 − APD / APD of always predicting
the mean training polygon (0 = no localisation at all, 1 = perfect).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from raysearch.data.cache import CachedDataset
from raysearch.metrics import classification_summary, confusion_matrix, point_distances, polygon_skill
from raysearch.models import create_backbone
from raysearch.tasks import register_task
from raysearch.tasks.base import Batch, Task, TaskContext


class TwoHeadNet(nn.Module):
    """Backbone → dropout → class logits and sigmoid polygon (8 values in [0, 1])."""

    def __init__(self, backbone: nn.Module, num_classes: int, dropout: float, uncertainty: bool) -> None:
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(backbone.num_features, num_classes)
        self.polygon = nn.Linear(backbone.num_features, 8)
        self.log_variances = nn.Parameter(torch.zeros(2)) if uncertainty else None

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.dropout(self.backbone(images))
        return {"logits": self.classifier(features), "polygon": torch.sigmoid(self.polygon(features))}


def backbone_from(hp: dict[str, Any], context: TaskContext) -> nn.Module:
    """The trial's backbone from its model hyperparameters."""
    return create_backbone(
        hp["model"], in_channels=context.in_channels, pretrained=hp["pretrained"], conv_layers=hp["conv_layers"],
        pool_every=hp["pool_every"], width=hp["width"], batch_norm=hp["batch_norm"],
    )


@register_task
class MultitaskTask(Task):
    """Class + polygon from one network."""

    name = "multitask"
    hyperparameters = {"loss_weight": 1.0, "loss_weighting": "fixed"}

    def usable(self, data: CachedDataset, rows: np.ndarray) -> np.ndarray:
        """Images with both a class and a polygon."""
        return rows[(data.labels[rows] >= 0) & ~np.isnan(data.polygons[rows, 0])]

    def build_model(self, hp: dict[str, Any], context: TaskContext) -> nn.Module:
        return TwoHeadNet(backbone_from(hp, context), context.num_classes, hp["dropout"],
                          uncertainty=hp["loss_weighting"] == "uncertainty")

    def loss(self, model: nn.Module, output: Any, batch: Batch, hp: dict[str, Any]) -> torch.Tensor:
        classification = F.cross_entropy(output["logits"], batch["label"])
        regression = F.smooth_l1_loss(output["polygon"], batch["polygon"])
        log_variances = getattr(model, "module", model).log_variances
        if log_variances is None:
            return classification + hp["loss_weight"] * regression
        precision = torch.exp(-log_variances)
        return precision[0] * classification + precision[1] * regression + log_variances.sum()

    def metric_sums(self, output: Any, batch: Batch, context: TaskContext) -> dict[str, torch.Tensor]:
        labels, polygons = batch["label"], batch["polygon"]
        return {
            "loss": F.cross_entropy(output["logits"], labels, reduction="sum")
            + F.smooth_l1_loss(output["polygon"], polygons, reduction="sum") / 8,
            "count": torch.tensor(float(len(labels)), device=labels.device),
            "confusion": confusion_matrix(output["logits"], labels, context.num_classes),
            "distance": point_distances(output["polygon"], polygons).mean(dim=1).sum(),
            "squared_error": (output["polygon"] - polygons).pow(2).mean(dim=1).sum(),
        }

    def summarise(self, sums: dict[str, torch.Tensor], context: TaskContext) -> dict[str, float]:
        count = max(sums["count"].item(), 1.0)
        summary = classification_summary(sums["confusion"])
        apd = sums["distance"].item() / count
        skill = polygon_skill(apd, context.baseline_apd)
        return {
            "loss": sums["loss"].item() / count,
            "accuracy": summary["accuracy"],
            "balanced_accuracy": summary["balanced_accuracy"],
            "macro_f1": summary["macro_f1"],
            "apd": apd,
            "mse": sums["squared_error"].item() / count,
            "polygon_skill": skill,
            "score": 0.5 * summary["accuracy"] + 0.5 * skill,
        }
