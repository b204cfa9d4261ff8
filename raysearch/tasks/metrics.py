"""Metric functions on tensors, written as sums so that workers can all-reduce them before dividing."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch.nn import functional as F


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


def _precision_recall(confusion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class precision and recall of a (true, predicted) confusion matrix; 0 where undefined."""
    confusion = confusion.double()
    true_positive = confusion.diag()
    return true_positive / confusion.sum(dim=0).clamp_min(1), true_positive / confusion.sum(dim=1).clamp_min(1)


def classification_summary(confusion: torch.Tensor) -> dict[str, float]:
    """Accuracy, balanced accuracy (mean recall over classes present) and macro F1 (over classes present
    in truth or prediction) from a confusion matrix."""
    confusion = confusion.double()
    true_positive = confusion.diag()
    support, predicted = confusion.sum(dim=1), confusion.sum(dim=0)
    total = confusion.sum().clamp_min(1)
    present = support > 0
    precision, recall = _precision_recall(confusion)
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


def class_details(confusion: torch.Tensor) -> dict[str, float]:
    """Per-class precision and recall and the confusion matrix as flat scalars (Tune metrics are scalars):
    `precision_<i>`, `recall_<i>` and `confusion_<true>_<predicted>` counts, i indexing the class names.
    A rate with nothing to divide (a class never predicted, or absent) is 0, like scikit-learn's default."""
    precision, recall = _precision_recall(confusion)
    details = {f"precision_{i}": value for i, value in enumerate(precision.tolist())}
    details |= {f"recall_{i}": value for i, value in enumerate(recall.tolist())}
    for (true, predicted), count in np.ndenumerate(confusion.cpu().numpy()):
        details[f"confusion_{true}_{predicted}"] = float(count)
    return details


def polygon_iou(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Intersection over union of each pair of 4-point polygons, (N, 8) × (N, 8) → (N,).

    Each polygon is taken as its convex hull (a predicted point order may cross itself) and intersected
    with OpenCV's `intersectConvexConvex`; a pair whose union has no area scores 0.
    """
    predicted_points = predicted.detach().float().cpu().numpy().reshape(-1, 4, 2)
    target_points = target.detach().float().cpu().numpy().reshape(-1, 4, 2)
    scores = []
    for a, b in zip(predicted_points, target_points, strict=True):
        hull_a, hull_b = cv2.convexHull(a), cv2.convexHull(b)
        area_a, area_b = cv2.contourArea(hull_a), cv2.contourArea(hull_b)
        intersection = cv2.intersectConvexConvex(hull_a, hull_b)[0] if area_a > 0 and area_b > 0 else 0.0
        union = area_a + area_b - intersection
        scores.append(intersection / union if union > 0 else 0.0)
    return torch.tensor(scores, dtype=torch.float32, device=predicted.device)


def classification_sums(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, torch.Tensor]:
    """Per-batch sums of a class head: cross-entropy summed over images, image count, confusion matrix."""
    return {
        "class_loss": F.cross_entropy(logits, labels, reduction="sum"),
        "count": torch.tensor(float(len(labels)), device=labels.device),
        "confusion": confusion_matrix(logits, labels, num_classes),
    }


def classification_metrics(sums: dict[str, torch.Tensor]) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro F1, then the per-class details, from summed `classification_sums`."""
    return {**classification_summary(sums["confusion"]), **class_details(sums["confusion"])}


def polygon_sums(predicted: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-batch sums over images of the polygon metrics: Smooth L1 (mean over the 8 values), point
    distance, squared error and IoU."""
    return {
        "polygon_loss": F.smooth_l1_loss(predicted, target, reduction="sum") / 8,
        "distance": point_distances(predicted, target).mean(dim=1).sum(),
        "squared_error": (predicted - target).pow(2).mean(dim=1).sum(),
        "polygon_iou": polygon_iou(predicted, target).sum(),
    }


def polygon_metrics(sums: dict[str, torch.Tensor], count: float, baseline_apd: float) -> dict[str, float]:
    """APD, MSE, mean polygon IoU and polygon skill from `polygon_sums` added up over `count` images."""
    apd = sums["distance"].item() / count
    return {
        "apd": apd,
        "mse": sums["squared_error"].item() / count,
        "polygon_iou": sums["polygon_iou"].item() / count,
        "polygon_skill": polygon_skill(apd, baseline_apd),
    }


def mask_counts(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pixel counts [tp, fp, fn, tn] of a binary mask prediction (logit >= 0) against a 0/1 target, summed
    over the batch (smp.metrics.get_stats), to be added up over batches and workers."""
    from segmentation_models_pytorch import metrics

    stats = metrics.get_stats((logits >= 0).long(), target.long(), mode="binary")
    return torch.stack([s.sum() for s in stats])


def mask_metrics(counts: torch.Tensor) -> dict[str, float]:
    """Foreground IoU, F1 (= Dice), precision and recall from summed `mask_counts` (smp.metrics): every pixel
    of the split weighs the same, and a ratio with nothing to divide (e.g. no foreground, true or predicted)
    is 1, smp's convention for "nothing to find, nothing found"."""
    from segmentation_models_pytorch import metrics

    tp, fp, fn, tn = (c.view(1, 1) for c in counts)
    scores = {"iou": metrics.iou_score, "f1": metrics.f1_score, "precision": metrics.precision,
              "recall": metrics.recall}
    return {name: score(tp, fp, fn, tn, zero_division=1.0).item() for name, score in scores.items()}
