"""The training loop shared by every task, every worker count and every device.

Batch size is global: with N workers each worker takes batch_size / N images per step, and gradients
are averaged by DDP, so one step sees the same number of images whatever N is and the learning rate
needs no scaling. Validation is sharded without padding and its metric sums are all-reduced, so the
reported metrics cover every validation image exactly once.

This module holds the pieces (batches, class balance, validation); `raysearch.training.trainer.Trainer`
puts them together with hooks, and `train` runs it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from raysearch.data.augment import Augmentation
from raysearch.data.cache import CachedDataset
from raysearch.data.device_data import BatchSource
from raysearch.errors import ConfigError
from raysearch.tasks.base import Batch, Task, TaskContext
from raysearch.training.hparams import AUGMENTATION, CLASS_BALANCE, preprocessing_of
from raysearch.training.session import Session


@dataclass(frozen=True)
class LoopSettings:
    """What a trial needs besides its hyperparameters."""

    task: str
    cache_dir: str
    max_epochs: int
    seed: int
    threads: int = 1
    cache_hit: bool = False


def baseline_apd(data: CachedDataset, train: np.ndarray, val: np.ndarray) -> float:
    """APD on the validation rows of always predicting the mean training polygon."""
    train_polygons = data.polygons[train][~np.isnan(data.polygons[train, 0])]
    val_polygons = data.polygons[val][~np.isnan(data.polygons[val, 0])]
    if not len(train_polygons) or not len(val_polygons):
        return 0.0
    mean = train_polygons.mean(axis=0)
    return float(np.linalg.norm((val_polygons - mean).reshape(-1, 4, 2), axis=2).mean())


def make_batch(data: CachedDataset, rows: np.ndarray, hp: Mapping[str, Any], device: torch.device,
               augmentation: Augmentation | None = None) -> Batch:
    """Tensors for a set of cache rows on `device`: normalised images, labels, polygons and masks (augmented if
    asked), read from the memory-mapped cache (a trial draws its batches from a `BatchSource` instead)."""
    return BatchSource(data, device, preprocessing_of(hp), placement="mapped").batch(rows, augmentation)


def class_balance(hp: Mapping[str, Any]) -> str:
    """The trial's class_balance choice (its default where a caller's hp predates it), validated."""
    choice = hp.get("class_balance", AUGMENTATION["class_balance"])
    if choice not in CLASS_BALANCE:
        raise ConfigError(f"class_balance: must be one of {', '.join(CLASS_BALANCE)}, got {choice!r}")
    return choice


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights N / (K * n_c) over the K classes present; 0 for classes absent from `labels`."""
    counts = np.bincount(labels[labels >= 0], minlength=num_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


def _epoch_order(rows: np.ndarray, labels: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """A shuffled epoch; with `labels`, drawn with replacement so that every label is equally likely."""
    if labels is None:
        return rng.permutation(rows)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    chance = 1.0 / counts[inverse]
    return rng.choice(rows, size=len(rows), replace=True, p=chance / chance.sum())


def train_batches(rows: np.ndarray, hp: Mapping[str, Any], epoch: int, seed: int, rank: int, world: int,
                  labels: np.ndarray | None = None) -> Iterator[np.ndarray]:
    """This worker's shuffled batches of one epoch; every worker gets the same number of batches.

    With class_balance "sampler" and the rows' `labels`, the epoch is drawn class-balanced instead.
    """
    balanced = labels if class_balance(hp) == "sampler" else None
    order = _epoch_order(rows, balanced, np.random.default_rng([seed, epoch]))
    per_worker = max(hp["batch_size"] // world, 1)
    shard = order[rank : len(order) - len(order) % world : world]
    for start in range(0, len(shard), per_worker):
        batch = shard[start : start + per_worker]
        if len(batch) > 1 or len(shard) == 1:
            yield batch


def steps_per_epoch(rows: int, batch_size: int, world: int) -> int:
    """How many batches `train_batches` yields each worker in an epoch of `rows` rows (counted, not drawn)."""
    shard, per_worker = rows // world, max(batch_size // world, 1)
    if shard == 1:
        return 1
    full, rest = divmod(shard, per_worker)
    return (full if per_worker > 1 else 0) + (1 if rest > 1 else 0)


def _all_reduce(sums: dict[str, torch.Tensor], world: int) -> dict[str, torch.Tensor]:
    if world > 1:
        import torch.distributed as dist

        for tensor in sums.values():
            dist.all_reduce(tensor)
    return sums


def _as_float(output: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A model's output dict with its tensors in float32 (mixed-precision outputs are bf16 / fp16)."""
    return {k: v.float() for k, v in output.items()}


@torch.no_grad()
def evaluate(task: Task, model: nn.Module, data: CachedDataset, rows: np.ndarray, hp: Mapping[str, Any],
             context: TaskContext, session: Session, *, source: BatchSource | None = None,
             autocast: AbstractContextManager[None] | None = None) -> dict[str, float]:
    """Task metrics over all `rows`, each worker taking every world_size-th row, summed across workers.

    Batches come from `source` (default: the memory-mapped cache), the forward pass runs in `autocast`.
    """
    source = source or BatchSource(data, session.device, preprocessing_of(hp), placement="mapped")
    autocast = autocast or nullcontext()
    model.eval()
    shard = rows[session.world_rank :: session.world_size]
    sums: dict[str, torch.Tensor] = {}
    for batch in source.batches(shard[start : start + hp["batch_size"]] for start in range(0, len(shard),
                                                                                           hp["batch_size"])):
        with autocast:
            output = _as_float(model(batch["image"]))
        for name, value in task.metric_sums(output, batch, context).items():
            sums[name] = sums[name] + value if name in sums else value.clone()
    if not sums:
        probe = source.batch(rows[:1])
        with autocast:
            output = _as_float(model(probe["image"]))
        sums = {k: torch.zeros_like(v) for k, v in task.metric_sums(output, probe, context).items()}
    return task.summarise(_all_reduce(sums, session.world_size), context)


def measure_latency(model: nn.Module, shape: tuple[int, ...], device: torch.device, repeats: int = 10) -> float:
    """Median inference time of one image, in milliseconds, on the trial's device."""
    model.eval()
    image = torch.zeros(1, *shape, device=device)
    timings = []
    with torch.no_grad():
        for i in range(repeats + 2):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            model(image)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= 2:
                timings.append((time.perf_counter() - start) * 1000)
    return float(np.median(timings))


def train(hp: Mapping[str, Any], settings: LoopSettings, session: Session) -> None:
    """Train one configuration, reporting every epoch's metrics and (rank 0) a checkpoint to `session`."""
    from raysearch.training.trainer import Trainer

    Trainer(hp, settings, session).fit()
