"""What a study's trial folders say about each trial, read by the driver (scheduler, searcher, resume).

A trial's record is the epoch history kept in its latest checkpoint (see raysearch.training.session). When
the scheduler stops a trial, it leaves a marker file beside the checkpoints: with it, the history tells a
trial that finished (all epochs, stopped early by its own patience, or stopped at a scheduler's rung) from
one that a dead driver interrupted, so that `raysearch resume` keeps the first kind and continues the second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from raysearch.core.columns import is_epoch_metric
from raysearch.core.layout import STOPPED_MARKER, latest_checkpoint, read_history

# Reported (with the trial's last recorded epoch) by a restarted trial that had already finished: Ray Tune
# needs a result with the metric, the scheduler stops the trial, the searcher has its record already.
FINISHED_BEFORE = "finished_before_resume"


def recorded_epochs(train_dir: Path, trial_id: str) -> list[dict[str, Any]]:
    """The reported metrics of every epoch the trial checkpointed (NaN values left out)."""
    return [{k: v for k, v in epoch.items() if is_epoch_metric(k) and v == v}
            for epoch in read_history(latest_checkpoint(Path(train_dir) / trial_id))]


def mark_stopped(train_dir: Path, trial_id: str) -> None:
    """Record that the scheduler stopped the trial (it is finished, not interrupted)."""
    folder = Path(train_dir) / trial_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / STOPPED_MARKER).touch()


def has_finished(train_dir: Path, trial_id: str, max_epochs: int) -> bool:
    """Whether the trial's folder shows it finished: all `max_epochs` epochs, its own early stopping, or
    stopped by the scheduler after at least one epoch."""
    epochs = recorded_epochs(train_dir, trial_id)
    if not epochs:
        return False
    last = epochs[-1]
    return (last.get("epoch", 0) >= max_epochs or bool(last.get("stopped_early"))
            or (Path(train_dir) / trial_id / STOPPED_MARKER).is_file())


def trial_epochs_spent(train_dir: Path) -> int:
    """Trial-epochs run so far by every trial of the study (finished or running)."""
    root = Path(train_dir)
    folders = [f for f in root.iterdir() if f.is_dir()] if root.is_dir() else []
    return sum(len(read_history(latest_checkpoint(folder))) for folder in folders)
