"""A trial's batches: shuffled (or class-balanced) epochs sharded across workers, and class weights.

Batch size is global: with N workers each worker takes batch_size / N images per step, and gradients
are averaged by DDP, so one step sees the same number of images whatever N is and the learning rate
needs no scaling.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

from raysearch.data.augment import Augmentation
from raysearch.data.cache import CachedDataset
from raysearch.data.device_data import BatchSource
from raysearch.errors import ConfigError
from raysearch.tasks.base import Batch
from raysearch.training.hparams import AUGMENTATION, CLASS_BALANCE, preprocessing_of


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
