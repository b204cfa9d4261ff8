"""The multitask trainable: model shapes across depths, metric functions on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from raysearch.data.cache import CachedDataset
from raysearch.tasks import create_task
from raysearch.tasks.base import TaskContext
from raysearch.tasks.metrics import (
    average_point_distance,
    classification_summary,
    confusion_matrix,
    point_distances,
    polygon_skill,
)
from raysearch.training.batches import train_batches
from raysearch.training.hparams import defaults
from raysearch.training.validation import baseline_apd

CONTEXT = TaskContext(num_classes=6, in_channels=1, baseline_apd=0.2)


@pytest.mark.parametrize(("conv_layers", "pool_every", "width"), [(1, 1, 4), (3, 1, 8), (6, 2, 16), (8, 1, 8)])
def test_model_shapes_across_depths(conv_layers: int, pool_every: int, width: int) -> None:
    task = create_task("multitask")
    hp = {**defaults(task.hyperparameters), "conv_layers": conv_layers, "pool_every": pool_every, "width": width}
    model = task.build_model(hp, CONTEXT)
    output = model(torch.randn(3, 1, 32, 32))
    assert output["logits"].shape == (3, 6)
    assert output["polygon"].shape == (3, 8)
    assert 0 <= output["polygon"].min() and output["polygon"].max() <= 1
    convolutions = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convolutions) == conv_layers


def test_uncertainty_weighting_learns_log_variances() -> None:
    task = create_task("multitask")
    hp = {**defaults(task.hyperparameters), "loss_weighting": "uncertainty"}
    model = task.build_model(hp, CONTEXT)
    batch = {"image": torch.randn(4, 1, 32, 32), "label": torch.tensor([0, 1, 2, 3]), "polygon": torch.rand(4, 8)}
    loss = task.loss(model, model(batch["image"]), batch, hp, CONTEXT)
    loss.backward()
    assert model.log_variances.grad is not None and model.log_variances.grad.abs().sum() > 0


def test_point_distance_hand_computed() -> None:
    target = torch.tensor([[0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0]])
    predicted = target + torch.tensor([[0.3, 0.4, 0.0, 0.0, 0.0, 0.1, 0.0, 0.0]])
    assert point_distances(predicted, target)[0].tolist() == pytest.approx([0.5, 0.0, 0.1, 0.0])
    assert average_point_distance(predicted, target) == pytest.approx(0.15)


def test_classification_summary_hand_computed() -> None:
    logits = torch.tensor([[2.0, 0, 0], [2.0, 0, 0], [0, 2.0, 0], [2.0, 0, 0], [0, 0, 2.0]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    confusion = confusion_matrix(logits, labels, 3)
    assert confusion.tolist() == [[2, 0, 0], [1, 1, 1], [0, 0, 0]]
    summary = classification_summary(confusion)
    assert summary["accuracy"] == pytest.approx(3 / 5)
    assert summary["balanced_accuracy"] == pytest.approx((1.0 + 1 / 3) / 2)
    f1_class0 = 2 * (2 / 3) * 1.0 / (2 / 3 + 1.0)
    f1_class1 = 2 * 1.0 * (1 / 3) / (1.0 + 1 / 3)
    assert summary["macro_f1"] == pytest.approx((f1_class0 + f1_class1 + 0.0) / 3)


def test_polygon_skill_and_score() -> None:
    assert polygon_skill(0.1, 0.2) == pytest.approx(0.5)
    assert polygon_skill(0.2, 0.2) == pytest.approx(0.0)
    assert polygon_skill(0.3, 0.2) == pytest.approx(-0.5)
    task = create_task("multitask")
    sums = {"class_loss": torch.tensor(3.0), "polygon_loss": torch.tensor(1.0), "count": torch.tensor(4.0),
            "distance": torch.tensor(0.4), "squared_error": torch.tensor(0.08), "polygon_iou": torch.tensor(2.0),
            "confusion": torch.tensor([[2, 0], [1, 1]]),
            "probabilities": torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.3, 0.7]]),
            "labels": torch.tensor([0, 0, 1, 1])}
    metrics = task.summarise(sums, TaskContext(2, 1, baseline_apd=0.2))
    assert metrics["accuracy"] == pytest.approx(0.75)
    assert metrics["apd"] == pytest.approx(0.1) and metrics["mse"] == pytest.approx(0.02)
    assert metrics["loss"] == pytest.approx(1.0) and metrics["polygon_iou"] == pytest.approx(0.5)
    assert metrics["score"] == pytest.approx(0.5 * 0.75 + 0.5 * 0.5)


def test_baseline_apd_is_the_mean_polygon_error() -> None:
    polygons = np.array([[0.2] * 8, [0.4] * 8, [0.5] * 8, [np.nan] * 8], dtype=np.float32)
    data = CachedDataset(None, None, None, np.zeros(4), polygons, np.array([0, 0, 1, 1]), [], [])  # type: ignore[arg-type]
    # mean training polygon is 0.3 everywhere; the one validation polygon is 0.2 away per coordinate
    assert baseline_apd(data, np.array([0, 1]), np.array([2, 3])) == pytest.approx(math.hypot(0.2, 0.2), rel=1e-5)
    # the mean is taken per coordinate: x at 0.1, y at 0.5 in training; the validation polygon sits at (0.1, 0.2)
    corners = np.array([[0.1, 0.5] * 4, [0.1, 0.5] * 4, [0.1, 0.2] * 4, [np.nan] * 8], dtype=np.float32)
    shifted = CachedDataset(None, None, None, np.zeros(4), corners, np.array([0, 0, 1, 1]), [], [])  # type: ignore[arg-type]
    assert baseline_apd(shifted, np.array([0, 1]), np.array([2, 3])) == pytest.approx(0.3, rel=1e-5)
    # no polygon in training, or none to validate on: no baseline (0)
    assert baseline_apd(data, np.array([3]), np.array([2])) == 0.0
    assert baseline_apd(data, np.array([0, 1]), np.array([3])) == 0.0


def test_train_batches_split_global_batch_over_workers() -> None:
    rows = np.arange(20)
    hp = {"batch_size": 8}
    single = list(train_batches(rows, hp, epoch=0, seed=3, rank=0, world=1))
    shards = [list(train_batches(rows, hp, epoch=0, seed=3, rank=r, world=2)) for r in range(2)]
    assert [len(b) for b in single] == [8, 8, 4]
    assert len(shards[0]) == len(shards[1]) == 3
    assert sorted(np.concatenate([np.concatenate(s) for s in shards]).tolist()) == list(range(20))
    assert not set(np.concatenate(shards[0]).tolist()) & set(np.concatenate(shards[1]).tolist())
    odd = [np.concatenate(list(train_batches(np.arange(21), hp, epoch=0, seed=3, rank=r, world=2))) for r in range(2)]
    assert [len(shard) for shard in odd] == [10, 10]  # one row left out: every worker trains on as many images


@pytest.mark.parametrize("reg_loss", ["smooth_l1", "mse", "l1"])
def test_uncertainty_weighting_is_kendall_s_formula(reg_loss: str) -> None:
    """exp(−s₁)·CE + exp(−s₂)·polygon loss + s₁ + s₂ (Kendall et al. 2018), computed here by hand."""
    task = create_task("multitask")
    hp = {**defaults(task.hyperparameters), "loss_weighting": "uncertainty", "reg_loss": reg_loss}
    model = task.build_model(hp, CONTEXT)
    with torch.no_grad():
        model.log_variances.copy_(torch.tensor([0.3, -0.7]))
    logits = torch.tensor([[2.0, 0.0, -1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0, 0.0, 3.0]])
    labels = [0, 5]
    predicted = torch.tensor([[0.1] * 8, [0.5] * 8])
    target = torch.tensor([[0.1] * 7 + [2.1], [0.5] * 7 + [0.75]])
    batch = {"label": torch.tensor(labels), "polygon": target}
    loss = task.loss(model, {"logits": logits, "polygon": predicted}, batch, hp, CONTEXT).item()

    pairs = zip(logits.tolist(), labels, strict=True)
    cross_entropy = sum(math.log(sum(math.exp(v) for v in row)) - row[y] for row, y in pairs) / 2
    errors = [2.0] + [0.25] + [0.0] * 14  # the two targets that differ, over all 16 values
    per_value = {"mse": lambda e: e * e, "l1": abs, "smooth_l1": lambda e: 0.5 * e * e if e < 1 else e - 0.5}
    polygon = sum(per_value[reg_loss](e) for e in errors) / 16
    assert loss == pytest.approx(math.exp(-0.3) * cross_entropy + math.exp(0.7) * polygon + 0.3 - 0.7, rel=1e-5)

    fixed = {**hp, "loss_weighting": "fixed", "loss_weight": 2.5}
    plain = task.build_model(fixed, CONTEXT)
    assert task.loss(plain, {"logits": logits, "polygon": predicted}, batch, fixed, CONTEXT).item() == pytest.approx(
        cross_entropy + 2.5 * polygon, rel=1e-5)
