"""Metric functions on tensors, written as sums so that workers can all-reduce them before dividing."""

from __future__ import annotations

import math
import warnings

import cv2
import numpy as np
import torch
from torch.nn import functional as F

ECE_BINS = 15  # expected calibration error: equal-width confidence bins


def point_distances(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Euclidean distance per point, (N, 8) flattened polygons → (N, 4), in normalised image units."""
    return (predicted.view(-1, 4, 2) - target.view(-1, 4, 2)).norm(dim=-1)


def average_point_distance(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """APD: mean distance between corresponding polygon points (normalised units)."""
    return point_distances(predicted, target).mean().item()


def confusion_matrix(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts (true class, predicted class) as a (C, C) int64 tensor."""
    return class_confusion(logits.argmax(dim=1), labels, num_classes)


def class_confusion(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts (true class, predicted class) of predicted class indices, (C, C) int64."""
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


def classification_samples(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image rows of a class head, gathered (not summed) over the split: softmax probabilities and labels."""
    return {"probabilities": logits.softmax(dim=1), "labels": labels}


def classification_metrics(sums: dict[str, torch.Tensor]) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro F1, the per-class details, then the probability figures (AUROC,
    kappa, ECE, sensitivity and specificity: `probability_metrics`) from summed `classification_sums` and the
    gathered `classification_samples`."""
    return {**classification_summary(sums["confusion"]), **class_details(sums["confusion"]),
            **probability_metrics(sums["probabilities"], sums["labels"])}


def probability_metrics(probabilities: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """The figures of class probabilities (N, C) against labels (N,), from torchmetrics:

    `auroc_<i>` one-vs-rest per class and `auroc` their mean, both over the classes present with at least one
    image outside them too (NaN otherwise: torchmetrics would score an absent class 0 and average it in);
    `kappa` (Cohen's, of the arg-max class; NaN when truth and prediction are one single class);
    `ece` (expected calibration error of the top class, 15 equal-width bins, L1); `sensitivity_<i>` (= recall)
    and `specificity_<i>` one-vs-rest (NaN when the split has no image of, or only images of, that class).
    """
    from torchmetrics.functional.classification import (
        multiclass_auroc,
        multiclass_calibration_error,
        multiclass_cohen_kappa,
    )

    classes = probabilities.shape[1]
    labels = labels.long()
    support = torch.bincount(labels, minlength=classes).cpu()
    defined = (support > 0) & (support < len(labels))
    nan = float("nan")
    if len(labels) and defined.any():
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="No (positive|negative) samples")
            per_class = multiclass_auroc(probabilities, labels, classes, average=None, thresholds=None).cpu()
        auroc = [value if ok else nan for value, ok in zip(per_class.tolist(), defined.tolist(), strict=True)]
    else:
        auroc = [nan] * classes
    present = [a for a in auroc if not math.isnan(a)]
    figures = {"auroc": sum(present) / len(present) if present else nan}
    figures |= {f"auroc_{i}": value for i, value in enumerate(auroc)}
    if len(labels):
        predicted = probabilities.argmax(dim=1)
        figures["kappa"] = multiclass_cohen_kappa(predicted, labels, classes).item()
        figures["ece"] = multiclass_calibration_error(probabilities, labels, classes, n_bins=ECE_BINS, norm="l1").item()
    else:
        figures |= {"kappa": nan, "ece": nan}
    figures |= sensitivity_specificity(probabilities.argmax(dim=1), labels, classes)
    return figures


def sensitivity_specificity(predicted: torch.Tensor, labels: torch.Tensor, classes: int) -> dict[str, float]:
    """One-vs-rest `sensitivity_<i>` = TP / (TP + FN) and `specificity_<i>` = TN / (TN + FP) of predicted
    classes; NaN where the denominator is 0."""
    confusion = class_confusion(predicted, labels, classes).double().cpu()
    total, tp = confusion.sum(), confusion.diag()
    positives, predicted_positive = confusion.sum(dim=1), confusion.sum(dim=0)
    negatives = total - positives
    tn = total - positives - predicted_positive + tp
    figures = {}
    for i in range(classes):
        figures[f"sensitivity_{i}"] = (tp[i] / positives[i]).item() if positives[i] else float("nan")
        figures[f"specificity_{i}"] = (tn[i] / negatives[i]).item() if negatives[i] else float("nan")
    return figures


def youden_threshold(scores: np.ndarray, positive: np.ndarray, target_sensitivity: float | None = None) -> float:
    """The operating threshold on positive-class scores (predict positive when score >= threshold), from the
    ROC curve (torchmetrics `binary_roc`): the one maximising Youden's J = sensitivity + specificity − 1, the
    highest such on ties; with `target_sensitivity`, the highest threshold whose sensitivity reaches it.
    0.5 when `positive` holds a single class (no ROC curve)."""
    from torchmetrics.functional.classification import binary_roc

    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        return 0.5
    fpr, tpr, thresholds = (t.numpy().astype(np.float64) for t in binary_roc(
        torch.as_tensor(scores, dtype=torch.float64), torch.as_tensor(positive, dtype=torch.long), thresholds=None))
    thresholds = np.minimum(thresholds, 1.0)  # torchmetrics puts 1 above the top score (its "predict none" point)
    if target_sensitivity is not None:
        return float(thresholds[int(np.argmax(tpr >= target_sensitivity - 1e-12))])
    return float(thresholds[int(np.argmax(tpr - fpr))])


def operating_point(scores: np.ndarray, positive: np.ndarray, threshold: float) -> dict[str, float]:
    """Sensitivity, specificity, PPV and NPV of predicting positive when score >= threshold (NaN where a
    denominator is 0), and the threshold itself."""
    positive, called = np.asarray(positive, dtype=bool), np.asarray(scores) >= threshold
    tp, fp = float(np.sum(called & positive)), float(np.sum(called & ~positive))
    fn, tn = float(np.sum(~called & positive)), float(np.sum(~called & ~positive))

    def ratio(a: float, b: float) -> float:
        return a / (a + b) if a + b else float("nan")

    return {"threshold": float(threshold), "op_sensitivity": ratio(tp, fn), "op_specificity": ratio(tn, fp),
            "op_ppv": ratio(tp, fp), "op_npv": ratio(tn, fn)}


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


def surface_distances(predicted: np.ndarray, target: np.ndarray,
                      spacing: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-image 95th-percentile Hausdorff distance and average symmetric surface distance of binary masks
    (N, H, W), from MONAI (`compute_hausdorff_distance`, `compute_average_surface_distance`, Euclidean), in
    pixels, or in the units of `spacing` (row, column size of a pixel, e.g. mm) when given.

    Where both masks are empty the distances are 0 (nothing to find, nothing found); where exactly one is,
    they are undefined and NaN (MONAI's answer too), left out of the means.
    """
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    predicted, target = np.asarray(predicted, dtype=bool), np.asarray(target, dtype=bool)
    hd95, assd = np.full(len(target), np.nan), np.full(len(target), np.nan)
    filled_p, filled_t = predicted.any(axis=(1, 2)), target.any(axis=(1, 2))
    both = filled_p & filled_t
    hd95[~filled_p & ~filled_t] = assd[~filled_p & ~filled_t] = 0.0
    if both.any():
        y_pred = torch.from_numpy(predicted[both, None]).float()
        y = torch.from_numpy(target[both, None]).float()
        options = {"include_background": True, "spacing": None if spacing is None else list(spacing)}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # MONAI's own deprecated argument, passed internally
            hd95[both] = compute_hausdorff_distance(y_pred, y, percentile=95, **options)[:, 0].numpy()
            assd[both] = compute_average_surface_distance(y_pred, y, symmetric=True, **options)[:, 0].numpy()
    return hd95, assd



def roc_points(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ROC curve's (false positive rate, true positive rate) points of one-vs-rest scores (torchmetrics
    `binary_roc`, every distinct score a threshold); empty when `positive` holds a single class."""
    from torchmetrics.functional.classification import binary_roc

    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        return np.empty(0), np.empty(0)
    fpr, tpr, _ = binary_roc(torch.as_tensor(np.asarray(scores), dtype=torch.float64),
                             torch.as_tensor(positive, dtype=torch.long), thresholds=None)
    return fpr.numpy(), tpr.numpy()


def reliability_points(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """The reliability diagram of the top class: per non-empty bin of the ECE's `ECE_BINS` equal-width
    confidence bins (torchmetrics' binning), its mean confidence, accuracy and image count."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == np.asarray(labels)).astype(np.float64)
    bins = calibration_bins(confidence)
    count = np.bincount(bins, minlength=ECE_BINS + 1).astype(np.float64)
    filled = count > 0
    return {"confidence": (np.bincount(bins, confidence, ECE_BINS + 1) / np.maximum(count, 1))[filled],
            "accuracy": (np.bincount(bins, correct, ECE_BINS + 1) / np.maximum(count, 1))[filled],
            "images": count[filled]}


def calibration_bins(confidence: np.ndarray) -> np.ndarray:
    """Each confidence's bin among `ECE_BINS` equal-width bins, as torchmetrics bins them (`bucketize` on the
    edges, right-closed: a confidence of exactly 1 has a bin of its own, index ECE_BINS)."""
    return np.searchsorted(np.linspace(0, 1, ECE_BINS + 1), confidence, side="right") - 1
