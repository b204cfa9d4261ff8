"""The contract every registered task keeps with the one training loop, checked on a tiny phantom dataset."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from raysearch.core.columns import is_epoch_metric
from raysearch.data.cache import CachedDataset, build_cache, load_cache
from raysearch.data.phantom import PhantomSpec, write_phantom
from raysearch.data.preprocess import Preprocessing
from raysearch.data.yolo import read_yolo
from raysearch.errors import ConfigError
from raysearch.tasks import create_task, task_names
from raysearch.tasks.base import TaskContext
from raysearch.training.batches import make_batch
from raysearch.training.hparams import defaults
from raysearch.training.session import LocalSession
from raysearch.training.trainer import LoopSettings, train
from raysearch.training.validation import baseline_apd

SIZE = 32
OUTPUTS = {"classification": {"logits"}, "regression": {"polygon"}, "multitask": {"logits", "polygon"},
           "segmentation": {"mask"}}



@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> CachedDataset:
    """A preprocessed cache of 12 phantom radiographs (8 train, 4 val) with bone masks, at 32 px."""
    root = tmp_path_factory.mktemp("tasks")
    data = write_phantom(root / "phantom", PhantomSpec(train=8, val=4, test=0, image_size=SIZE), progress=False)
    build_cache(read_yolo(data), Preprocessing(image_size=SIZE), root / "cache", progress=False)
    return load_cache(root / "cache")


def small_hp(name: str) -> dict[str, Any]:
    """The task's defaults, made small: 32 px, batch 4, a narrow two-layer CNN."""
    task = create_task(name)
    return {**defaults(task.hyperparameters), "image_size": SIZE, "batch_size": 4, "conv_layers": 2, "width": 8}


def context_of(data: CachedDataset, name: str) -> TaskContext:
    task = create_task(name)
    rows = task.usable(data, data.indices("train")), task.usable(data, data.indices("val"))
    return TaskContext(len(data.classes), 1, baseline_apd(data, *rows))


def test_registry_lists_the_four_tasks_and_refuses_others() -> None:
    assert set(task_names()) >= set(OUTPUTS)
    with pytest.raises(ConfigError, match="unknown task 'detection'.*classification.*segmentation"):
        create_task("detection")


@pytest.mark.parametrize("name", task_names())
def test_forward_backward_loss_and_metrics_are_finite(name: str, tiny_cache: CachedDataset) -> None:
    task, hp, context = create_task(name), small_hp(name), context_of(tiny_cache, name)
    rows = task.usable(tiny_cache, tiny_cache.indices("train"))
    assert 0 < len(rows) <= len(tiny_cache.indices("train"))
    model = task.build_model(hp, context)
    batch = make_batch(tiny_cache, rows[:4], hp, torch.device("cpu"))
    output = model(batch["image"])
    assert set(output) == OUTPUTS.get(name, set(output))
    loss = task.loss(model, output, batch, hp, context)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    gradients = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in gradients)
    with torch.no_grad():
        evaluated = model(batch["image"])
    metrics = task.summarise({**task.metric_sums(evaluated, batch, context),
                              **task.metric_samples(evaluated, batch, context)}, context)
    assert {"loss", "score"} <= set(metrics)
    # NaN only where a figure is undefined on 4 images (a class absent: its AUROC, sensitivity; kappa of one class)
    assert all(isinstance(v, float) and not math.isinf(v) for v in metrics.values()), metrics
    assert math.isfinite(metrics["loss"]) and math.isfinite(metrics["score"])
    predictions = task.predictions(evaluated)
    assert all(len(v) == len(rows[:4]) for v in predictions.values())


@pytest.mark.parametrize("name", task_names())
def test_one_tiny_training_run_reports_every_epoch(name: str, tiny_cache: CachedDataset, tmp_path: Path) -> None:
    session = LocalSession(kept=tmp_path)
    train(small_hp(name), LoopSettings(name, str(tiny_cache.directory), max_epochs=2, seed=0), session)
    assert [metrics["epoch"] for metrics in session.history] == [1, 2]
    for metrics in session.history:
        assert math.isfinite(metrics["train_loss"]) and math.isfinite(metrics["val_score"])
        assert metrics["params"] > 0 and metrics["latency_ms"] > 0
        assert all(is_epoch_metric(key) for key in metrics)  # the one epoch-record schema (core.columns)
        assert "state.pt" in {p.name for p in (tmp_path / f"epoch_{metrics['epoch']}").iterdir()}
    assert "best_model.pt" in {p.name for p in (tmp_path / "epoch_1").iterdir()}


def test_classification_reports_per_class_values_and_the_confusion_matrix(tiny_cache: CachedDataset) -> None:
    task, context = create_task("classification"), context_of(tiny_cache, "classification")
    model = task.build_model(small_hp("classification"), context)
    rows = tiny_cache.indices("val")
    batch = make_batch(tiny_cache, rows, small_hp("classification"), torch.device("cpu"))
    with torch.no_grad():
        output = model(batch["image"])
        metrics = task.summarise({**task.metric_sums(output, batch, context),
                                  **task.metric_samples(output, batch, context)}, context)
    classes = len(tiny_cache.classes)
    assert sum(metrics[f"confusion_{t}_{p}"] for t in range(classes) for p in range(classes)) == len(rows)
    for i in range(classes):
        assert 0 <= metrics[f"precision_{i}"] <= 1 and 0 <= metrics[f"recall_{i}"] <= 1
    assert metrics["score"] == metrics["balanced_accuracy"]


def test_segmentation_trains_on_the_bone_masks(tiny_cache: CachedDataset) -> None:
    masks = np.asarray(tiny_cache.masks)
    assert set(np.unique(masks)) == {0, 1}
    task, hp = create_task("segmentation"), small_hp("segmentation")
    batch = make_batch(tiny_cache, tiny_cache.indices("val"), hp, torch.device("cpu"))
    perfect = {"mask": batch["mask"] * 40 - 20}
    context = context_of(tiny_cache, "segmentation")
    metrics = task.summarise({**task.metric_sums(perfect, batch, context),
                              **task.metric_samples(perfect, batch, context)}, context)
    assert metrics["iou"] == pytest.approx(1.0) and metrics["f1"] == pytest.approx(1.0)
    assert metrics["score"] == metrics["iou"]


@pytest.mark.parametrize("name", ["classification", "multitask"])
def test_class_weights_change_the_classification_loss(name: str, tiny_cache: CachedDataset) -> None:
    task, hp = create_task(name), small_hp(name)
    context = context_of(tiny_cache, name)
    model = task.build_model(hp, context)
    rows = task.usable(tiny_cache, tiny_cache.indices("train"))[:6]
    batch = make_batch(tiny_cache, rows, hp, torch.device("cpu"))
    with torch.no_grad():
        output = model(batch["image"])
        plain = task.loss(model, output, batch, hp, context)
        weights = torch.ones(context.num_classes)
        weights[batch["label"][0]] = 10.0
        weighted = task.loss(model, output, batch, hp, dataclasses.replace(context, class_weights=weights))
    assert not torch.isclose(plain, weighted)
