"""Metric functions on tensors, written as sums so that workers can all-reduce them before dividing."""

from __future__ import annotations

import torch


def point_distances(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Euclidean distance per point, (N, 8) flattened polygons → (N, 4), in normalised image units."""
    return (predicted.view(-1, 4, 2) - target.view(-1, 4, 2)).norm(dim=-1)


def average_point_distance(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """APD: mean distance between corresponding polygon points (normalised units)."""
    return point_distances(predicted, target).mean().item()


def confusion_matrix(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts (true class, predicted class) as a (C, C) int64 tensor."""
    predicted = logits.argmax(dim=1)
    flat = labels * num_classes + predicted
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def classification_summary(confusion: torch.Tensor) -> dict[str, float]:
    """Accuracy, balanced accuracy (mean recall over classes present) and macro F1 (over classes present
    in truth or prediction) from a confusion matrix."""
    confusion = confusion.double()
    true_positive = confusion.diag()
    support, predicted = confusion.sum(dim=1), confusion.sum(dim=0)
    total = confusion.sum().clamp_min(1)
    present = support > 0
    recall = true_positive / support.clamp_min(1)
    precision = true_positive / predicted.clamp_min(1)
    f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
    seen = present | (predicted > 0)
    return {
        "accuracy": (true_positive.sum() / total).item(),
        "balanced_accuracy": recall[present].mean().item() if present.any() else 0.0,
        "macro_f1": f1[seen].mean().item() if seen.any() else 0.0,
    }


def polygon_skill(apd: float, baseline_apd: float) -> float:
    """1 − APD / baseline APD: 0 for a model no better than always predicting the mean training polygon,
    1 for a perfect one, negative for worse than the mean."""
    return 1.0 - apd / baseline_apd if baseline_apd > 0 else 0.0
