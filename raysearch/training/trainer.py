"""One trial's training: a trainer whose named events (raysearch.training.callbacks) callbacks hook into.

`setup` loads the cache onto the trial's device (`BatchSource`), builds the model (channels_last on a GPU),
measures its latency, wraps it in DDP when there are several workers, and resolves the mixed precision.
A step never waits on the host: the loss is summed on the device and read once per epoch. Which epoch is
best is decided by the study's monitor (`LoopSettings.monitor`, the search space's `metric` and `mode`)
alike for early stopping, the best weights and what Tune is told; a new habit (gradient clipping, EMA) is
one override of `train_step` or one more callback.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from raysearch.core.columns import VALIDATION_PREFIX
from raysearch.core.layout import EPOCH_STAGING_PREFIX, STATE_FILE, WEIGHTS_KEY
from raysearch.data.augment import augmentation_for
from raysearch.data.cache import load_cache
from raysearch.data.device_data import BatchSource
from raysearch.tasks import create_task
from raysearch.tasks.base import Batch, TaskContext
from raysearch.training.batches import class_balance, class_weights, steps_per_epoch, train_batches
from raysearch.training.callbacks import Callback, EpochEnd, Monitor, default_callbacks
from raysearch.training.hparams import AUGMENTATION, HARDWARE, preprocessing_of
from raysearch.training.optim import PER_BATCH_SCHEDULERS, create_optimizer, create_scheduler, step_epoch
from raysearch.training.precision import Precision, resolve_precision
from raysearch.training.session import Session
from raysearch.training.validation import baseline_apd, evaluate, measure_latency


@dataclass(frozen=True)
class LoopSettings:
    """What a trial needs besides its hyperparameters."""

    task: str
    cache_dir: str
    max_epochs: int
    seed: int
    threads: int = 1
    cache_hit: bool = False
    monitor: Monitor | None = None  # what decides the best epoch; None: the task's own score and mode
    scratch_dir: str | None = None  # where each epoch's checkpoint is staged (the trial's folder); None: the temp dir


def _is_conv_net(model: nn.Module) -> bool:
    return any(isinstance(module, nn.Conv2d) for module in model.modules())


class Trainer:
    """Trains one configuration on `session`'s device, firing its callbacks' events (default: early stopping, best
    weights and reporting, all on `settings.monitor`)."""

    def __init__(self, hp: Mapping[str, Any], settings: LoopSettings, session: Session,
                 callbacks: Sequence[Callback] | None = None) -> None:
        self.hp, self.settings, self.session = hp, settings, session
        self.task = create_task(settings.task)
        self.monitor = settings.monitor or Monitor(self.task.score, self.task.mode)
        self.callbacks = list(callbacks) if callbacks is not None else default_callbacks(self.monitor, hp["patience"])
        self.epoch, self.should_stop, self.ready = 0, False, False

    def setup(self) -> None:
        """Data on the device, network, DDP, optimizer and schedule; then the callbacks' `on_setup`."""
        torch.manual_seed(self.settings.seed)
        torch.set_num_threads(max(self.settings.threads, 1))
        if self.session.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self._load_data()
        self._build_model()
        self.optimizer = create_optimizer(self.trained.parameters(), self.hp)
        self.steps = steps_per_epoch(len(self.train_rows), self.hp["batch_size"], self.session.world_size)
        self.scheduler = create_scheduler(self.optimizer, self.hp, epochs=self.settings.max_epochs,
                                          steps_per_epoch=self.steps)
        self.ready = True
        self._fire("on_setup")

    def _load_data(self) -> None:
        """The cache's train and validation rows, class weights, the APD baseline and the batch source."""
        hp, device = self.hp, self.session.device
        data = load_cache(Path(self.settings.cache_dir))
        self.train_rows = self.task.usable(data, data.indices("train"))
        self.val_rows = self.task.usable(data, data.indices("val"))
        self.train_labels = np.asarray(data.labels[self.train_rows])
        weights = class_weights(self.train_labels, len(data.classes)) if class_balance(hp) == "weighted_loss" else None
        baseline = baseline_apd(data, self.train_rows, self.val_rows)
        self.context = TaskContext(len(data.classes), hp["channels"], baseline,
                                   class_weights=None if weights is None else weights.to(device))
        self.data, self.source = data, BatchSource(data, device, preprocessing_of(hp))
        self.augmentation = augmentation_for(hp.get("augment", AUGMENTATION["augment"]))
        self.precision = Precision(resolve_precision(hp.get("precision", HARDWARE["precision"]), device), device)

    def _build_model(self) -> None:
        """The task's network on the device (channels_last on a GPU), its size and latency, DDP-wrapped if needed."""
        hp, device = self.hp, self.session.device
        model = self.task.build_model(hp, self.context).to(device)
        # channels_last feeds the GPU's tensor cores; on the CPU the default layout keeps fp32 results unchanged.
        self.memory_format = (torch.channels_last if device.type == "cuda" and _is_conv_net(model)
                              else torch.contiguous_format)
        self.model = model.to(memory_format=self.memory_format)
        self.parameters = sum(p.numel() for p in model.parameters())
        self.latency = measure_latency(model, (hp["channels"], hp["image_size"], hp["image_size"]), device)
        self.trained: nn.Module = model
        if self.session.world_size > 1:
            device_ids = [device.index] if device.type == "cuda" else None
            self.trained = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def _fire(self, event: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(self, *args)

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed trial needs: weights, optimizer, scheduler, grad scaler, epoch, callbacks' state."""
        state = {WEIGHTS_KEY: self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "scaler": self.precision.scaler.state_dict(),
                 "epoch": self.epoch}
        for callback in self.callbacks:
            state.update(callback.state_dict())
        return state

    def restore(self) -> None:
        """Continue from the session's checkpoint, if it has one (set up first when not yet)."""
        if not self.ready:
            self.setup()
        with self.session.restored() as folder:
            if folder is None:
                return
            state = torch.load(folder / STATE_FILE, map_location=self.session.device, weights_only=True)
            self.model.load_state_dict(state[WEIGHTS_KEY])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if state.get("scaler"):
                self.precision.scaler.load_state_dict(state["scaler"])
            self.epoch = state["epoch"]
            for callback in self.callbacks:
                callback.load_state_dict(state, folder)
        # restored from the checkpoint of an epoch after which a callback stopped training: nothing left to train
        self.should_stop = any(callback.stops_training() for callback in self.callbacks)

    def train_step(self, batch: Batch) -> torch.Tensor:
        """One optimisation step; returns the batch's loss, detached, still on the device (no host sync)."""
        with self.precision.autocast():
            output = self.trained(batch["image"].contiguous(memory_format=self.memory_format))
            loss = self.task.loss(self.trained, output, batch, self.hp, self.context)
        self.optimizer.zero_grad(set_to_none=True)
        self.precision.backward_step(loss, self.optimizer)
        if self.hp["scheduler"] in PER_BATCH_SCHEDULERS:
            self.scheduler.step()
        return loss.detach()

    def train_epoch(self, epoch: int) -> float:
        """One epoch of `train_step`s; the mean training loss, read from the device once."""
        self.trained.train()
        total = torch.zeros((), dtype=torch.float64, device=self.session.device)
        rows = train_batches(self.train_rows, self.hp, epoch, self.settings.seed, self.session.world_rank,
                             self.session.world_size, self.train_labels)
        for batch in self.source.batches(rows, self.augmentation):
            total += self.train_step(batch)
        return total.item() / self.steps if self.steps else float("nan")

    def validate(self) -> dict[str, float]:
        """The task's metrics on the validation rows (every worker a shard, all-reduced)."""
        return evaluate(self.task, self.model, self.data, self.val_rows, self.hp, self.context, self.session,
                        source=self.source, autocast=self.precision.autocast())

    def fit(self) -> None:
        """Train up to `max_epochs` (from the restored epoch), firing the callbacks' events."""
        self.restore()
        while self.epoch < self.settings.max_epochs and not self.should_stop:
            self.run_epoch()
        self._fire("on_fit_end")

    def run_epoch(self) -> None:
        """Train and validate one epoch, checkpoint it (rank 0) and end it, firing each event."""
        self._fire("on_epoch_start", self.epoch + 1)
        started = time.perf_counter()
        train_loss = self.train_epoch(self.epoch)
        lr = self.optimizer.param_groups[0]["lr"]
        val = self.validate()
        step_epoch(self.scheduler, val["loss"])
        self.epoch += 1
        metrics = self._epoch_record(train_loss, val, lr, time.perf_counter() - started)
        self._fire("on_validation_end", metrics)
        if self.settings.scratch_dir is not None:
            Path(self.settings.scratch_dir).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=EPOCH_STAGING_PREFIX, dir=self.settings.scratch_dir) as folder:
            checkpoint = Path(folder) if self.session.world_rank == 0 else None
            if checkpoint is not None:
                torch.save(self.state_dict(), checkpoint / STATE_FILE)
                self._fire("on_checkpoint", checkpoint)
            self._fire("on_epoch_end", EpochEnd(metrics, checkpoint))

    def _epoch_record(self, train_loss: float, val: Mapping[str, float], lr: float, seconds: float) -> dict[str, Any]:
        """The epoch's record, its keys as core.columns.EPOCH_KEYS lists them (plus `val_<metric>`)."""
        return {
            "epoch": self.epoch,
            "train_loss": train_loss,
            **{f"{VALIDATION_PREFIX}{name}": value for name, value in val.items()},
            "lr": lr,
            "epoch_time_s": seconds,
            "params": self.parameters,
            "latency_ms": self.latency,
            "stopped_early": 0.0,
            "cache_hit": float(self.settings.cache_hit),
            "precision": self.precision.name,
        }


def train(hp: Mapping[str, Any], settings: LoopSettings, session: Session,
          callbacks: Sequence[Callback] | None = None) -> Trainer:
    """Train one configuration, reporting every epoch's metrics and (rank 0) a checkpoint to `session`; the
    trainer is returned (its callbacks hold what they kept, e.g. `BestWeights.weights`)."""
    trainer = Trainer(hp, settings, session, callbacks)
    trainer.fit()
    return trainer
