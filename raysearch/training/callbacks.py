"""The trainer's callbacks: hooks on its named events, each one declaring the metric it monitors.

Events, in the order a fit runs them (Lightning's and Ultralytics' habits):

- `on_setup` once the network, optimizer and data are ready (before a checkpoint is restored);
- `on_epoch_start`, then training, then validation;
- `on_validation_end` with the epoch's metrics (a callback may add keys, e.g. `stopped_early`);
- `on_checkpoint` on rank 0 with the epoch's checkpoint folder, after the trainer wrote its state there;
- `on_epoch_end` with the finished epoch (metrics and checkpoint);
- `on_fit_end` after the last epoch.

A callback that needs to know which epoch is best holds its own `Best` over a `Monitor` (the study's
metric and mode): early stopping, the best weights and the report to Tune therefore agree by construction,
and none reads another's flags. Each keeps its state in the trainer's checkpoint (`state_dict`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from raysearch.core.columns import BEST_SO_FAR, MODES
from raysearch.core.layout import BEST_FILE
from raysearch.training.checkpoints import read_weights, save_weights
from raysearch.training.session import Session


@dataclass(frozen=True)
class Monitor:
    """The metric that decides a trial's best epoch, and whether higher (`max`) or lower (`min`) is better."""

    metric: str
    mode: str

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")

    def value(self, metrics: dict[str, Any]) -> float:
        """The monitored value in an epoch's metrics (NaN when the epoch has none)."""
        value = metrics.get(self.metric)
        return float(value) if isinstance(value, (int, float)) else math.nan

    def improves(self, value: float, best: float | None) -> bool:
        """Whether `value` beats `best` (None: nothing yet); NaN never does."""
        if math.isnan(value):
            return False
        return best is None or (value > best if self.mode == "max" else value < best)


@dataclass
class Best:
    """The best monitored value so far, and whether the latest epoch set it."""

    monitor: Monitor
    value: float | None = None
    improved: bool = False

    def update(self, metrics: dict[str, Any]) -> bool:
        """Take one epoch's metrics; whether it is the best so far."""
        value = self.monitor.value(metrics)
        self.improved = self.monitor.improves(value, self.value)
        if self.improved:
            self.value = value
        return self.improved


class Fitting(Protocol):
    """What callbacks see of the trainer."""

    session: Session
    model: nn.Module
    epoch: int
    should_stop: bool


@dataclass
class EpochEnd:
    """One finished epoch: its metrics and (rank 0) the checkpoint folder holding its state."""

    metrics: dict[str, Any]
    checkpoint: Path | None = None


class Callback:
    """A hook into the trainer's events; overrides what it needs."""

    def on_setup(self, trainer: Fitting) -> None:
        """The trainer is built (network, optimizer, data), nothing restored or trained yet."""

    def on_epoch_start(self, trainer: Fitting, epoch: int) -> None:
        """Epoch `epoch` (1-based) is about to train."""

    def on_validation_end(self, trainer: Fitting, metrics: dict[str, Any]) -> None:
        """The epoch's metrics are known (training and validation)."""

    def on_checkpoint(self, trainer: Fitting, folder: Path) -> None:
        """Rank 0 writes the epoch's checkpoint into `folder` (the trainer's state is there already)."""

    def on_epoch_end(self, trainer: Fitting, end: EpochEnd) -> None:
        """The epoch is finished and checkpointed."""

    def on_fit_end(self, trainer: Fitting) -> None:
        """Training is over (all epochs, or stopped)."""

    def state_dict(self) -> dict[str, Any]:
        """What this callback keeps in the trainer's checkpoint (flat keys)."""
        return {}

    def load_state_dict(self, state: dict[str, Any], folder: Path) -> None:
        """Take this callback's state back from a checkpoint `state` (and its `folder`)."""

    def stops_training(self) -> bool:
        """Whether this callback, as restored, says training is over (e.g. patience already spent)."""
        return False


class EarlyStopping(Callback):
    """Stops after `patience` epochs without a better monitored value (0: never stops); marks `stopped_early`."""

    def __init__(self, monitor: Monitor, patience: int) -> None:
        self.best, self.patience, self.stale = Best(monitor), patience, 0

    def stops_training(self) -> bool:
        return self.patience > 0 and self.stale >= self.patience

    def on_validation_end(self, trainer: Fitting, metrics: dict[str, Any]) -> None:
        self.stale = 0 if self.best.update(metrics) else self.stale + 1
        metrics["stopped_early"] = float(self.stops_training())
        trainer.should_stop = trainer.should_stop or self.stops_training()

    def state_dict(self) -> dict[str, Any]:
        return {"early_stopping.best": self.best.value, "early_stopping.stale": self.stale}

    def load_state_dict(self, state: dict[str, Any], folder: Path) -> None:
        self.best.value, self.stale = state["early_stopping.best"], state["early_stopping.stale"]


class BestWeights(Callback):
    """Keeps the weights of the best epoch by its monitor, in memory (`weights`) and, on rank 0, in every
    checkpoint as `best_model.pt` (what evaluation, export and Tune's best checkpoint use)."""

    def __init__(self, monitor: Monitor) -> None:
        self.best = Best(monitor)
        self.weights: dict[str, torch.Tensor] | None = None

    def on_validation_end(self, trainer: Fitting, metrics: dict[str, Any]) -> None:
        if self.best.update(metrics):
            self.weights = copy.deepcopy(trainer.model.state_dict())

    def on_checkpoint(self, trainer: Fitting, folder: Path) -> None:
        if self.weights is not None:
            save_weights(self.weights, folder / BEST_FILE)

    def state_dict(self) -> dict[str, Any]:
        return {"best_weights.best": self.best.value}

    def load_state_dict(self, state: dict[str, Any], folder: Path) -> None:
        self.best.value = state["best_weights.best"]
        if (folder / BEST_FILE).is_file():
            self.weights = read_weights(folder / BEST_FILE, torch.device("cpu"))


class Reporting(Callback):
    """Reports each epoch's metrics and (rank 0) its checkpoint to the session, saying whether the epoch is the
    best so far by its monitor (a one-worker trial then hands Tune its best weights, see
    raysearch.training.session), with that best value as `trial_best`."""

    def __init__(self, monitor: Monitor) -> None:
        self.best = Best(monitor)

    def on_validation_end(self, trainer: Fitting, metrics: dict[str, Any]) -> None:
        self.best.update(metrics)
        metrics[BEST_SO_FAR] = math.nan if self.best.value is None else self.best.value

    def on_epoch_end(self, trainer: Fitting, end: EpochEnd) -> None:
        trainer.session.report(end.metrics, end.checkpoint, improved=self.best.improved)

    def state_dict(self) -> dict[str, Any]:
        return {"reporting.best": self.best.value}

    def load_state_dict(self, state: dict[str, Any], folder: Path) -> None:
        self.best.value = state["reporting.best"]


def default_callbacks(monitor: Monitor, patience: int) -> list[Callback]:
    """What a trial runs: early stopping, the best weights, the report to the session (in that order)."""
    return [EarlyStopping(monitor, patience), BestWeights(monitor), Reporting(monitor)]
