"""The Python API behind the CLI: `run_study` does what `raysearch run` does."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from raysearch.data.cache import dataset_fingerprint, ensure_cache
from raysearch.data.samples import DatasetIndex
from raysearch.errors import ConfigError
from raysearch.results import EPOCHS_FILE, TRIALS_FILE, epochs_table, trials_table, write_table_atomic, write_text_atomic
from raysearch.space import SearchSpace, load_space
from raysearch.study import StudySpec, resolved_study
from raysearch.tasks import create_task
from raysearch.training.hparams import defaults, preprocessing_of

STUDY_FILE = "study.yaml"


@dataclass(frozen=True)
class StudyOutcome:
    """Where a finished study's results are, and its trials table."""

    directory: Path
    trials: Any
    metric: str
    mode: str
    search_seconds: float


def load_dataset(data: str | None, *, progress: bool = True) -> DatasetIndex:
    """The dataset at `data`, or the built-in phantom X-rays (generated once into a cache) when None."""
    from raysearch.data.phantom import PhantomSpec, ensure_phantom
    from raysearch.data.yolo import read_yolo

    root = ensure_phantom(PhantomSpec(), progress=progress) if data is None else Path(data)
    if not root.exists():
        raise ConfigError(f"--data: {root} does not exist")
    return read_yolo(root)


def _space_for(spec: StudySpec, known: set[str]) -> tuple[SearchSpace, str]:
    path = spec.space_path()
    space = load_space(path, known=known)
    if space.task != spec.task:
        raise ConfigError(f"{path}: task: is {space.task!r}, but the study's task is {spec.task!r}")
    return space, path.read_text()


def run_study(spec: StudySpec, *, progress: bool = True, out: TextIO = sys.stdout) -> StudyOutcome:
    """Run a whole study: data, cache, Ray Tune search, Parquet results, summary on `out`."""
    import ray

    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    from raysearch.search.resources import alive_nodes, concurrency_limit
    from raysearch.search.trial import TrialSettings
    from raysearch.search.tuner import SearchSettings, build_tuner, records_from

    task = create_task(spec.task)
    hp_defaults = {**defaults(task.hyperparameters), "image_size": spec.image_size}
    space, space_text = _space_for(spec, set(hp_defaults))
    name = spec.study_name(space_text)
    results_root = Path(spec.results)
    study_dir = results_root / name
    if (study_dir / TRIALS_FILE).exists():
        raise ConfigError(f"study {name} already finished in {study_dir}; choose another --name or delete it")
    if (study_dir / "ray" / name).exists():
        raise ConfigError(f"study {name} was interrupted in {study_dir}; continue it with `raysearch resume {study_dir}`")
    index = load_dataset(spec.data, progress=progress)
    fingerprint = dataset_fingerprint(index)
    cache_root = results_root / "cache"
    base_cache, _ = ensure_cache(index, fingerprint, preprocessing_of({**hp_defaults, **space.fixed}), cache_root,
                                 progress=progress)
    metric, mode = space.metric or f"val_{task.score}", space.mode or task.mode
    trial = TrialSettings(
        task=spec.task, defaults={**hp_defaults, **space.fixed}, index=index, fingerprint=fingerprint,
        cache_root=str(cache_root.resolve()), storage_path=str((study_dir / "train").resolve()),
        max_epochs=spec.max_epochs, seed=spec.seed, workers=spec.workers_per_trial,
        cpus_per_worker=spec.cpus_per_worker, gpus_per_worker=spec.gpus_per_worker, max_failures=spec.max_failures,
    )
    search = SearchSettings(name=name, results_dir=study_dir, trials=spec.trials, metric=metric, mode=mode,
                            seed=spec.seed, grace_period=spec.grace_period, reduction_factor=spec.reduction_factor,
                            concurrency=spec.concurrency, max_failures=spec.max_failures)
    ray.init(address=spec.address, log_to_driver=True, configure_logging=False)
    try:
        concurrency = concurrency_limit(alive_nodes(), trial.shape, spec.concurrency)
        study_dir.mkdir(parents=True, exist_ok=True)
        data_info = {"root": str(index.root), "format": index.format, "classes": index.classes,
                     "fingerprint": fingerprint, "base_cache": str(base_cache),
                     "samples": {s: len(index.split(s)) for s in ("train", "val", "test")},
                     "skipped_empty_labels": index.skipped_empty, "issues": [str(i) for i in index.issues]}
        study = resolved_study(
            spec, name=name, space=space.to_dict(), data=data_info, defaults=hp_defaults,
            scheduler={"name": "ASHA", "time_attr": "epoch", "max_t": spec.max_epochs, "grace_period": spec.grace_period,
                       "reduction_factor": spec.reduction_factor, "metric": metric, "mode": mode,
                       "searcher": "OptunaSearch(TPESampler)"},
            resources={"workers_per_trial": spec.workers_per_trial, "cpus_per_worker": spec.cpus_per_worker,
                       "gpus_per_worker": spec.gpus_per_worker, "concurrency": concurrency,
                       "cluster": {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}},
        )
        write_text_atomic(yaml.safe_dump(study, sort_keys=False), study_dir / STUDY_FILE)
        started = time.perf_counter()
        grid = build_tuner(space, search, trial, concurrency).fit()
        search_seconds = time.perf_counter() - started
        records = records_from(grid)
    finally:
        if not spec.address:
            ray.shutdown()
    table = trials_table(records, space, score=metric, mode=mode, max_epochs=spec.max_epochs)
    write_table_atomic(epochs_table(records), study_dir / EPOCHS_FILE)
    write_table_atomic(table, study_dir / TRIALS_FILE)
    outcome = StudyOutcome(study_dir, table.to_pandas(), metric, mode, search_seconds)
    print_summary(outcome, space, out)
    return outcome


def print_summary(outcome: StudyOutcome, space: SearchSpace, out: TextIO, top: int = 5) -> None:
    """The best trials as a short ranked table, the results folder and the dashboard command."""
    frame = outcome.trials
    score = f"metric.{outcome.metric}.best"
    ranked = frame.sort_values(score, ascending=outcome.mode == "min", na_position="last").head(top)
    metric_columns = [c for c in ranked.columns if c.startswith("metric.val_") and c.endswith(".best") and c != score]
    shown = ["trial_id", "status", "epochs", score, *metric_columns[:5], *[f"param.{p.name}" for p in space.parameters]]
    table = ranked[[c for c in shown if c in ranked.columns]].rename(
        columns=lambda c: c.removeprefix("metric.").removesuffix(".best").removeprefix("param."))
    print(f"\nBest trials by {outcome.metric} ({outcome.mode}):", file=out)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"), file=out)
    if len(ranked):
        best = ranked.iloc[0]
        params = {p.name: _plain(best.get(f"param.{p.name}")) for p in space.parameters}
        print(f"\nBest configuration ({best['trial_id']}): {params}", file=out)
    print(f"\nSearch took {outcome.search_seconds:.0f} s. Results: {outcome.directory.resolve()}", file=out)
    print(f"Explore them: raysearch dashboard {outcome.directory.parent.resolve()}", file=out)


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value it holds (for printing)."""
    return value.item() if hasattr(value, "item") else value
