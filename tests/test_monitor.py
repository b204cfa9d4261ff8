"""One monitor for a study: the space's `metric` and `mode` decide each trial's best epoch, its early stopping,
its best weights, what Tune and Optuna are told and the ranking, all alike (here `metric: val_loss, mode: min`,
which the task's own score does not follow)."""

from __future__ import annotations

import math
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import cached_phantom

from raysearch.core.layout import StudyFolder
from raysearch.data.cache import CachedDataset, cache_key, load_cache
from raysearch.data.phantom import PhantomSpec, write_phantom
from raysearch.inference.export import export_model
from raysearch.inference.restore import restore_trial
from raysearch.study.notebook import load_study
from raysearch.tasks import create_task
from raysearch.tasks.base import TaskContext
from raysearch.training.callbacks import BestWeights, EarlyStopping, Monitor, Reporting
from raysearch.training.checkpoints import read_weights
from raysearch.training.hparams import defaults, preprocessing_of
from raysearch.training.session import LocalSession
from raysearch.training.trainer import LoopSettings, train
from raysearch.training.validation import baseline_apd, evaluate

LOSS = Monitor("val_loss", "min")
LOSS_SPACE = """task: classification
metric: val_loss
mode: min
parameters:
  lr: {type: float, low: 5.0e-3, high: 5.0e-2, log: true}
fixed: {model: vgg, conv_layers: 2, width: 8, batch_size: 8, patience: 0}
"""


@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory) -> CachedDataset:
    return cached_phantom(tmp_path_factory, PhantomSpec(24, 8, 4, image_size=32))


def _hp(**changes: Any) -> dict[str, Any]:
    return {**defaults(create_task("classification").hyperparameters), "image_size": 32, "conv_layers": 2, "width": 8,
            "batch_size": 8, "lr": 0.05, **changes}


def _running_best(values: list[float], mode: str) -> list[bool]:
    """Whether each value beats every earlier one (NaN never does)."""
    flags, best = [], None
    for value in values:
        better = not math.isnan(value) and (best is None or (value > best if mode == "max" else value < best))
        flags.append(better)
        best = value if better else best
    return flags


def test_a_val_loss_monitor_decides_improvement_early_stopping_and_the_best_weights(cached: CachedDataset) -> None:
    session = LocalSession()
    best = BestWeights(LOSS)
    trainer = train(_hp(), LoopSettings("classification", str(cached.directory), 5, 0, monitor=LOSS), session,
                    callbacks=[EarlyStopping(LOSS, 2), best, Reporting(LOSS)])
    losses = [epoch["val_loss"] for epoch in session.history]
    assert session.improved == _running_best(losses, "min")
    assert best.best.value == min(losses)
    stale = [len(flags) - 1 - max(i for i, f in enumerate(flags) if f) for flags in
             (session.improved[: n + 1] for n in range(len(losses)))]
    assert [e["stopped_early"] for e in session.history] == [float(s >= 2) for s in stale]
    assert trainer.epoch == len(losses) and (len(losses) == 5 or stale[-1] >= 2)
    # the kept weights are those of the lowest-loss epoch: validating them gives that epoch's loss again
    trainer.model.load_state_dict(best.weights)
    assert trainer.validate()["loss"] == pytest.approx(min(losses), rel=1e-5)


def test_without_a_monitor_the_trainer_follows_the_task_s_own_score(cached: CachedDataset) -> None:
    session = LocalSession()
    trainer = train(_hp(), LoopSettings("classification", str(cached.directory), 3, 0), session)
    assert trainer.monitor == Monitor("val_score", "max")
    assert session.improved == _running_best([e["val_score"] for e in session.history], "max")


def two_class_folders(phantom: Path, out: Path) -> Path:
    """The phantom radiographs as a two-class class-folder set (`a`: even phantom classes, `b`: odd ones)."""
    for image in sorted(phantom.glob("*/images/*.png")):
        split = image.parent.parent.name
        label = image.parent.parent / "labels" / f"{image.stem}.txt"
        name = "ab"[int(label.read_text().split()[0]) % 2]
        (out / split / name).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image, out / split / name / image.name)
    return out


@pytest.mark.slow
def test_a_val_loss_study_ranks_exports_and_tells_optuna_by_val_loss(tmp_path: Path) -> None:
    """Also a two-class study: its test figures carry the operating point at the threshold chosen on validation."""
    phantom = write_phantom(tmp_path / "phantom", PhantomSpec(24, 8, 8, image_size=32), progress=False)
    data = two_class_folders(phantom, tmp_path / "two-class")
    space = tmp_path / "loss.yaml"
    space.write_text(LOSS_SPACE)
    results = tmp_path / "results"
    done = subprocess.run([sys.executable, "-m", "raysearch", "run", "classification", "--data", str(data),
                           "--space", str(space), "--trials", "2", "--max-epochs", "3", "--image-size", "32",
                           "--results", str(results), "--name", "loss", "--quiet"],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    study = load_study(results / "loss")
    assert (study.metric, study.mode) == ("val_loss", "min")
    trials = pd.read_parquet(study.directory / "trials.parquet").set_index("trial_id")
    epochs = pd.read_parquet(study.directory / "epochs.parquet")
    for trial_id, history in epochs.groupby("trial_id"):
        lowest = history.loc[history["val_loss"].idxmin()]
        assert trials.loc[trial_id, "best_epoch"] == lowest["epoch"]
        assert trials.loc[trial_id, "metric.val_loss.best"] == pytest.approx(lowest["val_loss"])
    ranked = study.ranked
    assert list(ranked["metric.val_loss.best"]) == sorted(ranked["metric.val_loss.best"])
    with sqlite3.connect(study.directory / "optuna.db") as db:
        values = sorted(v for (v,) in db.execute("SELECT value FROM trial_values"))
    assert values == pytest.approx(sorted(trials["metric.val_loss.best"]))

    best = study.best_trial
    folder = StudyFolder(study.directory)
    exported = export_model(study.directory)
    weights = read_weights(exported / "weights.pt", torch.device("cpu"))
    saved = read_weights(folder.best_checkpoint(best["trial_id"]), torch.device("cpu"))
    assert weights.keys() == saved.keys() and all(torch.equal(weights[k], saved[k]) for k in weights)
    # and those weights are the lowest-val_loss epoch's: validating them gives that loss
    spec = folder.read_study()
    task, network, hp = restore_trial(study.directory, spec, best["trial_id"], best.to_dict(), torch.device("cpu"))
    cache = load_cache(folder.cache_root / cache_key(spec["data"]["fingerprint"], preprocessing_of(hp)))
    train_rows, val_rows = cache.indices("train"), cache.indices("val")
    context = TaskContext(len(cache.classes), hp["channels"], baseline_apd(cache, train_rows, val_rows))
    found = evaluate(task, network, cache, np.asarray(val_rows), hp, context, LocalSession())
    assert found["loss"] == pytest.approx(best["metric.val_loss.best"], rel=1e-4)

    # the two-class operating point (positive class: the second, `b`) recomputed from predictions.parquet
    predictions = pd.read_parquet(study.directory / "predictions.parquet")
    predictions = predictions[predictions["trial_id"] == best["trial_id"]]
    called = np.stack(predictions["probabilities"])[:, 1] >= best["test.threshold"]
    positive = predictions["true_class_name"].to_numpy() == "b"
    assert 0 < best["test.threshold"] < 1
    assert best["test.op_sensitivity"] == pytest.approx((called & positive).sum() / positive.sum())
    assert best["test.op_specificity"] == pytest.approx((~called & ~positive).sum() / (~positive).sum())
