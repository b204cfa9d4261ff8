"""The DEFAULT console of a search (raysearch.search.console): a Ray Tune Callback printing one line per trial
result, one when a trial ends (finished, stopped early, failed) and then the study's trial counts, e.g.

    trial 1c017a81  epoch 2/6  val_score 0.2667 (best 0.2667)  21 s/epoch  ETA 1m24s
    trial 1c017a81 stopped early by the scheduler at epoch 2/6: best val_score 0.2667
    trials: 3 finished, 2 running, 3 to sample

A trial's ETA is its mean epoch time (Tune's `time_total_s` over the epochs it ran since it last started) times
the epochs it has left up to --max-epochs; the score is the study's metric (its search space's, else the task's),
and `best` its value at the trial's best epoch so far."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial

from raysearch.core.columns import BEST_SO_FAR, COMPLETED, EARLY_STOPPED, PRUNED
from raysearch.search.console import number_text
from raysearch.search.history import FINISHED_BEFORE
from raysearch.search.results import epoch_status, error_summary

ENDED = (Trial.TERMINATED, Trial.ERROR)
WAITING = (Trial.PENDING, Trial.PAUSED)


def duration_text(seconds: float) -> str:
    """A duration as `42s`, `1m24s` or `2h05m`."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def _epochs(result: Mapping[str, Any], max_epochs: int) -> str:
    return f"epoch {number_text(result.get('epoch', 0))}/{max_epochs}"


def progress_line(trial_id: str, result: Mapping[str, Any], *, metric: str, max_epochs: int) -> str:
    """One epoch of a trial: epoch, the study's metric (and the trial's best so far), seconds per epoch, ETA."""
    line = f"trial {trial_id}  {_epochs(result, max_epochs)}"
    if metric in result:
        line += f"  {metric} {number_text(result[metric])}"
        if BEST_SO_FAR in result:
            line += f" (best {number_text(result[BEST_SO_FAR])})"
    iterations = result.get("training_iteration") or 0
    if iterations and "time_total_s" in result:
        per_epoch = float(result["time_total_s"]) / iterations
        line += f"  {per_epoch:.2g} s/epoch" if per_epoch < 10 else f"  {per_epoch:.0f} s/epoch"
        left = max_epochs - int(result.get("epoch", 0))
        if left > 0:
            line += f"  ETA {duration_text(per_epoch * left)}"
    return line


def end_line(trial_id: str, last: Mapping[str, Any], *, metric: str, max_epochs: int) -> str:
    """How a trial that ran ended: all its epochs, its patience, or the scheduler, with its best score."""
    if "epoch" not in last:
        return f"trial {trial_id} ended before its first epoch"
    at = _epochs(last, max_epochs)
    how = {COMPLETED: "finished", EARLY_STOPPED: f"stopped early at {at} (no better {metric})",
           PRUNED: f"stopped early by the scheduler at {at}"}[epoch_status(last, max_epochs)]
    return f"trial {trial_id} {how}" + (f": best {metric} {number_text(last[BEST_SO_FAR])}"
                                        if BEST_SO_FAR in last else "")


def failed_line(trial_id: str, error: str | None, error_file: str | None, *, retried: bool = False) -> str:
    """A trial that failed: its error's line and the file holding the whole traceback."""
    line = f"trial {trial_id} failed{' (Tune starts it again)' if retried else ''}: {error or 'no error recorded'}"
    return line + (f" (error file: {error_file})" if error_file else "")


def study_line(statuses: Sequence[str], total: int | None) -> str:
    """The study's trials by state (Tune's trial statuses), and how many the searcher has still to sample."""
    line = (f"trials: {sum(s in ENDED for s in statuses)} finished, {sum(s == Trial.RUNNING for s in statuses)} "
            "running")
    waiting = sum(s in WAITING for s in statuses)
    line += f", {waiting} waiting" if waiting else ""
    return line + (f", {total - len(statuses)} to sample" if total is not None and total > len(statuses) else "")


class TrialProgress(Callback):
    """Prints the DEFAULT console's lines on the driver's stdout (see the module docstring); holds only the
    study's metric, its --max-epochs and the trial count, so that it pickles with the Tuner's state."""

    def __init__(self, metric: str, max_epochs: int) -> None:
        self.metric = metric
        self.max_epochs = max_epochs
        self.total: int | None = None

    def setup(self, total_num_samples: int | None = None, **info: Any) -> None:
        self.total = total_num_samples

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any],
                        **info: Any) -> None:
        if not result.get(FINISHED_BEFORE):
            _say(progress_line(trial.trial_id, result, metric=self.metric, max_epochs=self.max_epochs))

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        _say(end_line(trial.trial_id, trial.last_result, metric=self.metric, max_epochs=self.max_epochs))
        self._counts(trials, trial)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        _say(failed_line(trial.trial_id, _error_of(trial), _error_file(trial)))
        self._counts(trials, trial)

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        _say(failed_line(trial.trial_id, _error_of(trial), _error_file(trial), retried=True))

    def _counts(self, trials: list[Trial], ended: Trial) -> None:
        """The study line, `ended` counted as finished (Tune marks a completed trial TERMINATED only after this)."""
        _say(study_line([Trial.TERMINATED if t is ended else t.status for t in trials], self.total))


def _error_of(trial: Trial) -> str | None:
    """The line that says what went wrong, from the error file Tune has just written on the driver."""
    written = trial.error_file
    if not written or not Path(written).is_file():
        return None
    return error_summary(Path(written).read_text(errors="replace"))


def _error_file(trial: Trial) -> str | None:
    """Where the trial's error file is kept: its folder under the study's results (Tune copies it there from
    its staging folder in Ray's temporary folder)."""
    name = trial.run_metadata.error_filename
    return str(Path(trial.path, name)) if name and trial.path else None


def _say(line: str) -> None:
    print(line, flush=True)
