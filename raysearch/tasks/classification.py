"""Classification: the fracture class of an image (the first polygon's class for YOLO data, the folder's
name for class-folder data).

Loss: cross-entropy, with searchable `label_smoothing`. Metrics: accuracy, balanced accuracy, macro F1,
per-class precision and recall (`precision_<i>`, `recall_<i>`, i indexing the dataset's class names) and
the confusion matrix (`confusion_<true>_<predicted>` counts), all scalars so that Tune and the Parquet
results keep them. val_loss is the plain cross-entropy.

val_score = balanced accuracy (mean recall over the classes present in the validation split). The
classes are imbalanced (about 3:1 in the real data) and plain accuracy rewards always answering the
biggest class, the first thing a short trial learns; accuracy is reported beside it, to compare with
the reference figures.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from raysearch.data.cache import CachedDataset
from raysearch.models import HeadNet, backbone_from
from raysearch.tasks.base import LABEL_SMOOTHING, Batch, Task, TaskContext
from raysearch.tasks.metrics import classification_metrics, classification_samples, classification_sums
from raysearch.tasks.registry import register_task


@register_task
class ClassificationTask(Task):
    """Fracture class from one network."""

    name = "classification"
    hyperparameters = {"label_smoothing": LABEL_SMOOTHING}
    needs = ("class",)

    def usable(self, data: CachedDataset, rows: np.ndarray) -> np.ndarray:
        """Images with a class."""
        return rows[data.labels[rows] >= 0]

    def build_model(self, hp: Mapping[str, Any], context: TaskContext) -> nn.Module:
        return HeadNet(backbone_from(hp, context.in_channels), dropout=hp["dropout"], num_classes=context.num_classes)

    def loss(
        self, model: nn.Module, output: Any, batch: Batch, hp: Mapping[str, Any], context: TaskContext
    ) -> torch.Tensor:
        return F.cross_entropy(
            output["logits"], batch["label"], weight=context.class_weights, label_smoothing=hp["label_smoothing"]
        )

    def metric_sums(self, output: Any, batch: Batch, context: TaskContext) -> dict[str, torch.Tensor]:
        return classification_sums(output["logits"], batch["label"], context.num_classes)

    def metric_samples(self, output: Any, batch: Batch, context: TaskContext) -> dict[str, torch.Tensor]:
        return classification_samples(output["logits"], batch["label"])

    def summarise(self, sums: dict[str, torch.Tensor], context: TaskContext) -> dict[str, float]:
        metrics = classification_metrics(sums)
        loss = sums["class_loss"].item() / max(sums["count"].item(), 1.0)
        return {"loss": loss, "score": self.score_of(metrics), **metrics}

    def score_of(self, figures: Mapping[str, Any]) -> Any:
        return figures["balanced_accuracy"]
