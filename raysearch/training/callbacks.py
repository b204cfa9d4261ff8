"""Small hooks run at the end of every epoch, in order: early stopping, checkpointing, reporting.

Each sees the trainer and the epoch's `EpochEnd` (its metrics, its score, and a temporary folder for its
checkpoint) and keeps its own state in the trainer's checkpoint (`state_dict` / `load_state_dict`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from raysearch.core.layout import BEST_FILE, STATE_FILE, WEIGHTS_KEY
from raysearch.training.checkpoints import read_weights

if TYPE_CHECKING:
    from raysearch.training.trainer import Trainer


@dataclass
class EpochEnd:
    """One finished epoch as the callbacks see it; `score` is the validation score, higher is better."""

    metrics: dict[str, Any]
    score: float
    folder: Path
    improved: bool = False
    checkpoint: Path | None = None


class Callback:
    """A hook into the end of every epoch; overrides what it needs."""

    def on_epoch_end(self, trainer: Trainer, end: EpochEnd) -> None:
        """Act on a finished epoch."""

    def state_dict(self) -> dict[str, Any]:
        """What this callback keeps in the trainer's checkpoint (flat keys)."""
        return {}

    def load_state_dict(self, state: dict[str, Any], folder: Path) -> None:
        """Take this callback's state back from a checkpoint `state` (and its `folder`)."""


class EarlyStopping(Callback):
    """Tracks the best score; stops after `patience` epochs without improvement (0: never stops)."""

    def __init__(self, patience: int) -> None:
        self.patience, self.best_score, self.stale = patience, -math.inf, 0

    def exhausted(self) -> bool:
        """Whether the patience ran out (a checkpoint restored from such an epoch trains no further)."""
        return self.patience > 0 and self.stale >= self.patience

    def on_epoch_end(self, trainer: Trainer, end: EpochEnd) -> None:
        end.improved = end.score > self.best_score
        self.best_score, self.stale = (end.score, 0) if end.improved else (self.best_score, self.stale + 1)
        end.metrics["stopped_early"] = float(self.exhausted())
        trainer.should_stop = trainer.should_stop or self.exhausted()

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "stale": self.stale}

    def load_state_dict(self, state: dict[str, Any], folder: Path) -> None:
        self.best_score, self.stale = state["best_score"], state["stale"]


class Checkpointing(Callback):
    """Rank 0 writes the trainer's state and the best-scoring weights so far into the epoch's folder."""

    def __init__(self) -> None:
        self.best_weights: dict[str, torch.Tensor] | None = None

    def on_epoch_end(self, trainer: Trainer, end: EpochEnd) -> None:
        if trainer.session.world_rank != 0:
            return
        if end.improved:
            self.best_weights = copy.deepcopy(trainer.model.state_dict())
        torch.save(trainer.state_dict(), end.folder / STATE_FILE)
        if self.best_weights is not None:
            torch.save({WEIGHTS_KEY: self.best_weights}, end.folder / BEST_FILE)
        end.checkpoint = end.folder

    def load_state_dict(self, state: dict[str, Any], folder: Path) -> None:
        if (folder / BEST_FILE).is_file():
            self.best_weights = read_weights(folder / BEST_FILE, torch.device("cpu"))


class Reporting(Callback):
    """Reports the epoch's metrics and (rank 0) its checkpoint to the session, saying whether the epoch improved
    the trial's score (a one-worker trial then hands Tune its best weights, see raysearch.training.session)."""

    def on_epoch_end(self, trainer: Trainer, end: EpochEnd) -> None:
        trainer.session.report(end.metrics, end.checkpoint, improved=end.improved)
