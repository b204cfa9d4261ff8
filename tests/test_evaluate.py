"""Test-set evaluation, export and predict on a real finished study (see conftest.tiny_study)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml
from ray_processes import wait_for

from raysearch.cli import main
from raysearch.data.preprocess import placement
from raysearch.errors import ConfigError, DataError
from raysearch.inference.predict import polygon_to_source
from raysearch.study.evaluate import evaluate_study

TEST_IMAGES = 16


def raysearch(*args: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run([sys.executable, "-m", "raysearch", *args], capture_output=True, text=True, timeout=900,
                          env=environment)


def best_trial(study: Path) -> str:
    trials = pd.read_parquet(study / "trials.parquet")
    return trials.sort_values("metric.val_score.best", ascending=False)["trial_id"].iloc[0]


def class_accuracy(predictions: pd.DataFrame) -> float:
    return float((predictions["true_class"] == predictions["pred_class"]).mean())


@pytest.mark.slow
def test_run_evaluates_the_best_trial_on_the_test_split(tiny_study) -> None:
    study = tiny_study.study
    assert "Test split" in tiny_study.stdout and "Best model exported" in tiny_study.stdout
    trials = pd.read_parquet(study / "trials.parquet").set_index("trial_id")
    best = best_trial(study)
    for column in ("test.score", "test.accuracy", "test.apd", "test.loss"):
        assert trials[column].notna().tolist() == [t == best for t in trials.index], column

    predictions = pd.read_parquet(study / "predictions.parquet")
    assert len(predictions) == TEST_IMAGES
    assert set(predictions["trial_id"]) == {best} and set(predictions["repeat"]) == {0}
    assert predictions["image"].is_unique
    assert all(Path(p).parent.parent.name == "test" for p in predictions["image"])
    probabilities = np.stack(predictions["probabilities"])
    assert probabilities.shape == (TEST_IMAGES, 6) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-4)
    assert (probabilities.argmax(axis=1) == predictions["pred_class"]).all()
    assert np.stack(predictions["true_polygon"]).shape == (TEST_IMAGES, 8)
    assert np.stack(predictions["pred_polygon"]).shape == (TEST_IMAGES, 8)
    assert predictions["mask"].isna().all() and predictions["iou"].isna().all()
    # The per-image predictions add up to the reported test metrics.
    assert class_accuracy(predictions) == pytest.approx(trials.loc[best, "test.accuracy"])
    assert predictions["apd"].mean() == pytest.approx(trials.loc[best, "test.apd"], rel=1e-4)
    for view in predictions["view"]:
        assert not Path(view).is_absolute()
        image = cv2.imread(str(study / view), cv2.IMREAD_GRAYSCALE)
        assert image is not None and image.shape == (256, 256)

    config = yaml.safe_load((study / "model" / "config.yaml").read_text())
    assert config["trial_id"] == best and config["task"] == "multitask" and len(config["classes"]) == 6
    assert config["preprocessing"]["image_size"] == 32
    assert config["hyperparameters"]["lr"] == trials.loc[best, "param.lr"]
    assert config["hyperparameters"]["conv_layers"] == trials.loc[best, "param.conv_layers"]
    assert config["test"]["test.score"] == pytest.approx(trials.loc[best, "test.score"])
    assert (study / "model" / "weights.pt").is_file()


@pytest.mark.slow
def test_evaluate_reloads_top_two_then_retrains_three_seeds(tiny_study, tiny_study_copy) -> None:
    study = tiny_study_copy.study
    original = pd.read_parquet(tiny_study.study / "predictions.parquet")

    evaluate_study(study, top=2, progress=False)
    reloaded = pd.read_parquet(study / "predictions.parquet")
    assert len(reloaded) == 2 * TEST_IMAGES and reloaded["trial_id"].nunique() == 2
    again = reloaded[reloaded["trial_id"] == best_trial(study)].reset_index(drop=True)
    # The copied folder's checkpoints give exactly the predictions of the original run.
    assert np.allclose(np.stack(again["probabilities"]), np.stack(original["probabilities"]), atol=1e-6)
    assert pd.read_parquet(study / "trials.parquet")["test.score"].notna().all()

    done = raysearch("evaluate", str(study), "--top", "2", "--repeats", "3", "--max-epochs", "1", "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "3 repeats per trial" in done.stdout
    trials = pd.read_parquet(study / "trials.parquet")
    assert "test.score" not in trials.columns  # replaced by mean and spread
    assert (trials["test.repeats"] == 3).all()
    assert (trials["test.score.std"] >= 0).all() and trials["test.score.mean"].notna().all()
    predictions = pd.read_parquet(study / "predictions.parquet")
    assert len(predictions) == 2 * 3 * TEST_IMAGES
    for trial_id, group in predictions.groupby("trial_id"):
        assert sorted(group["seed"].unique()) == [0, 1, 2] and sorted(group["repeat"].unique()) == [0, 1, 2]
        per_seed = group.groupby("seed").apply(class_accuracy, include_groups=False)
        row = trials.set_index("trial_id").loc[trial_id]
        assert per_seed.mean() == pytest.approx(row["test.accuracy.mean"])
        assert per_seed.std(ddof=1) == pytest.approx(row["test.accuracy.std"])


@pytest.mark.slow
def test_predict_labels_new_radiographs(tiny_study, tmp_path: Path) -> None:
    study = tiny_study.study
    predictions = pd.read_parquet(study / "predictions.parquet").head(2)
    images = predictions["image"].tolist()
    out = tmp_path / "labelled"
    done = raysearch("predict", str(study), *images, "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("class ") == 2
    found = json.loads((out / "predictions.json").read_text())
    assert [f["image"] for f in found] == images
    for item, (_, expected) in zip(found, predictions.iterrows(), strict=True):
        overlay = cv2.imread(item["overlay"])
        assert overlay.shape == (64, 64, 3)
        assert item["class_name"] == expected["pred_class_name"]
        assert list(item["probabilities"].values()) == pytest.approx(list(expected["probabilities"]), abs=1e-5)
        # Phantom images are square: the polygon in image coordinates is the model's own output.
        assert item["polygon"] == pytest.approx(list(expected["pred_polygon"]), abs=1e-5)


def test_polygon_maps_back_through_letterbox() -> None:
    where = placement(300, 150, 64, "letterbox")
    source = np.array([[0.1, 0.2], [0.9, 0.25], [0.8, 0.9], [0.15, 0.7]], dtype=np.float32)
    assert polygon_to_source(where.points(source, 300, 150).reshape(-1), where, 300, 150) == pytest.approx(
        source.reshape(-1).tolist(), abs=1e-5)


@pytest.mark.slow
def test_predict_refuses_unreadable_image(tiny_study, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    assert main(["predict", str(tiny_study.study / "model"), str(broken), "--out", str(tmp_path / "o")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and str(broken) in error[0]


def test_evaluate_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a study folder"):
        evaluate_study(tmp_path)
    with pytest.raises(ConfigError, match="--repeats: must be at least 1"):
        evaluate_study(tmp_path, repeats=0)


@pytest.mark.slow
def test_evaluate_repeats_retrain_side_by_side_as_ray_tasks(tiny_study_copy, monkeypatch: pytest.MonkeyPatch) -> None:
    """`evaluate --repeats 2` trains both seeds in Ray worker processes (not in this one), at the same time,
    each with the resources of one of the study's workers."""
    import ray
    from ray.util.state import list_tasks

    study = tiny_study_copy.study
    trial_id = best_trial(study)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    dashboard = "http://" + ray.init(num_cpus=2, configure_logging=False).dashboard_url
    try:
        evaluate_study(study, top=1, repeats=2, max_epochs=1, progress=False)
        names = {f"retrain {trial_id} seed {seed}" for seed in (0, 1)}

        def finished() -> list:
            tasks = [t for t in list_tasks(address=dashboard, detail=True, limit=1000) if t.name in names]
            return tasks if len(tasks) == 2 and all(t.state == "FINISHED" for t in tasks) else []

        wait_for(lambda: bool(finished()), 60, "Ray's task events of both retrainings")
        tasks = finished()
    finally:
        ray.shutdown()
    assert all(t.worker_pid and t.worker_pid != os.getpid() for t in tasks), "trained outside Ray's workers"
    assert len({t.worker_pid for t in tasks}) == 2, "both seeds trained in the same worker, one after the other"
    assert all(t.required_resources == {"CPU": 1.0} for t in tasks), [t.required_resources for t in tasks]
    first, second = sorted(tasks, key=lambda t: t.start_time_ms)
    assert second.start_time_ms < first.end_time_ms, "the second seed waited for the first"
    trials = pd.read_parquet(study / "trials.parquet").set_index("trial_id")
    assert trials.loc[trial_id, "test.repeats"] == 2 and trials.loc[trial_id, "test.score.std"] >= 0
