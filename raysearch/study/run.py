"""The Python API behind the CLI: `run_study` does what `raysearch run` does, `resume_study` what
`raysearch resume` does."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import yaml

from raysearch.core.columns import FAILED, headline_columns, no_trial_finished, rank_trials, score_column
from raysearch.core.files import check_writable_folder, inside, write_table_atomic, write_text_atomic
from raysearch.core.layout import CONFIG_FILE, StudyFolder, check_study_name, experiment_dir
from raysearch.data.cache import cache_issues, dataset_fingerprint, ensure_cache
from raysearch.data.records import issues_table
from raysearch.data.samples import DatasetIndex
from raysearch.data.splits import SplitOutcome
from raysearch.errors import ConfigError, DataError, NoTrialFinished, StudyInterrupted
from raysearch.search.console import DEFAULT, QUIET, VERBOSE, number_text, plain_value, quiet_libraries
from raysearch.search.results import epochs_table, trials_table
from raysearch.search.space import SearchSpace, load_space
from raysearch.search.tracking import mlflow_tracking_uri, record_trial_outcomes, tracking_plan, trial_runs
from raysearch.study.dataset import study_dataset
from raysearch.study.lock import refuse_if_held, study_lock
from raysearch.study.retention import describe_size, folder_size, keep_checkpoints, parse_keep
from raysearch.study.signals import reinstall, stop_signals
from raysearch.study.spec import StudySpec, resolved_study
from raysearch.tasks import create_task
from raysearch.training.callbacks import Monitor
from raysearch.training.hparams import defaults, preprocessing_of, schema

if TYPE_CHECKING:
    from raysearch.core.schema import HParam
    from raysearch.search.results import TrialRecord
    from raysearch.search.trial import TrialSettings
    from raysearch.search.tuner import SearchSettings

EXPERIMENT_SNAPSHOT_S = 2


@dataclass(frozen=True)
class StudyOutcome:
    """Where a finished study's results are, and its trials table."""

    directory: Path
    trials: Any
    metric: str
    mode: str
    search_seconds: float
    trial_epochs: int
    device_hours: float


def _add_cache_issues(index: DatasetIndex, cache: Path, on_error: str) -> None:
    """Images that passed the reader but could not be decoded when the cache was built join `index.issues`."""
    found = cache_issues(cache)
    if found and on_error == "error":
        raise DataError(f"{found[0]} (use --on-error skip to skip such files)")
    if found:
        print(f"  {len(found)} images could not be decoded and were skipped (first: {found[0]})")
    index.issues.extend(found)


def _space_for(spec: StudySpec, schema: Mapping[str, HParam]) -> tuple[SearchSpace, str]:
    path = spec.space_path()
    space = load_space(path, schema=schema)
    for note in space.notes:
        print(f"{path}: {note}")
    if space.task != spec.task:
        raise ConfigError(f"{path}: task: is {space.task!r}, but the study's task is {spec.task!r}")
    return space, path.read_text()


@dataclass(frozen=True)
class _Plan:
    """A study resolved from its spec: names, folders, data, and the settings of its trials and search (their
    GPUs per worker resolved by `_on_cluster` once connected to Ray)."""

    spec: StudySpec
    name: str
    directory: Path
    space: SearchSpace
    defaults: dict[str, Any]
    index: DatasetIndex
    splits: SplitOutcome
    fingerprint: str
    base_cache: Path
    trial: TrialSettings
    search: SearchSettings


def _check_state(name: str, study_dir: Path, *, resuming: bool) -> None:
    """ConfigError when the study folder's state does not allow a run (or a resume), or another driver runs it."""
    from ray.tune import Tuner


    refuse_if_held(study_dir)

    if StudyFolder(study_dir).trials_file.exists():
        raise ConfigError(f"study {name} already finished in {study_dir}; choose another --name or delete it")
    interrupted = Tuner.can_restore(experiment_dir(study_dir, name))
    if interrupted and not resuming:
        raise ConfigError(f"study {name} was interrupted in {study_dir}; continue it with "
                          f"`raysearch resume {study_dir}`")
    if resuming and not interrupted:
        raise ConfigError(f"study {name} in {study_dir} has no Ray Tune state to resume; start it with `raysearch run`")


def _plan(spec: StudySpec, *, progress: bool, resuming: bool, recorded: Mapping[str, Any] | None = None,
          verbose: bool = False) -> _Plan:
    """Resolve `spec`; ConfigError when the study folder's state does not allow a run (or a resume), or when a
    resumed study's space or data differ from its `recorded` study.yaml (checked before any cache is built).
    The search's console (raysearch.search.console): QUIET without `progress`, VERBOSE with `verbose`, else
    DEFAULT."""
    from raysearch.search.scheduler import scheduler_settings
    from raysearch.search.searcher import Budget, sampler_settings
    from raysearch.search.trial import TrialSettings
    from raysearch.search.tuner import SearchSettings

    task = create_task(spec.task)
    hp_defaults = {**defaults(task.hyperparameters), "image_size": spec.image_size}
    space, space_text = _space_for(spec, schema(task.hyperparameters))
    searcher, scheduler = spec.searcher or space.searcher or "tpe", spec.scheduler or space.scheduler or "asha"
    if spec.startup_trials is not None and searcher != "tpe":
        raise ConfigError(f"--startup-trials: only the tpe searcher has start-up trials; this study uses {searcher}")
    name = spec.study_name(space_text)
    check_writable_folder(Path(spec.results), "--results")
    results_root = Path(spec.results).resolve()
    study_dir = inside(results_root, results_root / check_study_name(name, "--name"))
    folder = StudyFolder(study_dir)
    _check_state(name, study_dir, resuming=resuming)
    splits = study_dataset(spec, progress=progress)
    index = splits.index
    fingerprint = dataset_fingerprint(index, folder.image_index_file(index.root), progress=progress)
    if recorded is not None:
        _check_unchanged(recorded, folder, name=name, space=space, fingerprint=fingerprint, spec=spec, index=index)
    cache_root = folder.cache_root
    base_cache, _ = ensure_cache(index, fingerprint, preprocessing_of({**hp_defaults, **space.fixed}), cache_root,
                                 progress=progress)
    _add_cache_issues(index, base_cache, spec.on_error)
    metric, mode = space.metric or task.score, space.mode or task.mode
    trial = TrialSettings(
        task=spec.task, defaults={**hp_defaults, **space.fixed}, index=index, fingerprint=fingerprint,
        cache_root=str(cache_root.resolve()), storage_path=str(folder.train_dir.resolve()),
        max_epochs=spec.max_epochs, seed=spec.seed, workers=spec.workers_per_trial,
        cpus_per_worker=spec.cpus_per_worker, gpus_per_worker=0.0, max_failures=spec.max_failures,
        monitor=Monitor(metric, mode),
    )
    search = SearchSettings(
        name=name, results_dir=study_dir, trials=spec.trials, metric=metric, mode=mode,
        concurrency=spec.concurrency, max_failures=spec.max_failures,
        searcher=searcher, searcher_settings=sampler_settings(searcher, seed=spec.seed, trials=spec.trials,
                                                            startup_trials=spec.startup_trials),
        scheduler=scheduler, scheduler_settings=scheduler_settings(
            scheduler, max_epochs=spec.max_epochs, grace_period=spec.grace_period,
            reduction_factor=spec.reduction_factor),
        budget=Budget(seconds=spec.budget_seconds(), trial_epochs=spec.epoch_budget), loggers=spec.log,
        console=QUIET if not progress else VERBOSE if verbose else DEFAULT,
        keep_top=parse_keep(spec.keep_checkpoints),
    )
    return _Plan(spec, name, study_dir, space, hp_defaults, index, splits, fingerprint, base_cache, trial, search)


def _check_unchanged(recorded: Mapping[str, Any], folder: StudyFolder, *, name: str, space: SearchSpace,
                     fingerprint: str, spec: StudySpec, index: DatasetIndex) -> None:
    """ConfigError naming the study.yaml field when a resumed study's search space or dataset changed."""
    if name != recorded["name"] or space.to_dict() != recorded["search_space"]:
        raise ConfigError(f"{folder.study_file}: search_space: {spec.space_path()} changed since the study started")
    if fingerprint != recorded["data"]["fingerprint"]:
        raise ConfigError(f"{folder.study_file}: data.fingerprint: the dataset at {index.root} changed since the "
                          "study started")


@contextmanager
def _connected(address: str | None, *, console: int) -> Iterator[None]:
    """Connected to the Ray cluster at `address`, or to a local instance started (and stopped) here; a
    caller already connected to Ray (a notebook, a benchmark running many studies) keeps its connection.

    SIGTERM and SIGHUP are handled here again once connected (`ray.init` takes SIGTERM over, see
    raysearch.study.signals).

    Ray Tune snapshots its experiment (trials, searcher) every EXPERIMENT_SNAPSHOT_S seconds instead of
    its default of at least 10: `raysearch resume` continues from the last snapshot, so a trial started
    after it would be sampled again rather than continued."""
    from raysearch.search.connection import connected

    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", str(EXPERIMENT_SNAPSHOT_S))
    with connected(address, console=console):
        reinstall()
        yield


@contextmanager
def _on_cluster(plan: _Plan) -> Iterator[tuple[_Plan, int, float]]:
    """Once connected to Ray: the plan with its GPUs per worker resolved from the cluster (--gpus-per-worker auto,
    --trials-per-gpu), the concurrency the cluster allows it (see `_capacity`), and the cluster's GPU count."""
    import ray

    from raysearch.search.resources import resolve_gpus_per_worker

    cluster_gpus = float(ray.cluster_resources().get("GPU", 0.0))
    gpus = resolve_gpus_per_worker(plan.spec.gpus_per_worker, plan.spec.trials_per_gpu, cluster_gpus)
    resolved = replace(plan, trial=replace(plan.trial, gpus_per_worker=gpus))
    with _capacity(resolved) as concurrency:
        yield resolved, concurrency, cluster_gpus


def _capacity(plan: _Plan) -> AbstractContextManager[int]:
    """The concurrency the cluster allows for `plan`'s trials, with nodes asked of its autoscaler meanwhile."""
    from raysearch.search.autoscaling import cluster_capacity

    spec = plan.spec
    return cluster_capacity(plan.trial.shape, spec.concurrency, spec.trials, spec.wait_for_nodes)


def run_study(spec: StudySpec, *, progress: bool = True, verbose: bool = False,
              out: TextIO = sys.stdout) -> StudyOutcome:
    """Run a whole study: data, cache, Ray Tune search, Parquet results, summary on `out`.

    Every value is checked before the study folder is created; the folder is then locked (one driver per
    study) until the study ends, however it ends."""
    from raysearch.search.signing import load_key

    load_key()
    plan = _plan(spec, progress=progress, resuming=False, verbose=verbose)
    with stop_signals(plan.directory), study_lock(plan.directory):
        _check_state(plan.name, plan.directory, resuming=False)
        return _search(plan, progress=progress, out=out)


def _search(plan: _Plan, *, progress: bool, out: TextIO) -> StudyOutcome:
    """Write the study's description, run its Ray Tune search, and finish its results."""
    import ray

    from raysearch.search.resources import device_plan
    from raysearch.search.searcher import SAMPLER_CLASSES
    from raysearch.search.signing import sign_tuner
    from raysearch.search.tuner import build_tuner, records_from

    spec, index, metric, mode = plan.spec, plan.index, plan.search.metric, plan.search.mode
    console = plan.search.console
    with _connected(spec.address, console=console), _on_cluster(plan) as (plan, concurrency, cluster_gpus):
        plan_lines = device_plan(plan.trial.shape, min(concurrency, spec.trials), cluster_gpus)
        print("\n".join(plan_lines), file=out, flush=True)
        write_table_atomic(issues_table(index.issues), StudyFolder(plan.directory).data_issues_file)
        write_table_atomic(plan.splits.table(), StudyFolder(plan.directory).splits_file)
        data_info = {"root": str(index.root), "format": index.format, "classes": index.classes,
                     "fingerprint": plan.fingerprint, "base_cache": str(plan.base_cache),
                     "samples": {s: len(index.split(s)) for s in ("train", "val", "test")},
                     "splits": plan.splits.record(),
                     "skipped_empty_labels": index.skipped_empty, "issues": [str(i) for i in index.issues]}
        study = resolved_study(
            spec, name=plan.name, space=plan.space.to_dict(), data=data_info, defaults=plan.defaults,
            scheduler={"name": plan.search.scheduler, "time_attr": "epoch", **plan.search.scheduler_settings,
                       "metric": metric, "mode": mode},
            searcher={"name": plan.search.searcher, "sampler": SAMPLER_CLASSES[plan.search.searcher].__name__,
                      **plan.search.searcher_settings},
            budget={"trials": spec.trials, "time_budget": spec.time_budget, "time_budget_s": spec.budget_seconds(),
                    "trial_epochs": spec.epoch_budget},
            resources={"workers_per_trial": spec.workers_per_trial, "cpus_per_worker": spec.cpus_per_worker,
                       "gpus_per_worker": plan.trial.gpus_per_worker, "gpus_per_worker_requested":
                       spec.gpus_per_worker, "trials_per_gpu": spec.trials_per_gpu, "concurrency": concurrency,
                       "cluster": {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}},
            tracking=tracking_plan(spec.log, plan.directory),
        )
        write_text_atomic(yaml.safe_dump(study, sort_keys=False), StudyFolder(plan.directory).study_file)
        started = time.perf_counter()
        with quiet_libraries(console):
            tuner = build_tuner(plan.space, plan.search, plan.trial, concurrency)
            sign_tuner(experiment_dir(plan.directory, plan.name))
            grid = tuner.fit()
        search_seconds = time.perf_counter() - started
        _require_finished(grid, plan, search_seconds)
        records = records_from(grid, Path(plan.trial.storage_path))
    return _finish(plan, records, search_seconds, progress=progress, out=out)


def resume_study(study_dir: Path, *, address: str | None = None, wait_for_nodes: float | None = None,
                 trust: bool = False, progress: bool = True, out: TextIO = sys.stdout) -> StudyOutcome:
    """Continue an interrupted study in `study_dir` (driver killed, machine rebooted): finished trials are
    kept, unfinished ones continue from their last checkpoint, the searcher's state (Optuna's trials)
    is restored, and the Parquet files end with every trial exactly once. `address` and `wait_for_nodes`
    may differ from the interrupted run's (a new cluster); None keeps the recorded wait. The study folder
    is locked (one driver per study) for the whole resume.

    Ray Tune's state is unpickled only when this user's key signed it (see raysearch.search.signing);
    `trust` skips that check, for a folder from someone you trust."""
    study_file = StudyFolder(study_dir).study_file
    if not study_file.is_file():
        raise ConfigError(f"{study_dir}: no {study_file.name}, so not a study that `raysearch run` started")
    recorded = StudyFolder(study_dir).read_study()
    try:
        runtime = {"results": str(Path(study_dir).parent), "address": address}
        if wait_for_nodes is not None:
            runtime["wait_for_nodes"] = wait_for_nodes
        spec = StudySpec(**{**recorded["spec"], **runtime})
    except (TypeError, KeyError) as error:
        raise ConfigError(f"{study_file}: spec: not a study description this raysearch reads ({error})") from None
    experiment = _signed_experiment(Path(study_dir), recorded, trust=trust)
    with stop_signals(Path(study_dir)), study_lock(Path(study_dir)):
        _put_back_signed_state(Path(study_dir), experiment, out)
        plan = _plan(spec, progress=progress, resuming=True, recorded=recorded)
        return _restore(plan, address, progress=progress, out=out)


def _restore(plan: _Plan, address: str | None, *, progress: bool, out: TextIO) -> StudyOutcome:
    """Continue the interrupted Ray Tune search of `plan` and finish its results."""
    from raysearch.search.tuner import records_from, restore_tuner

    with _connected(address, console=plan.search.console), _on_cluster(plan) as (plan, _, _):
        started = time.perf_counter()
        with quiet_libraries(plan.search.console):
            grid = restore_tuner(plan.search, plan.trial).fit()
        search_seconds = time.perf_counter() - started
        _require_finished(grid, plan, search_seconds)
        records = records_from(grid, Path(plan.trial.storage_path))
    return _finish(plan, records, search_seconds, progress=progress, out=out)


def _signed_experiment(study_dir: Path, recorded: dict[str, Any], *, trust: bool) -> Path | None:
    """The experiment folder of a study whose Ray Tune state this user's key signed (checked without writing
    anything), None with `trust`; UntrustedState (one line) when the signature does not hold."""
    from raysearch.search.signing import UntrustedState, load_key, verify_signed_state

    load_key()
    if trust:
        return None
    name = check_study_name(recorded.get("name"), f"{StudyFolder(study_dir).study_file}: name")
    try:
        verify_signed_state(study_dir)
    except UntrustedState as error:
        raise UntrustedState(f"{error}: resume unpickles Ray Tune's state, so it continues only studies that "
                             "your own driver signed (add --trust for a folder whose author you trust)") from None
    return experiment_dir(study_dir, name)


def _put_back_signed_state(study_dir: Path, experiment: Path | None, out: TextIO) -> None:
    """Make the experiment folder hold exactly the signed state (see raysearch.search.signing)."""
    from raysearch.search.signing import restore_signed_state

    changed = restore_signed_state(study_dir, experiment) if experiment else 0
    if changed:
        print(f"Put back the signed copies of {changed} Ray Tune state file(s) that changed after the last "
              "signed snapshot", file=out)


def _finish(plan: _Plan, records: list[TrialRecord], search_seconds: float, *, progress: bool,
            out: TextIO) -> StudyOutcome:
    """Write the trials and their epochs as Parquet, finish the study's results, print the summary."""
    from raysearch.search.searcher import reconcile_study

    metric, mode = plan.search.metric, plan.search.mode
    folder = StudyFolder(plan.directory)
    numbers = reconcile_study(plan.search.optuna_storage, plan.name, records, metric=metric, mode=mode,
                              max_epochs=plan.spec.max_epochs)
    for record in records:
        record.number = numbers.get(record.trial_id)
    table = trials_table(records, plan.space, score=metric, mode=mode, max_epochs=plan.spec.max_epochs)
    write_table_atomic(epochs_table(records), folder.epochs_file)
    write_table_atomic(table, folder.trials_file)
    if all(status == FAILED for status in table.column("status").to_pylist()):
        raise NoTrialFinished(f"{plan.directory}: {no_trial_finished(table.to_pandas())}")
    exported = finish_study(plan.directory, progress=progress, out=out)
    _finish_tracking(plan, table.to_pandas(), exported)
    keep_checkpoints(plan.directory, plan.spec.keep_checkpoints)
    devices = plan.trial.workers * (plan.trial.gpus_per_worker or 1.0)
    outcome = StudyOutcome(plan.directory, table.to_pandas(), metric, mode, search_seconds,
                           trial_epochs=sum(len(r.epochs) for r in records),
                           device_hours=sum(r.wall_time_s for r in records) * devices / 3600)
    print_summary(outcome, plan.space, out)
    return outcome


def _finish_tracking(plan: _Plan, trials: Any, exported: Path | None) -> None:
    """With MLflow on: the exported model logged to its trial's run as a pyfunc model, then every trial's status
    and best-epoch metrics (see raysearch.search.tracking)."""
    if "mlflow" not in plan.spec.log:
        return
    from raysearch.inference.pyfunc import log_pyfunc_model

    if exported is not None:
        trial_id = yaml.safe_load((exported / CONFIG_FILE).read_text())["trial_id"]
        run_id = trial_runs(plan.directory, plan.name).get(trial_id)
        if run_id is not None:
            log_pyfunc_model(mlflow_tracking_uri(plan.directory), run_id, exported)
    record_trial_outcomes(plan.spec.log, plan.directory, plan.name, trials)


SUMMARY_WIDTH = 120  # the summary table's lines fit a terminal this wide


def summary_table(frame: Any, space: SearchSpace, metric: str, mode: str, top: int = 5) -> str:
    """The `top` best trials as a table at most SUMMARY_WIDTH wide: id, status, epochs, score, headline metrics,
    then the parameters that any of them sampled (whole numbers as whole numbers); columns that do not fit are
    left out (they are all in trials.parquet)."""
    score = score_column(metric)
    ranked = rank_trials(frame, score, mode).head(top)
    metric_columns = [c for c in headline_columns(ranked.columns, "metric.val_") if c.endswith(".best") and c != score]
    params = [f"param.{p.name}" for p in space.parameters if ranked.get(f"param.{p.name}") is not None
              and ranked[f"param.{p.name}"].notna().any()]
    shown = [c for c in ["trial_id", "status", "epochs", score, *metric_columns, *params] if c in ranked.columns]
    table = ranked[shown].astype(object).map(lambda v: "-" if _missing(v) else number_text(v)).rename(
        columns=lambda c: c.removeprefix("metric.").removesuffix(".best").removeprefix("param."))
    text = table.to_string(index=False)
    while len(text.splitlines()[0]) > SUMMARY_WIDTH and table.shape[1] > 4:
        table = table.iloc[:, :-1]
        text = table.to_string(index=False)
    left_out = len(shown) - table.shape[1]
    return text + (f"\n({left_out} more columns in trials.parquet)" if left_out else "")


def print_summary(outcome: StudyOutcome, space: SearchSpace, out: TextIO, top: int = 5) -> None:
    """The best trials as a short ranked table, the results folder (and its size) and the dashboard command."""
    frame = outcome.trials
    print(f"\nBest trials by {outcome.metric} ({outcome.mode}):", file=out)
    print(summary_table(frame, space, outcome.metric, outcome.mode, top), file=out)
    ranked = frame.sort_values(score_column(outcome.metric), ascending=outcome.mode == "min", na_position="last")
    if len(ranked):
        best = ranked.iloc[0]
        values = {p.name: _typed(p, plain_value(best.get(f"param.{p.name}"))) for p in space.parameters}
        params = {name: value for name, value in values.items() if not _missing(value)}
        print(f"\nBest configuration ({best['trial_id']}): {params}", file=out)
    print(f"\nSearch took {outcome.search_seconds:.0f} s; compute spent: {outcome.trial_epochs} trial-epochs, "
          f"{outcome.device_hours:.3g} device-hours (trial wall time x GPUs, or workers on CPUs, per trial). "
          f"Results: {outcome.directory.resolve()} ({describe_size(folder_size(outcome.directory))})", file=out)
    print(f"Explore them: raysearch dashboard {outcome.directory.parent.resolve()}", file=out)


def _typed(parameter: Any, value: Any) -> Any:
    """A parameter's value as its distribution holds it (an integer read back from a float column as an int,
    a categorical choice as the choice itself)."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if _missing(value):
        return value
    if isinstance(parameter.distribution, IntDistribution):
        return int(value)
    if isinstance(parameter.distribution, CategoricalDistribution):
        return next((choice for choice in parameter.distribution.choices if choice == value), value)
    return value


def _missing(value: Any) -> bool:
    """A parameter that the trial did not sample (None, or NaN in a numeric column)."""
    return value is None or (isinstance(value, float) and value != value)


def _require_finished(grid: Any, plan: _Plan, search_seconds: float) -> None:
    """Refuse to write final results for a search that Ctrl-C (or a signal) stopped part-way: its Ray Tune
    state is saved, and `raysearch resume` continues it. A trial counts as finished when it failed or its
    folder shows it finished (Tune marks the trials it was running as terminated when interrupted); a
    study may end with fewer than --trials trials when its budget is spent."""
    from raysearch.search.history import has_finished

    train_dir = Path(plan.trial.storage_path)
    finished = sum(1 for result in grid if result.error is not None
                   or has_finished(train_dir, Path(result.path).name, plan.spec.max_epochs))
    budget_spent = plan.search.budget.spent(search_seconds, train_dir)
    if finished < len(grid) or (len(grid) < plan.spec.trials and not budget_spent):
        raise StudyInterrupted(f"study interrupted with {finished} of {plan.spec.trials} trials finished; "
                               f"continue it with `raysearch resume {plan.directory}`")


def finish_study(study_dir: Path, *, progress: bool = True, out: TextIO = sys.stdout) -> Path | None:
    """What `raysearch run` does after the search: evaluate the best trial on the test split, export it.
    Returns the exported model's folder (None when the test split could not be used: the evaluation said why)."""
    from raysearch.inference.export import export_model
    from raysearch.study.evaluate import evaluate_study

    evaluated = evaluate_study(study_dir, top=1, repeats=1, progress=progress, out=out)
    if evaluated.empty and StudyFolder(study_dir).read_study()["data"]["samples"]["test"]:
        return None
    exported = export_model(study_dir)
    print(f"Best model exported to {exported}", file=out)
    return exported
