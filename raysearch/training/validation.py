"""Validation of a trial's network: task metrics over every validation row once, sharded across workers,
their sums all-reduced and their per-image samples gathered; the always-the-mean polygon baseline that APD is
compared with; inference latency."""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import torch
from torch import nn

from raysearch.data.cache import CachedDataset
from raysearch.data.device_data import BatchSource
from raysearch.tasks.base import Task, TaskContext
from raysearch.training.hparams import preprocessing_of
from raysearch.training.session import Session


def baseline_apd(data: CachedDataset, train: np.ndarray, val: np.ndarray) -> float:
    """APD on the validation rows of always predicting the mean training polygon."""
    train_polygons = data.polygons[train][~np.isnan(data.polygons[train, 0])]
    val_polygons = data.polygons[val][~np.isnan(data.polygons[val, 0])]
    if not len(train_polygons) or not len(val_polygons):
        return 0.0
    mean = train_polygons.mean(axis=0)
    return float(np.linalg.norm((val_polygons - mean).reshape(-1, 4, 2), axis=2).mean())


def _all_reduce(sums: dict[str, torch.Tensor], world: int) -> dict[str, torch.Tensor]:
    if world > 1:
        import torch.distributed as dist

        for tensor in sums.values():
            dist.all_reduce(tensor)
    return sums


def _gathered(samples: dict[str, list[torch.Tensor]], world: int) -> dict[str, torch.Tensor]:
    """Each per-image sample concatenated over batches and, with several workers, gathered from all of them
    (torchmetrics' `gather_all_tensors`, which pads the workers' unequal shards)."""
    joined = {name: torch.cat(parts) for name, parts in samples.items()}
    if world > 1:
        from torchmetrics.utilities.distributed import gather_all_tensors

        joined = {name: torch.cat(gather_all_tensors(tensor)) for name, tensor in joined.items()}
    return joined


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
    samples: dict[str, list[torch.Tensor]] = {}
    for batch in source.batches(shard[start : start + hp["batch_size"]] for start in range(0, len(shard),
                                                                                           hp["batch_size"])):
        with autocast:
            output = _as_float(model(batch["image"]))
        for name, value in task.metric_sums(output, batch, context).items():
            sums[name] = sums[name] + value if name in sums else value.clone()
        for name, value in task.metric_samples(output, batch, context).items():
            samples.setdefault(name, []).append(value)
    if not sums:
        probe = source.batch(rows[:1])
        with autocast:
            output = _as_float(model(probe["image"]))
        sums = {k: torch.zeros_like(v) for k, v in task.metric_sums(output, probe, context).items()}
        samples = {k: [v[:0]] for k, v in task.metric_samples(output, probe, context).items()}
    return task.summarise({**_all_reduce(sums, session.world_size), **_gathered(samples, session.world_size)},
                          context)


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
