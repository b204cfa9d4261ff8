"""Build and run the Ray Tune study: an Optuna sampler (TPE, random, QMC) proposes, a Ray Tune scheduler
(ASHA, HyperBand, median rule, none) stops, trials train."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raysearch.core.layout import OPTUNA_FILE, experiment_dir, latest_checkpoint
from raysearch.search.console import CONSOLE_METRICS, DEFAULT, tune_verbosity
from raysearch.search.history import recorded_epochs
from raysearch.search.resources import ElasticConcurrency
from raysearch.search.results import TrialRecord, error_summary
from raysearch.search.searcher import Budget
from raysearch.search.signing import SignSnapshots
from raysearch.search.space import SearchSpace
from raysearch.search.tracking import logger_callbacks
from raysearch.search.trial import TrialSettings, run_trial


@dataclass(frozen=True)
class SearchSettings:
    """How the search itself runs: searcher, scheduler, budget and concurrency."""

    name: str
    results_dir: Path
    trials: int
    metric: str
    mode: str
    concurrency: int | None
    max_failures: int
    searcher: str
    searcher_settings: dict[str, Any]
    scheduler: str
    scheduler_settings: dict[str, Any]
    budget: Budget

    @property
    def optuna_storage(self) -> str:
        """The Optuna study's SQLite URL (results/<study>/optuna.db, which optuna-dashboard opens)."""
        return f"sqlite:///{(self.results_dir / OPTUNA_FILE).resolve()}"
    loggers: tuple[str, ...] = ()
    console: int = DEFAULT  # QUIET, DEFAULT or VERBOSE (raysearch.search.console)
    keep_top: int | None = None  # finished trials outside the top K are thinned as they end (None: none is)



def trainable(trial: TrialSettings) -> Any:
    """The Tune trainable: `run_trial` with the study's settings and one trial's resources, restarted from the
    trial's own checkpoints (ResumeFromOwnCheckpoints)."""
    from ray import tune
    from ray.tune.trainable import wrap_function

    function_trainable = wrap_function(tune.with_parameters(run_trial, settings=trial))

    class ResumeFromOwnCheckpoints(function_trainable):
        """A trial that Tune restarts (after a failure, or on `raysearch resume`) continues from the latest
        checkpoint in its own folder (raysearch.training.session), never from its Tune checkpoint: that one
        holds only the best weights, and Tune may already have deleted the one its last snapshot names."""

        def restore(self, checkpoint_path: Any) -> None:
            return None

    ResumeFromOwnCheckpoints.__name__ = function_trainable.__name__
    ResumeFromOwnCheckpoints._progress_metrics = CONSOLE_METRICS  # what Tune's result boxes show
    return tune.with_resources(ResumeFromOwnCheckpoints, trial.shape.trial_function())


def checkpoint_config(search: SearchSettings) -> Any:
    """What Tune keeps of the checkpoints trials report (their best weights, see raysearch.training.session):
    the best one of each trial by the study's metric, which `ExperimentAnalysis.get_best_checkpoint` and
    `ResultGrid.get_best_result().checkpoint` return."""
    from ray import tune

    return tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=search.metric,
                                 checkpoint_score_order=search.mode)


def build_tuner(space: SearchSpace, search: SearchSettings, trial: TrialSettings, concurrency: int) -> Any:
    """The Tuner for a new study, with its Optuna study kept in SQLite beside the results and a
    concurrency limit (starting at `concurrency`) that follows the cluster's nodes."""
    import optuna
    from ray import tune

    from raysearch.search.scheduler import create_scheduler
    from raysearch.search.searcher import StudySearch, create_sampler

    searcher = StudySearch(
        train_dir=Path(trial.storage_path), max_epochs=trial.max_epochs, budget=search.budget,
        space=space.sample, metric=search.metric, mode=search.mode, study_name=search.name,
        storage=optuna.storages.RDBStorage(search.optuna_storage),
        sampler=create_sampler(search.searcher, search.searcher_settings),
    )
    scheduler = create_scheduler(search.scheduler, trial.storage_path, search.scheduler_settings)
    return tune.Tuner(
        trainable(trial),
        tune_config=tune.TuneConfig(
            metric=search.metric, mode=search.mode, scheduler=scheduler, num_samples=search.trials,
            search_alg=ElasticConcurrency(searcher, trial.shape, search.concurrency, concurrency),
            trial_dirname_creator=lambda t: t.trial_id, trial_name_creator=lambda t: t.trial_id,
            reuse_actors=trial.workers == 1,
        ),
        run_config=tune.RunConfig(
            name=search.name, storage_path=str(experiment_dir(search.results_dir, search.name).parent.resolve()),
            failure_config=tune.FailureConfig(max_failures=search.max_failures),
            checkpoint_config=checkpoint_config(search),
            callbacks=[SignSnapshots(), *logger_callbacks(search.loggers, search.results_dir, search.name),
                       *console_callbacks(search, trial), *thinning_callbacks(search, trial)],
            verbose=tune_verbosity(search.console),
        ),
    )


def console_callbacks(search: SearchSettings, trial: TrialSettings) -> list[Any]:
    """The callbacks that print the search's console in its mode: raysearch's progress lines in DEFAULT."""
    from raysearch.search.progress import TrialProgress

    return [TrialProgress(search.metric, trial.max_epochs)] if search.console == DEFAULT else []


def thinning_callbacks(search: SearchSettings, trial: TrialSettings) -> list[Any]:
    """The callback that thins finished trials outside the top K as they end (raysearch.search.thinning)."""
    from raysearch.search.thinning import ThinFinishedTrials

    return [] if search.keep_top is None else [ThinFinishedTrials(Path(trial.storage_path), search.keep_top,
                                                                   search.mode)]


def restore_tuner(search: SearchSettings, trial: TrialSettings) -> Any:
    """The Tuner of an interrupted study: finished and failed trials are kept as they are, unfinished
    ones start again and continue from the latest checkpoint in their trial folder (see
    raysearch.training.session; one whose folder shows it had finished stops at once, see
    raysearch.search.trial), the searcher (with its concurrency limit, budget and Optuna trials) and the
    count of trials still to sample come back from the experiment folder, and the scheduler's state is
    refilled from the trials' recorded epochs (see raysearch.search.scheduler)."""
    from ray import tune

    from raysearch.search.progress import TrialProgress

    tuner = tune.Tuner.restore(str(experiment_dir(search.results_dir, search.name).resolve()), trainable(trial),
                               resume_unfinished=True, resume_errored=False, restart_errored=False)
    # The console follows this resume's mode, not the interrupted run's: Tuner.restore brings back the RunConfig
    # pickled when the study started and offers no public way to change it (ray-project/ray#41364 names this
    # accessor as the way to reach it). Through Ray Client the Tuner runs remotely and keeps the run's console.
    if tuner._local_tuner is not None:
        run_config = tuner._local_tuner.get_run_config()
        run_config.verbose = tune_verbosity(search.console)
        run_config.callbacks = [*(c for c in run_config.callbacks or () if not isinstance(c, TrialProgress)),
                                *console_callbacks(search, trial)]
    return tuner


def _wall_time(last_result: dict[str, Any], epochs: list[dict[str, Any]]) -> float:
    """A trial's wall time across restarts: Tune's clock restarts with a trial that continues from a
    raysearch checkpoint, so the epochs from before the restart (all but the `training_iteration` it
    reported since) add their recorded epoch times."""
    earlier = epochs[:max(len(epochs) - int(last_result.get("training_iteration", 0)), 0)]
    return float(last_result.get("time_total_s", 0.0)) + sum(float(e.get("epoch_time_s", 0.0)) for e in earlier)


def records_from(result_grid: Any, train_dir: Path) -> list[TrialRecord]:
    """Every trial's config, full epoch history, error and checkpoint: the history is the one kept in the
    trial's latest checkpoint under `train_dir` (see raysearch.training.session), Tune's results give the
    rest."""
    records = []
    for result in result_grid:
        trial_id = Path(result.path).name
        checkpoint = latest_checkpoint(train_dir / trial_id)
        epochs = recorded_epochs(train_dir, trial_id)
        error = None
        if result.error is not None:
            error = error_summary(str(result.error)) or type(result.error).__name__
        records.append(TrialRecord(
            trial_id=trial_id, config=dict(result.config or {}), epochs=epochs, error=error,
            wall_time_s=_wall_time(result.metrics or {}, epochs),
            checkpoint=None if checkpoint is None else str(checkpoint),
        ))
    return sorted(records, key=lambda r: r.trial_id)
