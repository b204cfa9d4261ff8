"""Ray Tune's trial schedulers, made to survive a dead driver and `raysearch resume`.

Every scheduler here (`asha`, `hyperband`, `median`, `none`) adds three things to Ray Tune's own:

- a trial the scheduler stops is marked in its folder (raysearch.search.history), so a resumed study
  keeps it as finished instead of training it further;
- Ray Tune's experiment snapshot is written as each trial is added, so a trial sampled just before the
  driver died is in the snapshot (and kept) rather than lost and sampled again;
- Ray Tune saves no scheduler state in its snapshot, so when a resumed study re-adds its trials, ASHA and
  the median rule replay each trial's recorded epochs (kept in its latest checkpoint): ASHA's rungs and the
  median rule's running averages come back as they were, and continued trials are compared against the
  trials from before the interruption. HyperBand's synchronous brackets are not rebuilt: restored trials
  join fresh brackets. FIFO (`none`) has no state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandScheduler, MedianStoppingRule, TrialScheduler

from raysearch.search.history import FINISHED_BEFORE, mark_stopped, recorded_epochs


class _Recorded:
    """Mixin for a Ray Tune TrialScheduler: marks stopped trials, snapshots added trials, replays history."""

    def __init__(self, train_dir: str, **scheduler: Any) -> None:
        super().__init__(**scheduler)
        self.train_dir = train_dir

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        """Add the trial, replay its recorded epochs, then snapshot the experiment with it in."""
        super().on_trial_add(tune_controller, trial)
        self.replay(trial, recorded_epochs(Path(self.train_dir), trial.trial_id))
        _snapshot_with(tune_controller, trial)

    def replay(self, trial: Any, epochs: list[dict[str, Any]]) -> None:
        """Record the past epochs of a restored trial in the scheduler's state (nothing by default)."""

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        """Ray Tune's decision; a STOP is marked in the trial's folder before Tune acts on it. A trial that had
        finished before a resume (its last epoch reported again, see raysearch.search.trial) is stopped."""
        if result.get(FINISHED_BEFORE):
            return TrialScheduler.STOP
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP:
            mark_stopped(Path(self.train_dir), trial.trial_id)
        return decision


def _snapshot_with(tune_controller: Any, trial: Any) -> None:
    """Write Ray Tune's experiment snapshot (trials and searcher state) now, `trial` included.

    Ray Tune snapshots at most every TUNE_GLOBAL_CHECKPOINT_S seconds; a trial sampled in between and
    finished before the driver died was missing from the snapshot, so `resume` lost it and sampled a new one.
    Schedulers receive the controller behind a wrapper: its two calls here are the ones Tune itself makes
    when it adds a trial and when it checkpoints."""
    controller = getattr(tune_controller, "_tune_controller", None)
    if controller is None:
        return
    controller._mark_trial_to_checkpoint(trial)
    controller.checkpoint(force=True, wait=True)


class ResumableASHA(_Recorded, ASHAScheduler):
    """ASHA (asynchronous successive halving) whose rungs are refilled on resume."""

    def replay(self, trial: Any, epochs: list[dict[str, Any]]) -> None:
        for epoch in _scored(epochs, self._time_attr, self._metric):
            self._trial_info[trial.trial_id].on_result(trial, epoch[self._time_attr],
                                                       self._metric_op * epoch[self._metric])


class ResumableHyperBand(_Recorded, HyperBandScheduler):
    """Synchronous HyperBand (trials paused at each bracket's milestones, then the best continue)."""


class ResumableMedian(_Recorded, MedianStoppingRule):
    """The median stopping rule, with each restored trial's past epochs replayed."""

    def replay(self, trial: Any, epochs: list[dict[str, Any]]) -> None:
        self._results[trial].extend(_scored(epochs, self._time_attr, self._metric))


class ResumableFIFO(_Recorded, FIFOScheduler):
    """No early stopping by the scheduler: every trial runs to --max-epochs or its own early stopping."""



def _scored(epochs: list[dict[str, Any]], time_attr: str, metric: str) -> list[dict[str, Any]]:
    """The epochs that carry both the scheduler's time attribute and its metric."""
    return [epoch for epoch in epochs if time_attr in epoch and metric in epoch]


SCHEDULER_CLASSES: dict[str, type[TrialScheduler]] = {
    "asha": ResumableASHA, "hyperband": ResumableHyperBand, "median": ResumableMedian, "none": ResumableFIFO,
}


def scheduler_settings(name: str, *, max_epochs: int, grace_period: int, reduction_factor: int) -> dict[str, Any]:
    """The settings of the scheduler named `name` (one of raysearch.search.choices.SCHEDULERS), as study.yaml records
    them; each works on the `epoch` that trials report."""
    return {
        "asha": {"max_t": max_epochs, "grace_period": grace_period, "reduction_factor": reduction_factor},
        "hyperband": {"max_t": max_epochs, "reduction_factor": reduction_factor},
        "median": {"grace_period": grace_period, "min_samples_required": 2},
        "none": {},
    }[name]


def create_scheduler(name: str, train_dir: str, settings: dict[str, Any]) -> TrialScheduler:
    """The scheduler named `name` with `settings` (from `scheduler_settings`)."""
    timed = {"time_attr": "epoch", **settings} if settings else {}
    return SCHEDULER_CLASSES[name](train_dir, **timed)
