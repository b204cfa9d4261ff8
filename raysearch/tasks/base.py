"""What every task provides to the one training loop: model, loss, metric sums and their summary."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from raysearch.core.schema import HParam, choice, real
from raysearch.data.cache import CachedDataset
from raysearch.tasks.losses import REGRESSION_LOSSES

LABEL_SMOOTHING = real(0.0, 0.0, 1.0, high_open=True)
REG_LOSS = choice("smooth_l1", REGRESSION_LOSSES)

Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class TaskContext:
    """Facts about the data that models and metrics need: classes, channels, reference baselines.

    `class_weights` (num_classes,) is set when the trial asked for a class-weighted loss (class_balance:
    weighted_loss): inverse class frequencies of the training rows, 0 for classes absent from them.
    """

    num_classes: int
    in_channels: int
    baseline_apd: float
    class_weights: torch.Tensor | None = None


class Task(ABC):
    """A trainable: builds its model, computes its loss, and accumulates its metrics as sums.

    Output convention (every task's model): a dict with some of "logits" (N, classes), "polygon"
    (N, 8) in [0, 1], "mask" (N, 1, H, W) logits; `predictions` turns it into numpy for evaluation.

    `metric_sums` returns tensors that are summed over batches and over workers (all-reduce), and
    `metric_samples` per-image rows that are concatenated over batches and gathered from every worker (the
    figures that need all the scores at once, such as AUROC); `summarise` receives both in one dict and turns
    them into the reported metrics, so validation covers every sample exactly once.
    """

    name: ClassVar[str]
    score: ClassVar[str] = "val_score"
    mode: ClassVar[str] = "max"
    hyperparameters: ClassVar[dict[str, HParam]] = {}
    needs: ClassVar[tuple[str, ...]] = ()  # targets the data must have: class, polygon, mask

    def usable(self, data: CachedDataset, rows: np.ndarray) -> np.ndarray:
        """The rows this task can train on (e.g. only images with a polygon for regression)."""
        return rows

    @abstractmethod
    def build_model(self, hp: Mapping[str, Any], context: TaskContext) -> nn.Module:
        """The network for one trial's hyperparameters."""

    @abstractmethod
    def loss(
        self, model: nn.Module, output: Any, batch: Batch, hp: Mapping[str, Any], context: TaskContext
    ) -> torch.Tensor:
        """The training loss of one batch (`context.class_weights` weights the classes, when set)."""

    @abstractmethod
    def metric_sums(self, output: Any, batch: Batch, context: TaskContext) -> dict[str, torch.Tensor]:
        """Per-batch sums (counts, error sums, confusion matrices) to be added up over the split."""

    def metric_samples(self, output: Any, batch: Batch, context: TaskContext) -> dict[str, torch.Tensor]:
        """Per-image rows (first dimension = the batch's images) to be gathered over the split; none by default."""
        return {}

    def predictions(self, output: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """Per-image predictions as numpy: class probabilities and class, polygon, binary mask."""
        found: dict[str, np.ndarray] = {}
        if "logits" in output:
            probabilities = output["logits"].softmax(dim=1)
            found["probabilities"] = probabilities.cpu().numpy()
            found["class"] = probabilities.argmax(dim=1).cpu().numpy()
        if "polygon" in output:
            found["polygon"] = output["polygon"].cpu().numpy()
        if "mask" in output:
            found["mask"] = (output["mask"][:, 0] > 0).cpu().numpy().astype(np.uint8)
        return found

    @abstractmethod
    def score_of(self, figures: Mapping[str, Any]) -> Any:
        """`score` from the other figures (floats, or numpy arrays of bootstrap replicates alike)."""

    @abstractmethod
    def summarise(self, sums: dict[str, torch.Tensor], context: TaskContext) -> dict[str, float]:
        """Metrics from the summed state and the gathered samples, including `score`, without the `val_` prefix."""
