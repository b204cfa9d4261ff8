"""Test-set evaluation of a finished study's best trials.

With one repeat, each of the top-K trials' best checkpoint is reloaded; with R > 1, each configuration is
retrained with R seeds (the study's seed, +1, ...) by the same training loop, every retraining a Ray task
with the resources of one of the study's workers (GPUs on a GPU cluster), all submitted at once so that
they run side by side as far as the cluster allows, and the test metrics are reported as mean and sample
standard deviation. Results go to `predictions.parquet`
(one row per test image per evaluated model, its PNGs under `predictions/`) and to `test.*` columns of
`trials.parquet`, all replaced as a whole by each evaluation: the data is checked and every model evaluated
first, the new `predictions/` is built beside the old one and swapped in with the tables only when complete,
so an evaluation that fails (the dataset moved, a full disk) leaves the earlier results as they were.

Every test figure gets a 95 % bootstrap interval (`test.<metric>.ci_low` / `.ci_high`; with repeats, of the
mean), and each other model a paired comparison with the best trial on the same resamples (`paired.*`);
see `study.scoring`, `tasks.bootstrap` and docs/metrics.md.

Under the `published` split policy the test split may share sources with train (`raysearch.data.splits`):
the metrics are then also computed on its clean subset, the test images whose source group has no image in
train, as `test_clean.*` columns; `test.images` and `test_clean.images` give both sizes.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn

from raysearch.core.columns import PAIRED_PREFIX, headline_columns, metric_name
from raysearch.core.devices import torch_device
from raysearch.core.files import atomic_folder, inside, write_table_atomic
from raysearch.core.layout import PREDICTIONS_DIR, StudyFolder
from raysearch.core.options import NO_TTA, check_tta, ensemble_name
from raysearch.data.cache import META_FILE, CachedDataset, cache_key, dataset_fingerprint, ensure_cache, load_cache
from raysearch.data.images import ImageError, read_grey
from raysearch.data.preprocess import fit, placement
from raysearch.data.samples import SPLITS
from raysearch.data.splits import PUBLISHED, in_train_source
from raysearch.errors import ConfigError, DataError
from raysearch.inference.overlay import write_png
from raysearch.inference.restore import build_model, check_ensemble, restore_trial, trial_hyperparameters
from raysearch.models.ensemble import EnsembleNet
from raysearch.study import scoring
from raysearch.study.dataset import study_dataset
from raysearch.tasks import create_task
from raysearch.tasks.base import Task, TaskContext
from raysearch.tasks.bootstrap import ImageFigures, Replicates, mean_replicates, resample_counts
from raysearch.training.batches import make_batch
from raysearch.training.callbacks import BestWeights, EarlyStopping, Monitor
from raysearch.training.hparams import preprocessing_of
from raysearch.training.session import LocalSession
from raysearch.training.trainer import LoopSettings, train
from raysearch.training.validation import baseline_apd
from raysearch.training.validation import evaluate as evaluate_rows

TEST, TEST_CLEAN = "test", "test_clean"
COUNT_COLUMNS = ("test.repeats", f"{TEST}.images", f"{TEST_CLEAN}.images")
VIEW_SIZE = 256
FLOAT_LIST = pa.list_(pa.float32())
PREDICTION_SCHEMA = pa.schema([
    ("study", pa.string()), ("trial_id", pa.string()), ("repeat", pa.int64()), ("seed", pa.int64()),
    ("image", pa.string()), ("view", pa.string()),
    ("true_class", pa.int64()), ("true_class_name", pa.string()),
    ("pred_class", pa.int64()), ("pred_class_name", pa.string()), ("probabilities", FLOAT_LIST),
    ("true_polygon", FLOAT_LIST), ("pred_polygon", FLOAT_LIST), ("apd", pa.float64()),
    ("true_mask", pa.string()), ("mask", pa.string()), ("iou", pa.float64()), ("hd95", pa.float64()),
    ("assd", pa.float64()),
])



@dataclass(frozen=True)
class Model:
    """One evaluated model: a trial's configuration trained with one seed."""

    trial_id: str
    repeat: int
    seed: int
    network: nn.Module
    hp: Mapping[str, Any]


def _study_cache(study_dir: Path, study: Mapping[str, Any], hp: Mapping[str, Any], progress: bool) -> CachedDataset:
    """The preprocessed arrays for a trial's preprocessing: the study's cache, rebuilt from the data if gone."""
    preprocessing = preprocessing_of(dict(hp))
    fingerprint = study["data"]["fingerprint"]
    cache_root = StudyFolder(study_dir).cache_root
    directory = cache_root / cache_key(fingerprint, preprocessing)
    if not (directory / META_FILE).is_file():
        from raysearch.study.spec import StudySpec

        spec = StudySpec(**{**study["spec"], "data": study["data"]["root"], "results": str(Path(study_dir).parent)})
        index = study_dataset(spec, progress=progress).index
        found = dataset_fingerprint(index, StudyFolder(study_dir).image_index_file(index.root), progress=progress)
        if found != fingerprint:
            raise DataError(f"{study['data']['root']}: the dataset changed since study {study['name']} ran "
                            "(fingerprint differs); evaluate it on the data it was searched on")
        directory, _ = ensure_cache(index, fingerprint, preprocessing, cache_root, progress=progress)
    return load_cache(directory)


@dataclass(frozen=True)
class Retraining:
    """One configuration to train from scratch with one seed."""

    trial_id: str
    repeat: int
    seed: int
    hp: dict[str, Any]
    cache_dir: str


def retrain(task: str, hp: dict[str, Any], cache_dir: str, seed: int, max_epochs: int, threads: int,
            monitor: Monitor) -> dict[str, torch.Tensor] | None:
    """Train a configuration from scratch with `seed` (in a Ray task), stopping early and keeping the best
    weights by the study's `monitor` as its trials did; those weights, on the CPU (None if no epoch scored)."""
    best = BestWeights(monitor)
    settings = LoopSettings(task, cache_dir, max_epochs, seed, threads=threads, cache_hit=True, monitor=monitor)
    train(hp, settings, LocalSession(torch_device()), callbacks=[EarlyStopping(monitor, hp["patience"]), best])
    return None if best.weights is None else {k: v.cpu() for k, v in best.weights.items()}


def _retraining_resources(study: Mapping[str, Any]) -> dict[str, float]:
    """What one retraining reserves: one worker of the study's trials (its CPUs and GPUs)."""
    resources = study["resources"]
    return {"num_cpus": float(resources["cpus_per_worker"]), "num_gpus": float(resources["gpus_per_worker"])}


def _retrain_all(study: Mapping[str, Any], jobs: list[Retraining], max_epochs: int, address: str | None,
                 progress: bool) -> list[nn.Module]:
    """Every retraining as its own Ray task, all submitted at once, so the cluster runs as many side by side as
    its resources allow; the trained networks (best-validation weights) in the order of `jobs`."""
    import ray
    from tqdm.auto import tqdm

    from raysearch.search.connection import connected

    resources = _retraining_resources(study)
    monitor = Monitor(study["scheduler"]["metric"], study["scheduler"]["mode"])  # what ranked the study's trials
    task = create_task(study["task"])
    threads = max(int(resources["num_cpus"]), 1)
    remote = ray.remote(retrain)
    with connected(address):
        pending = [remote.options(name=f"retrain {job.trial_id} seed {job.seed}", **resources).remote(
            study["task"], job.hp, job.cache_dir, job.seed, max_epochs, threads, monitor) for job in jobs]
        with tqdm(total=len(pending), desc="retrain", disable=not progress) as bar:
            remaining = list(pending)
            while remaining:
                done, remaining = ray.wait(remaining, num_returns=1)
                bar.update(len(done))
        weights = ray.get(pending)
    networks = []
    for job, best in zip(jobs, weights, strict=True):
        network = build_model(task, job.hp, len(study["data"]["classes"])).to(torch_device())
        if best is not None:
            network.load_state_dict(best)
        networks.append(network.eval())
    return networks


def _test_metrics(task: Task, model: Model, data: CachedDataset, rows: np.ndarray) -> dict[str, float]:
    """The task's metrics on the usable test images among cache `rows` (polygon skill against the mean
    training polygon)."""
    train_rows, test_rows = task.usable(data, data.indices("train")), task.usable(data, rows)
    if not len(test_rows):
        return {}
    context = TaskContext(len(data.classes), model.hp["channels"], baseline_apd(data, train_rows, test_rows))
    return evaluate_rows(task, model.network, data, test_rows, model.hp, context, LocalSession(torch_device()))


@dataclass
class Scored:
    """One model's test figures on some images, and the same figures on each bootstrap resample of them."""

    metrics: dict[str, float]
    replicates: Replicates
    rows: bytes  # which cache rows, so that only models scored on the same images are compared


class Scorer:
    """Scores each model's predictions on the test split and on its clean subset, with one set of resamples per
    set of images (so that every model, repeat and ensemble is bootstrapped on the same draws)."""

    def __init__(self, task: Task, rules: scoring.Scoring) -> None:
        self.task, self.scoring = task, rules
        self.counts: dict[bytes, np.ndarray] = {}

    def threshold(self, model: Model, data: CachedDataset) -> float | None:
        """A two-class model's operating threshold, chosen on its validation predictions."""
        if self.scoring.positive is None:
            return None
        val_rows = self.task.usable(data, data.indices("val"))
        return scoring.threshold_on(_predict(self.task, model, data, val_rows), data.labels[val_rows], self.scoring)

    def score(self, model: Model, data: CachedDataset, rows: np.ndarray, test_rows: np.ndarray,
              figures: ImageFigures) -> Scored:
        """Figures on the usable images among `rows`; `figures` are the model's per-image ones on `test_rows`."""
        usable = self.task.usable(data, rows)
        metrics = _test_metrics(self.task, model, data, rows)
        if not len(usable):
            return Scored(metrics, {}, usable.tobytes())
        train_rows = self.task.usable(data, data.indices("train"))
        subset = figures.take(np.flatnonzero(np.isin(test_rows, usable)), baseline_apd(data, train_rows, usable))
        key = usable.tobytes()
        if key not in self.counts:
            self.counts[key] = resample_counts(scoring.strata_of(data, usable), self.scoring.resamples,
                                               self.scoring.seed)
        return Scored(metrics | scoring.point_figures(subset), scoring.bootstrap(self.task, subset, self.counts[key]),
                      key)


def _combined(scored: list[Scored], prefix: str) -> tuple[dict[str, float], Scored]:
    """A trial's `<prefix>.*` columns over its repeats (mean ± std, bootstrap interval of the mean), and its
    replicates averaged over the repeats."""
    merged = Scored(scored[0].metrics, mean_replicates([s.replicates for s in scored]) if scored[0].replicates
                    else {}, scored[0].rows)
    return {**_summary([s.metrics for s in scored], prefix),
            **scoring.ci_columns(merged.replicates, scored[0].metrics, prefix)}, merged


@torch.no_grad()
def _predict(task: Task, model: Model, data: CachedDataset, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image predictions (Task.predictions) for cache `rows`, in order."""
    model.network.eval()
    size = model.hp["batch_size"]
    parts = [task.predictions(model.network(make_batch(data, rows[i : i + size], model.hp, torch_device())["image"]))
             for i in range(0, len(rows), size)]
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]} if parts else {}


@dataclass(frozen=True)
class PredictionFolder:
    """The new `predictions/` being built (`staging`, swapped in when complete) beside the current one (`kept`)."""

    staging: Path
    kept: Path

    def target(self, relative: Path) -> Path:
        """Where a PNG named `relative` (under predictions/) is written; DataError if a crafted trial id or file
        name would put it outside the folder."""
        path = inside(self.staging, self.staging / relative)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


def _views(out: PredictionFolder, data: CachedDataset, rows: np.ndarray, resize: str, intensity: str) -> list[str]:
    """The test radiographs as the model saw their geometry (resize or letterbox) and intensity window at
    VIEW_SIZE (the earlier evaluation's copy kept when it has one); returns their paths relative to the study
    folder."""
    relative = []
    for row in rows:
        name = Path("images") / f"{resize}-{intensity}" / f"{row}-{Path(data.paths[row]).stem}.png"
        target = out.target(name)
        if (out.kept / name).is_file() and not target.is_file():
            shutil.copyfile(inside(out.kept, out.kept / name), target)
        elif not target.is_file():
            try:
                image, _ = read_grey(Path(data.paths[row]), intensity)
                view = fit(image, placement(image.shape[1], image.shape[0], VIEW_SIZE, resize))
            except ImageError:
                view = cv2.resize(np.asarray(data.images[row]), (VIEW_SIZE, VIEW_SIZE), interpolation=cv2.INTER_LINEAR)
            write_png(target, view)
        relative.append((PREDICTIONS_DIR / name).as_posix())
    return relative


def _masks(out: PredictionFolder, folder: str, data: CachedDataset, rows: np.ndarray, masks: np.ndarray) -> list[str]:
    """Binary masks written as 0/255 PNGs under predictions/<folder>/; their paths relative to the study."""
    relative = []
    for row, mask in zip(rows, masks, strict=True):
        name = Path(folder) / f"{row}-{Path(data.paths[row]).stem}.png"
        write_png(out.target(name), mask.astype(np.uint8) * np.uint8(255))
        relative.append((PREDICTIONS_DIR / name).as_posix())
    return relative


def _iou(predicted: np.ndarray, true: np.ndarray) -> list[float]:
    """Per-image intersection over union of binary masks (1.0 where both are empty)."""
    inter = np.logical_and(predicted, true).sum(axis=(1, 2))
    union = np.logical_or(predicted, true).sum(axis=(1, 2))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0).tolist()


def _polygons(values: np.ndarray) -> list[list[float] | None]:
    return [None if np.isnan(v).any() else v.tolist() for v in values]


def _prediction_columns(out: PredictionFolder, study: Mapping[str, Any], model: Model, data: CachedDataset,
                        predicted: dict[str, np.ndarray], rows: np.ndarray,
                        figures: ImageFigures) -> dict[str, list[Any]]:
    """The predictions.parquet columns of one model, one entry per test image."""
    classes, n = data.classes, len(rows)
    labels = np.asarray(data.labels[rows])
    true_polygons = np.asarray(data.polygons[rows], dtype=np.float32)
    columns: dict[str, list[Any]] = {
        "study": [study["name"]] * n, "trial_id": [model.trial_id] * n, "repeat": [model.repeat] * n,
        "seed": [model.seed] * n, "image": [data.paths[r] for r in rows],
        "view": _views(out, data, rows, model.hp["resize"], model.hp["intensity"]),
        "true_class": [int(c) if c >= 0 else None for c in labels],
        "true_class_name": [classes[c] if c >= 0 else None for c in labels],
        "true_polygon": _polygons(true_polygons),
    }
    if "class" in predicted:
        columns["pred_class"] = predicted["class"].tolist()
        columns["pred_class_name"] = [classes[c] for c in predicted["class"]]
        columns["probabilities"] = predicted["probabilities"].tolist()
    if "polygon" in predicted:
        columns["pred_polygon"] = predicted["polygon"].tolist()
        columns["apd"] = _floats(figures.apd)
    if "mask" in predicted:
        true_masks = np.asarray(data.masks[rows])
        geometry = f"{model.hp['resize']}-{model.hp['image_size']}"
        columns["true_mask"] = _masks(out, f"truth/{geometry}", data, rows, true_masks)
        columns["mask"] = _masks(out, f"masks/{model.trial_id}-r{model.repeat}", data, rows, predicted["mask"])
        columns["iou"] = _iou(predicted["mask"], true_masks)
        columns["hd95"], columns["assd"] = _floats(figures.hd95), _floats(figures.assd)
    return columns


def _prediction_table(out: PredictionFolder, study: Mapping[str, Any], model: Model, data: CachedDataset,
                      predicted: dict[str, np.ndarray], figures: scoring.ImageFigures) -> pa.Table:
    """One model's predictions.parquet rows, its PNGs written into the new predictions folder."""
    rows = data.indices("test")
    columns = _prediction_columns(out, study, model, data, predicted, rows, figures)
    return pa.table({f.name: pa.array(columns.get(f.name, [None] * len(rows)), f.type) for f in PREDICTION_SCHEMA},
                    schema=PREDICTION_SCHEMA)


def _floats(values: np.ndarray | None) -> list[float | None]:
    """Per-image values as Parquet floats, NaN (undefined) as null."""
    return [] if values is None else [None if np.isnan(v) else float(v) for v in values]


def _summary(runs: list[dict[str, float]], prefix: str = "test") -> dict[str, float]:
    """`<prefix>.<metric>` for one run; `<prefix>.<metric>.mean` / `.std` (sample std) and `test.repeats` for
    several."""
    if len(runs) == 1:
        return {f"{prefix}.{name}": value for name, value in runs[0].items()}
    frame = pd.DataFrame(runs)
    summary: dict[str, float] = {"test.repeats": len(runs)}
    for name in frame.columns:
        summary[f"{prefix}.{name}.mean"] = float(frame[name].mean())
        summary[f"{prefix}.{name}.std"] = float(frame[name].std(ddof=1))
    return summary


def _is_test_column(name: str) -> bool:
    return name.startswith((f"{TEST}.", f"{TEST_CLEAN}.", PAIRED_PREFIX))


def _with_test_columns(table: pa.Table, results: Mapping[str, Mapping[str, float]]) -> pa.Table:
    """`table` with its test.* and test_clean.* columns replaced by `results` (trial id → test metrics)."""
    table = table.select([c for c in table.column_names if not _is_test_column(c)])
    ids = table.column("trial_id").to_pylist()
    names = list(dict.fromkeys(name for metrics in results.values() for name in metrics))
    for name in names:
        kind = pa.int64() if name in COUNT_COLUMNS else pa.float64()
        table = table.append_column(name, pa.array([results.get(t, {}).get(name) for t in ids], kind))
    return table


def _reloaded(study_dir: Path, study: Mapping[str, Any], row: Mapping[str, Any]) -> Model | None:
    """A trial's model from its best checkpoint, or None when it kept none."""
    if StudyFolder(study_dir).best_checkpoint(row["trial_id"]) is None:
        return None
    _, network, hp = restore_trial(study_dir, study, row["trial_id"], row, torch_device())
    return Model(row["trial_id"], 0, study["seed"], network, hp)


def _retrainings(study: Mapping[str, Any], row: Mapping[str, Any],
                 data_for: Callable[[Mapping[str, Any]], CachedDataset], repeats: int) -> list[Retraining]:
    """One retraining per seed (the study's seed, +1, ...) of a trial's configuration."""
    hp = trial_hyperparameters(study, row)
    cache_dir = str(data_for(hp).directory)
    return [Retraining(row["trial_id"], r, study["seed"] + r, hp, cache_dir) for r in range(repeats)]


def _models(study_dir: Path, study: Mapping[str, Any], rows: list[Mapping[str, Any]],
            data_for: Callable[[Mapping[str, Any]], CachedDataset], repeats: int, max_epochs: int,
            address: str | None, progress: bool, out: TextIO) -> dict[str, list[Model]]:
    """The models of each trial: its best checkpoint (one repeat, when it has one), else retrained per seed,
    every retraining of every trial at once on Ray."""
    models: dict[str, list[Model]] = {}
    jobs: list[Retraining] = []
    for row in rows:
        reloaded = _reloaded(study_dir, study, row) if repeats == 1 else None
        if reloaded is not None:
            models[row["trial_id"]] = [reloaded]
            continue
        if repeats == 1:
            print(f"Trial {row['trial_id']} kept no checkpoint: retraining it with seed {study['seed']}.", file=out)
        models[row["trial_id"]] = []
        jobs.extend(_retrainings(study, row, data_for, repeats))
    if jobs:
        for job, network in zip(jobs, _retrain_all(study, jobs, max_epochs, address, progress), strict=True):
            models[job.trial_id].append(Model(job.trial_id, job.repeat, job.seed, network, job.hp))
    return models


def evaluate_study(study_dir: Path, *, top: int = 1, repeats: int = 1, max_epochs: int | None = None,
                   address: str | None = None, progress: bool = True, out: TextIO = sys.stdout,
                   positive_class: str | None = None, target_sensitivity: float | None = None,
                   resamples: int = scoring.RESAMPLES, ensemble: int = 0, tta: str = NO_TTA) -> pd.DataFrame:
    """Evaluate the `top` best trials on the test split (see module docstring); returns their test metrics.
    Retraining runs on the Ray cluster at `address` (default: the current connection, else a local Ray).

    Two-class studies also get the operating point at a threshold chosen on validation for `positive_class`
    (`study.scoring`); `ensemble` K > 0 evaluates at least the K best trials and adds their mean (with `tta`
    "flip", of each image and its mirror) as one more row, written to ensembles.parquet."""
    from tqdm.auto import tqdm

    epochs_flag = 1 if max_epochs is None else max_epochs
    for flag, value in (("--top", top), ("--repeats", repeats), ("--max-epochs", epochs_flag)):
        if value < 1:
            raise ConfigError(f"{flag}: must be at least 1, got {value}")
    if ensemble < 0:
        raise ConfigError(f"--ensemble: must be at least 1 (0: no ensemble), got {ensemble}")
    check_tta(tta)
    study_dir = Path(study_dir)
    folder = StudyFolder(study_dir)
    study = folder.read_study()
    folder.require_finished_trial("evaluate", study)
    ranked = folder.ranked_trials(study).head(max(top, ensemble))
    if not study["data"].get("samples", {}).get("test", 1):
        print(no_test_figure(study), file=out)
        return ranked.iloc[:0]
    table = pq.read_table(folder.trials_file)
    rows = {r["trial_id"]: r for r in table.to_pylist()}
    task = create_task(study["task"])
    scorer = Scorer(task, scoring.scoring_for(study["data"]["classes"], study["seed"], positive_class,
                                              target_sensitivity, resamples))
    members = list(ranked["trial_id"][:ensemble])
    check_ensemble(study, [rows[t] for t in members], ensemble)
    caches: dict[str, CachedDataset] = {}

    def data_for(hp: Mapping[str, Any]) -> CachedDataset:
        key = cache_key(study["data"]["fingerprint"], preprocessing_of(dict(hp)))
        if key not in caches:
            caches[key] = _study_cache(study_dir, study, hp, progress)
        return caches[key]

    for trial_id in ranked["trial_id"]:  # the data of every model, checked (present, unchanged) before any is built
        data_for(trial_hyperparameters(study, rows[trial_id]))
    epochs = max_epochs or study["spec"]["max_epochs"]
    models = _models(study_dir, study, [rows[t] for t in ranked["trial_id"]], data_for, repeats, epochs, address,
                     progress, out)
    if ensemble:
        first = models[members[0]][0]
        name = ensemble_name(ensemble, tta)
        models[name] = [Model(name, 0, study["seed"], EnsembleNet([models[t][0].network for t in members], tta).eval(),
                              first.hp)]
    results: dict[str, dict[str, float]] = {}
    scored: dict[str, Scored] = {}
    evaluated: list[tuple[Model, CachedDataset, dict[str, np.ndarray], scoring.ImageFigures]] = []
    leaked: set[str] | None = None
    for trial_id in tqdm(list(models), desc="evaluate", disable=not progress):
        runs, clean_runs = [], []
        for model in models[trial_id]:
            data = data_for(model.hp)
            test_rows = data.indices("test")
            leaked = _sources_in_train(study_dir, study, data, progress) if leaked is None else leaked
            clean_rows = np.array([r for r in test_rows if data.paths[r] not in leaked], dtype=np.int64)
            predicted = _predict(task, model, data, test_rows)
            spacing = (scoring.mm_per_pixel([data.paths[r] for r in test_rows], model.hp["image_size"],
                                            model.hp["resize"]) if "mask" in predicted else None)
            figures = scoring.image_figures(predicted, data, test_rows, 0.0, scorer.scoring.positive,
                                            scorer.threshold(model, data), spacing)
            runs.append(scorer.score(model, data, test_rows, test_rows, figures))
            if _policy(study) == PUBLISHED:
                clean_runs.append(scorer.score(model, data, clean_rows, test_rows, figures))
            evaluated.append((model, data, predicted, figures))
        results[trial_id], scored[trial_id] = _combined(runs, TEST)
        results[trial_id][f"{TEST}.images"] = len(test_rows)
        if clean_runs:
            results[trial_id] |= {**_combined(clean_runs, TEST_CLEAN)[0], f"{TEST_CLEAN}.images": len(clean_rows)}
    _compare_with_best(study, results, scored)
    trial_results = {t: m for t, m in results.items() if t in rows}
    with atomic_folder(folder.predictions_dir) as staging:
        written = PredictionFolder(staging, folder.predictions_dir)
        predictions = [_prediction_table(written, study, model, data, predicted, figures)
                       for model, data, predicted, figures in evaluated]
        write_table_atomic(pa.concat_tables(predictions), folder.predictions_file)
        write_table_atomic(_with_test_columns(table, trial_results), folder.trials_file)
        if ensemble:
            write_table_atomic(_ensemble_table(results, members, tta), folder.ensembles_file)
        if not ensemble:
            folder.ensembles_file.unlink(missing_ok=True)  # an earlier ensemble's predictions were just replaced
    print(f"\nTest split ({repeats} repeat{'s' if repeats > 1 else ''} per trial; [95 % bootstrap interval], "
          f"{scorer.scoring.resamples} resamples):", file=out)
    print(_readable(results).to_string(index=False), file=out)
    for line in _comparison_lines(study, results):
        print(line, file=out)
    return pd.DataFrame([{"trial_id": t, **m} for t, m in results.items()])


def _compare_with_best(study: Mapping[str, Any], results: dict[str, dict[str, float]],
                       scored: Mapping[str, Scored]) -> None:
    """Add to each other model's results the paired comparison with the best trial on the study's metric."""
    metric, mode = study["scheduler"]["metric"].removeprefix("val_"), study["scheduler"]["mode"]
    best = next(iter(results))
    value = _point(results[best], metric)
    for trial_id, found in scored.items():
        if trial_id != best and found.rows == scored[best].rows and value is not None:
            other = _point(results[trial_id], metric)
            if other is not None:
                results[trial_id] |= scoring.paired_columns(scored[best].replicates, found.replicates, value, other,
                                                            metric, mode == "max")


def _point(metrics: Mapping[str, float], metric: str) -> float | None:
    """A test metric's value: of the one run, or the mean over repeats."""
    return metrics.get(f"{TEST}.{metric}", metrics.get(f"{TEST}.{metric}.mean"))


def _comparison_lines(study: Mapping[str, Any], results: Mapping[str, Mapping[str, float]]) -> list[str]:
    """One line per model compared with the best trial: the difference, its interval, how often it wins."""
    metric = study["scheduler"]["metric"].removeprefix("val_")
    best = next(iter(results))
    lines = []
    for trial_id, metrics in results.items():
        prefix = f"{PAIRED_PREFIX}{metric}"
        if f"{prefix}.difference" in metrics:
            lines.append(f"{trial_id} vs best {best}: test {metric} difference {metrics[f'{prefix}.difference']:+.4g} "
                         f"[{metrics[f'{prefix}.ci_low']:+.3g}, {metrics[f'{prefix}.ci_high']:+.3g}], better in "
                         f"{100 * metrics[f'{prefix}.share_better']:.1f} % of resamples")
    return ([f"\nPaired bootstrap against the best trial ({metric}, same resamples):", *lines] if lines else [])


def _ensemble_table(results: Mapping[str, Mapping[str, float]], members: list[str], tta: str) -> pa.Table:
    """ensembles.parquet: the ensemble's name, members, test-time augmentation and test columns."""
    name = next(t for t in results if t.startswith("ensemble-"))
    metrics = results[name]
    columns: dict[str, pa.Array] = {"ensemble": pa.array([name]), "members": pa.array([",".join(members)]),
                                    "tta": pa.array([tta])}
    for column, value in metrics.items():
        columns[column] = pa.array([value], pa.int64() if column in COUNT_COLUMNS else pa.float64())
    return pa.table(columns)


def _policy(study: Mapping[str, Any]) -> str:
    return study["data"].get("splits", {}).get("policy", PUBLISHED)


def _sources_in_train(study_dir: Path, study: Mapping[str, Any], data: CachedDataset, progress: bool) -> set[str]:
    """The images whose source group has an image in train: read from the study's splits.parquet, or found by
    hashing the cached images for a study that predates it."""
    recorded = StudyFolder(study_dir).splits_file
    if recorded.is_file():
        found = pq.read_table(recorded, columns=["image", "source_in_train"]).to_pydict()
        return {image for image, flag in zip(found["image"], found["source_in_train"], strict=True) if flag}
    from raysearch.data.sources import source_groups

    index_file = StudyFolder(study_dir).image_index_file(study["data"]["root"])
    groups = source_groups(data.paths, index_file=index_file, progress=progress)
    flags = in_train_source([SPLITS[s] for s in data.splits], groups)
    return {path for path, flag in zip(data.paths, flags, strict=True) if flag}


def _readable(results: Mapping[str, Mapping[str, float]]) -> pd.DataFrame:
    """The headline test metrics per trial as text, `mean ± std` over repeats and `[low, high]` the bootstrap
    interval (per-class ones left out), on the whole test split and, when it is smaller, on its clean subset
    (`clean <metric>`), with both sizes."""
    rows = []
    for trial_id, metrics in results.items():
        row = {"trial_id": trial_id}
        clean = metrics.get(f"{TEST_CLEAN}.images") not in (None, metrics.get(f"{TEST}.images"))
        for prefix, label in ((TEST, ""), (TEST_CLEAN, "clean ")) if clean else ((TEST, ""),):
            if f"{prefix}.images" in metrics:
                row[f"{label}images"] = str(metrics[f"{prefix}.images"])
            for column in headline_columns(metrics, f"{prefix}."):
                if not column.endswith(".std"):
                    base = column.removesuffix(".mean")
                    spread = metrics.get(base + ".std") if column.endswith(".mean") else None
                    low, high = metrics.get(base + ".ci_low"), metrics.get(base + ".ci_high")
                    row[label + metric_name(column)] = (f"{metrics[column]:.4g}"
                                                        + (f" ± {spread:.2g}" if spread is not None else "")
                                                        + (f" [{low:.3g}, {high:.3g}]" if low is not None else ""))
        rows.append(row)
    return pd.DataFrame(rows)


def no_test_figure(study: Mapping[str, Any]) -> str:
    """Why a study has no test figure, said instead of a silent end."""
    if not study["spec"].get("test_split", True):
        return "No test figure: the study ran with --no-test-split, so it has no test images."
    return "No test figure: the study's data has no test images."
