"""Loss and metric functions against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from raysearch.errors import ConfigError
from raysearch.tasks.losses import SEGMENTATION_LOSSES, regression_loss, segmentation_loss
from raysearch.tasks.metrics import (
    class_details,
    classification_metrics,
    classification_samples,
    classification_summary,
    classification_sums,
    mask_counts,
    mask_metrics,
    polygon_iou,
    polygon_metrics,
    polygon_sums,
)

LN2 = math.log(2)
SQUARE = [0.0, 0.0, 0.5, 0.0, 0.5, 0.5, 0.0, 0.5]


def test_regression_losses_hand_computed() -> None:
    predicted = torch.tensor([[0.5, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    target = torch.zeros(1, 8)
    assert regression_loss("mse", predicted, target).item() == pytest.approx((0.25 + 4.0) / 8)
    assert regression_loss("l1", predicted, target).item() == pytest.approx(2.5 / 8)
    # Smooth L1 (beta 1): 0.5 x² below 1, |x| − 0.5 above.
    assert regression_loss("smooth_l1", predicted, target).item() == pytest.approx((0.125 + 1.5) / 8)
    with pytest.raises(ConfigError, match="reg_loss: unknown 'huber'; valid: mse, l1, smooth_l1"):
        regression_loss("huber", predicted, target)
    assert regression_loss("l1", predicted, target, reduction="sum").item() == pytest.approx(2.5)
    assert regression_loss("mse", predicted, target, reduction="none").tolist() == [[0.25, 0, 4.0, 0, 0, 0, 0, 0]]


def test_segmentation_losses_hand_computed() -> None:
    logits = torch.zeros(1, 1, 2, 2)  # probability 0.5 everywhere
    target = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    # Dice: 1 − 2·(0.5 + 0.5) / (4 · 0.5 + 2) = 0.5; BCE: ln 2; focal (gamma 2): (1 − 0.5)² · ln 2.
    expected = {"dice": 0.5, "bce": LN2, "focal": 0.25 * LN2, "dice_focal": 0.5 + 0.25 * LN2, "dice_bce": 0.5 + LN2}
    assert set(expected) == set(SEGMENTATION_LOSSES)
    for name, value in expected.items():
        assert segmentation_loss(name)(logits, target).item() == pytest.approx(value, rel=1e-5), name
    confident = target * 40 - 20
    assert segmentation_loss("dice_focal")(confident, target).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ConfigError, match="seg_loss: unknown 'lovasz'"):
        segmentation_loss("lovasz")


def test_class_details_hand_computed() -> None:
    confusion = torch.tensor([[2, 0, 0], [1, 1, 1], [0, 0, 0]])
    details = class_details(confusion)
    assert [details[f"precision_{i}"] for i in range(3)] == pytest.approx([2 / 3, 1.0, 0.0])
    assert [details[f"recall_{i}"] for i in range(3)] == pytest.approx([1.0, 1 / 3, 0.0])
    assert details["confusion_1_0"] == 1.0 and details["confusion_0_0"] == 2.0 and details["confusion_2_2"] == 0.0
    assert len(details) == 3 + 3 + 9


def test_classification_summary_of_weak_one_image_and_empty_validations() -> None:
    # classes 0 and 1 mostly confused (precision = recall = 1/3, so F1 = 1/3), class 2 neither true nor predicted:
    # macro F1 averages the classes seen only, balanced accuracy the classes present only
    weak = classification_summary(torch.tensor([[1, 2, 0], [2, 1, 0], [0, 0, 0]]))
    assert weak == pytest.approx({"accuracy": 1 / 3, "balanced_accuracy": 1 / 3, "macro_f1": 1 / 3})
    assert classification_summary(torch.tensor([[1, 0], [0, 0]])) == pytest.approx(
        {"accuracy": 1.0, "balanced_accuracy": 1.0, "macro_f1": 1.0})
    assert classification_summary(torch.zeros(3, 3)) == {"accuracy": 0.0, "balanced_accuracy": 0.0, "macro_f1": 0.0}


def test_classification_sums_add_up_over_batches() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    labels = torch.tensor([0, 1, 1])
    halves = [classification_sums(logits[:2], labels[:2], 2), classification_sums(logits[2:], labels[2:], 2)]
    sums = {k: halves[0][k] + halves[1][k] for k in halves[0]}
    assert sums["count"].item() == 3
    assert sums["class_loss"].item() == pytest.approx(torch.nn.functional.cross_entropy(logits, labels,
                                                                                        reduction="sum").item())
    samples = [classification_samples(logits[:2], labels[:2]), classification_samples(logits[2:], labels[2:])]
    gathered = {k: torch.cat([samples[0][k], samples[1][k]]) for k in samples[0]}
    metrics = classification_metrics({**sums, **gathered})
    assert metrics["accuracy"] == pytest.approx(2 / 3) and metrics["balanced_accuracy"] == pytest.approx(0.75)
    assert metrics["confusion_1_0"] == 1.0
    # each class's one-vs-rest pairs: one ranked right, one tied (image 2 looks like image 0), so AUROC 0.75
    assert metrics["auroc_0"] == pytest.approx(0.75) and metrics["auroc"] == pytest.approx(0.75)


def test_polygon_iou_hand_computed() -> None:
    square = torch.tensor([SQUARE])
    shifted = square + torch.tensor([[0.25, 0.0] * 4])
    far = square + 0.6
    crossed = torch.tensor([[0.0, 0.0, 0.5, 0.5, 0.5, 0.0, 0.0, 0.5]])  # same corners, self-crossing order
    point = torch.full((1, 8), 0.3)
    predicted = torch.cat([square, shifted, far, crossed, point])
    target = square.expand(5, 8)
    # shifted: intersection 0.25 × 0.5 = 0.125, union 0.25 + 0.25 − 0.125 = 0.375.
    assert polygon_iou(predicted, target).tolist() == pytest.approx([1.0, 1 / 3, 0.0, 1.0, 0.0], abs=1e-6)
    assert polygon_iou(point, point).tolist() == [0.0]  # no area on either side: nothing to score, 0
    assert polygon_iou(predicted.double(), target.double()).dtype == torch.float32
    with pytest.raises(ValueError):
        polygon_iou(predicted, target[:4])


def test_polygon_metrics_hand_computed() -> None:
    target = torch.tensor([SQUARE, SQUARE])
    predicted = target.clone()
    predicted[1] += torch.tensor([0.3, 0.4] * 4)  # every point 0.5 away
    metrics = polygon_metrics(polygon_sums(predicted, target), 2, baseline_apd=0.5)
    assert metrics["apd"] == pytest.approx(0.25)
    assert metrics["mse"] == pytest.approx((0.09 + 0.16) / 2 / 2)
    assert metrics["polygon_skill"] == pytest.approx(0.5)
    # Smooth L1 (0.5 x² below 1) summed over images and averaged over the 8 values: 4 × 0.3 and 4 × 0.4 off
    assert polygon_sums(predicted, target)["polygon_loss"].item() == pytest.approx(4 * 0.5 * (0.09 + 0.16) / 8)
    assert polygon_metrics(polygon_sums(predicted, target), 2, baseline_apd=0.0)["polygon_skill"] == 0.0
    assert metrics["polygon_iou"] == pytest.approx(0.5 * (1.0 + 0.2 * 0.1 / (0.25 + 0.25 - 0.02)))


def test_mask_metrics_from_summed_pixel_counts() -> None:
    logits = torch.tensor([[[[1.0, -1.0], [0.0, -3.0]]], [[[5.0, 5.0], [-5.0, -5.0]]]])
    target = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]], [[[1.0, 1.0], [0.0, 0.0]]]])
    # image 1: tp 1, fp 1 (logit 0 counts as foreground), fn 1, tn 1; image 2: tp 2, tn 2.
    counts = mask_counts(logits[:1], target[:1]) + mask_counts(logits[1:], target[1:])
    assert counts.tolist() == [3, 1, 1, 3]
    metrics = mask_metrics(counts)
    assert metrics["iou"] == pytest.approx(3 / 5) and metrics["f1"] == pytest.approx(6 / 8)
    assert metrics["precision"] == pytest.approx(3 / 4) and metrics["recall"] == pytest.approx(3 / 4)


def test_mask_metrics_with_nothing_predicted_or_nothing_to_find_are_finite() -> None:
    nothing_predicted = mask_metrics(torch.tensor([0, 0, 5, 10]))
    assert nothing_predicted == {"iou": 0.0, "f1": 0.0, "precision": 1.0, "recall": 0.0}
    assert mask_metrics(torch.tensor([0, 0, 0, 10])) == {"iou": 1.0, "f1": 1.0, "precision": 1.0, "recall": 1.0}
