"""The study's searcher: Ray Tune's OptunaSearch, made to tell Optuna what raysearch records, within a budget.

Ray Tune's OptunaSearch tells Optuna each trial's last reported value (not its best epoch), reports
intermediate values at Tune's `training_iteration` (which restarts when a trial is restored), never marks a
stopped trial PRUNED and leaves the trials of an interrupted study RUNNING. `StudySearch` instead takes each
trial's outcome from its recorded epochs (raysearch.search.history), the same record that trials.parquet is
written from, so optuna.db, the Parquet files and what TPE learns from agree:

- every epoch's score is an intermediate value at step `epoch`;
- a trial's value is its best epoch's score; its state COMPLETE (all epochs, or its own early stopping),
  PRUNED (stopped by the scheduler, value still its best epoch) or FAIL;
- user attributes `trial_id` (the raysearch / Ray Tune trial id), `status` and `best_epoch`.

It also stops proposing trials once the study's budget (wall time, trial-epochs) is spent.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from raysearch.core.columns import COMPLETED, EARLY_STOPPED, FAILED, PRUNED
from raysearch.search.history import FINISHED_BEFORE, recorded_epochs, trial_epochs_spent
from raysearch.search.results import TrialRecord, best_epoch, trial_status

TRIAL_ID_ATTR = "trial_id"
OPTUNA_STATES = {COMPLETED: TrialState.COMPLETE, EARLY_STOPPED: TrialState.COMPLETE, PRUNED: TrialState.PRUNED,
                 FAILED: TrialState.FAIL}


@dataclass(frozen=True)
class Budget:
    """When to stop proposing new trials: wall-clock seconds of search, and trial-epochs (None: no limit)."""

    seconds: float | None = None
    trial_epochs: int | None = None

    def spent(self, elapsed_s: float, train_dir: Path) -> bool:
        """Whether either limit is reached."""
        return ((self.seconds is not None and elapsed_s >= self.seconds)
                or (self.trial_epochs is not None and trial_epochs_spent(train_dir) >= self.trial_epochs))


SAMPLER_CLASSES: dict[str, type[optuna.samplers.BaseSampler]] = {
    "tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler, "qmc": optuna.samplers.QMCSampler,
}


def default_startup_trials(trials: int) -> int:
    """TPE's random start-up trials when `--startup-trials` is not given: a third of the `--trials` cap, 2 to 10."""
    return max(2, min(10, trials // 3))


def sampler_settings(name: str, *, seed: int, trials: int, startup_trials: int | None = None) -> dict[str, Any]:
    """The options of the Optuna sampler named `name` (one of raysearch.search.choices.SEARCHERS), as study.yaml
    records them. TPE: `multivariate` and `group` model parameters jointly within each group that occurs
    together (raysearch spaces are conditional); `constant_liar` keeps concurrent trials apart; `startup_trials`
    (None: `default_startup_trials`) are sampled at random before TPE models the results."""
    startup = default_startup_trials(trials) if startup_trials is None else startup_trials
    return {
        "tpe": {"seed": seed, "n_startup_trials": startup, "multivariate": True, "group": True,
                "constant_liar": True},
        "random": {"seed": seed},
        "qmc": {"seed": seed, "scramble": True, "warn_independent_sampling": False},
    }[name]


def create_sampler(name: str, settings: dict[str, Any]) -> optuna.samplers.BaseSampler:
    """The Optuna sampler named `name` with `settings` (from `sampler_settings`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return SAMPLER_CLASSES[name](**settings)


@dataclass(frozen=True)
class Outcome:
    """A trial's result as Optuna records it."""

    state: TrialState
    value: float | None
    status: str
    best_epoch: int | None


def outcome_of(epochs: list[dict[str, Any]], *, failed: bool, metric: str, mode: str, max_epochs: int) -> Outcome:
    """The Optuna state and value of a trial with these recorded epochs (as trials.parquet ranks it)."""
    status = trial_status(TrialRecord("", {}, epochs, error="failed" if failed else None), max_epochs)
    best = best_epoch(epochs, metric, mode)
    if status == FAILED or best is None:
        return Outcome(TrialState.FAIL, None, status, None)
    return Outcome(OPTUNA_STATES[status], float(best[metric]), status, int(best["epoch"]))


def record_outcome(study: optuna.Study, number: int, epochs: list[dict[str, Any]], outcome: Outcome,
                   metric: str) -> None:
    """Write a trial's intermediate values, attributes, state and value into Optuna's storage, unless it is
    there already (a trial told just before the driver died, told again by the resumed searcher)."""
    storage = study._storage
    trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    stored = storage.get_trial(trial_id)
    if stored.state.is_finished():
        return
    reported = stored.intermediate_values
    for epoch in epochs:
        value = epoch.get(metric)
        if isinstance(value, (int, float)) and math.isfinite(value) and epoch["epoch"] not in reported:
            storage.set_trial_intermediate_value(trial_id, int(epoch["epoch"]), float(value))
    storage.set_trial_user_attr(trial_id, "status", outcome.status)
    storage.set_trial_user_attr(trial_id, "best_epoch", outcome.best_epoch)
    storage.set_trial_state_values(trial_id, outcome.state, None if outcome.value is None else [outcome.value])


class StudySearch(OptunaSearch):
    """OptunaSearch that records trials as raysearch does and stops proposing once the budget is spent."""

    def __init__(self, *, train_dir: Path, max_epochs: int, budget: Budget, **optuna_search: Any) -> None:
        super().__init__(**optuna_search)
        self.train_dir, self.max_epochs, self.budget = Path(train_dir), max_epochs, budget
        self._elapsed_before, self._clock = 0.0, None
        self.budget_spent = False

    def elapsed_s(self) -> float:
        """Seconds of search so far, across resumes (the clock starts with the first suggestion)."""
        return self._elapsed_before + (0.0 if self._clock is None else time.monotonic() - self._clock)

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        """A new configuration (tagged with its trial id in Optuna), or FINISHED once the budget is spent."""
        if self._clock is None:
            self._clock = time.monotonic()
        if trial_id not in self._ot_trials and self.budget.spent(self.elapsed_s(), self.train_dir):
            self.budget_spent = True
            return Searcher.FINISHED
        config = super().suggest(trial_id)
        self._ot_trials[trial_id].set_user_attr(TRIAL_ID_ATTR, trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        """Report the epoch's score as an intermediate value at step `epoch`."""
        value = result.get(self.metric)
        if (trial_id in self._completed_trials or trial_id not in self._ot_trials or "epoch" not in result
                or result.get(FINISHED_BEFORE)):
            return
        if isinstance(value, (int, float)) and math.isfinite(value):
            self._ot_trials[trial_id].report(float(value), int(result["epoch"]))

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        """Tell Optuna the trial's outcome from its recorded epochs (best epoch, PRUNED when stopped)."""
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        epochs = recorded_epochs(self.train_dir, trial_id)
        outcome = outcome_of(epochs, failed=error, metric=self.metric, mode=self.mode, max_epochs=self.max_epochs)
        record_outcome(self._ot_study, self._ot_trials[trial_id].number, epochs, outcome, self.metric)
        self._completed_trials.add(trial_id)

    def save(self, checkpoint_path: str) -> None:
        """Ray Tune's snapshot of the searcher, with the search time so far."""
        self._elapsed_before, self._clock = self.elapsed_s(), None if self._clock is None else time.monotonic()
        super().save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        """The searcher as snapshotted; its clock goes on from the time searched before."""
        super().restore(checkpoint_path)
        self._clock = None


def reconcile_study(storage: str, study_name: str, records: list[TrialRecord], *,
                    metric: str, mode: str, max_epochs: int) -> dict[str, int]:
    """After a search: every Optuna trial that is still RUNNING gets the outcome of the raysearch trial it
    stands for, or FAIL with user attribute `never_run` when none ran (sampled just before a driver died).
    Returns each raysearch trial's Optuna trial number (the order in which trials were sampled)."""
    study = optuna.load_study(study_name=study_name, storage=storage)
    by_id = {r.trial_id: r for r in records}
    numbers = {t.user_attrs[TRIAL_ID_ATTR]: t.number for t in study.get_trials(deepcopy=False)
               if t.user_attrs.get(TRIAL_ID_ATTR) in by_id}
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        record = by_id.get(frozen.user_attrs.get(TRIAL_ID_ATTR))
        if record is None:
            study._storage.set_trial_user_attr(frozen._trial_id, "never_run", True)
            study._storage.set_trial_state_values(frozen._trial_id, TrialState.FAIL)
            continue
        outcome = outcome_of(record.epochs, failed=record.error is not None, metric=metric, mode=mode,
                             max_epochs=max_epochs)
        record_outcome(study, frozen.number, record.epochs, outcome, metric)
    return numbers
