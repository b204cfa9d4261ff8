"""The training loop shared by every task, every worker count and every device.

Batch size is global: with N workers each worker takes batch_size / N images per step, and gradients
are averaged by DDP, so one step sees the same number of images whatever N is and the learning rate
needs no scaling. Validation is sharded without padding and its metric sums are all-reduced, so the
reported metrics cover every validation image exactly once.
"""

from __future__ import annotations

import copy
import math
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from raysearch.data.augment import Augmentation, augmentation_for
from raysearch.data.cache import CachedDataset, load_cache
from raysearch.data.preprocess import normalise
from raysearch.errors import ConfigError
from raysearch.layout import BEST_FILE, STATE_FILE
from raysearch.tasks import create_task
from raysearch.tasks.base import Batch, Task, TaskContext
from raysearch.training.hparams import AUGMENTATION, CLASS_BALANCE, preprocessing_of
from raysearch.training.optim import PER_BATCH_SCHEDULERS, create_optimizer, create_scheduler, step_epoch
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


def make_batch(data: CachedDataset, rows: np.ndarray, hp: dict[str, Any], device: torch.device,
               augmentation: Augmentation | None = None) -> Batch:
    """Tensors for a set of cache rows: normalised images, labels, polygons and masks (augmented if asked)."""
    rows = np.sort(rows)
    images, masks, polygons = data.images[rows], data.masks[rows], np.asarray(data.polygons[rows])
    if augmentation is not None:
        images, masks, polygons = augmentation(images, masks, polygons)
    batch = {
        "image": normalise(images, preprocessing_of(hp)),
        "label": torch.from_numpy(np.asarray(data.labels[rows])),
        "polygon": torch.from_numpy(np.nan_to_num(polygons)),
        "mask": torch.as_tensor(masks).unsqueeze(1).float(),
    }
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _class_balance(hp: dict[str, Any]) -> str:
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


def train_batches(rows: np.ndarray, hp: dict[str, Any], epoch: int, seed: int, rank: int, world: int,
                  labels: np.ndarray | None = None) -> Iterator[np.ndarray]:
    """This worker's shuffled batches of one epoch; every worker gets the same number of batches.

    With class_balance "sampler" and the rows' `labels`, the epoch is drawn class-balanced instead.
    """
    balanced = labels if _class_balance(hp) == "sampler" else None
    order = _epoch_order(rows, balanced, np.random.default_rng([seed, epoch]))
    per_worker = max(hp["batch_size"] // world, 1)
    shard = order[rank : len(order) - len(order) % world : world]
    for start in range(0, len(shard), per_worker):
        batch = shard[start : start + per_worker]
        if len(batch) > 1 or len(shard) == 1:
            yield batch


def _all_reduce(sums: dict[str, torch.Tensor], world: int) -> dict[str, torch.Tensor]:
    if world > 1:
        import torch.distributed as dist

        for tensor in sums.values():
            dist.all_reduce(tensor)
    return sums


@torch.no_grad()
def evaluate(task: Task, model: nn.Module, data: CachedDataset, rows: np.ndarray, hp: dict[str, Any],
             context: TaskContext, session: Session) -> dict[str, float]:
    """Task metrics over all `rows`, each worker taking every world_size-th row, summed across workers."""
    model.eval()
    shard = rows[session.world_rank :: session.world_size]
    sums: dict[str, torch.Tensor] = {}
    for start in range(0, len(shard), hp["batch_size"]):
        batch = make_batch(data, shard[start : start + hp["batch_size"]], hp, session.device)
        for name, value in task.metric_sums(model(batch["image"]), batch, context).items():
            sums[name] = sums[name] + value if name in sums else value.clone()
    if not sums:
        probe = make_batch(data, rows[:1], hp, session.device)
        sums = {k: torch.zeros_like(v) for k, v in task.metric_sums(model(probe["image"]), probe, context).items()}
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


def _save(folder: Path, state: dict[str, Any], best: dict[str, Any] | None) -> None:
    torch.save(state, folder / STATE_FILE)
    if best is not None:
        torch.save(best, folder / BEST_FILE)


def train(hp: dict[str, Any], settings: LoopSettings, session: Session) -> None:
    """Train one configuration, reporting every epoch's metrics and (rank 0) a checkpoint to `session`."""
    torch.manual_seed(settings.seed)
    torch.set_num_threads(max(settings.threads, 1))
    task = create_task(settings.task)
    data = load_cache(Path(settings.cache_dir))
    train_rows, val_rows = task.usable(data, data.indices("train")), task.usable(data, data.indices("val"))
    train_labels = np.asarray(data.labels[train_rows])
    weights = class_weights(train_labels, len(data.classes)) if _class_balance(hp) == "weighted_loss" else None
    context = TaskContext(len(data.classes), hp["channels"], baseline_apd(data, train_rows, val_rows),
                          class_weights=None if weights is None else weights.to(session.device))
    augmentation = augmentation_for(hp.get("augment", AUGMENTATION["augment"]))
    model = task.build_model(hp, context).to(session.device)
    parameters = sum(p.numel() for p in model.parameters())
    latency = measure_latency(model, (hp["channels"], hp["image_size"], hp["image_size"]), session.device)
    trained = model
    if session.world_size > 1:
        device_ids = [session.device.index] if session.device.type == "cuda" else None
        trained = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    optimizer = create_optimizer(trained.parameters(), hp)
    steps = sum(1 for _ in train_batches(train_rows, hp, 0, settings.seed, session.world_rank, session.world_size,
                                         train_labels))
    scheduler = create_scheduler(optimizer, hp, epochs=settings.max_epochs, steps_per_epoch=steps)
    start_epoch, best_score, stale, best_weights = 0, -math.inf, 0, None
    sign = 1.0 if task.mode == "max" else -1.0
    with session.restored() as folder:
        if folder is not None:
            state = torch.load(folder / STATE_FILE, map_location=session.device, weights_only=True)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            start_epoch, best_score, stale = state["epoch"], state["best_score"], state["stale"]
            if (folder / BEST_FILE).is_file():
                best_weights = torch.load(folder / BEST_FILE, map_location=session.device, weights_only=True)["model"]
    if hp["patience"] > 0 and stale >= hp["patience"]:
        return  # restored from the checkpoint of an epoch that had already stopped early
    for epoch in range(start_epoch, settings.max_epochs):
        started = time.perf_counter()
        trained.train()
        losses = []
        for rows in train_batches(train_rows, hp, epoch, settings.seed, session.world_rank, session.world_size,
                                  train_labels):
            batch = make_batch(data, rows, hp, session.device, augmentation)
            loss = task.loss(trained, trained(batch["image"]), batch, hp, context)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if hp["scheduler"] in PER_BATCH_SCHEDULERS:
                scheduler.step()
            losses.append(loss.item())
        lr = optimizer.param_groups[0]["lr"]
        val = evaluate(task, model, data, val_rows, hp, context, session)
        step_epoch(scheduler, val["loss"])
        score = sign * val["score"]
        improved = score > best_score
        best_score, stale = (score, 0) if improved else (best_score, stale + 1)
        stop_early = hp["patience"] > 0 and stale >= hp["patience"]
        metrics = {
            "epoch": epoch + 1,
            "train_loss": float(np.mean(losses)) if losses else float("nan"),
            **{f"val_{name}": value for name, value in val.items()},
            "lr": lr,
            "epoch_time_s": time.perf_counter() - started,
            "params": parameters,
            "latency_ms": latency,
            "stopped_early": float(stop_early),
            "cache_hit": float(settings.cache_hit),
        }
        if improved and session.world_rank == 0:
            best_weights = copy.deepcopy(model.state_dict())
        with tempfile.TemporaryDirectory(prefix="raysearch-ckpt-") as tmp:
            checkpoint = None
            if session.world_rank == 0:
                checkpoint = Path(tmp)
                state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "best_score": best_score,
                         "stale": stale}
                _save(checkpoint, state, {"model": best_weights} if best_weights is not None else None)
            session.report(metrics, checkpoint)
        if stop_early:
            break
