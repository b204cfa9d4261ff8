"""Ray Tune's own result tools on a raysearch study: `ExperimentAnalysis` and `ResultGrid` find each trial's
best checkpoint (its best weights), and Ray's TensorBoard, JSON and CSV logs sit inside the study folder."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import torch
from conftest import TinyStudy

from raysearch.layout import BEST_FILE, rank_trials


@pytest.mark.slow
def test_experiment_analysis_finds_the_best_trials_best_checkpoint(tiny_study: TinyStudy) -> None:
    from ray.tune import ExperimentAnalysis, ResultGrid

    experiment = tiny_study.study / "ray" / tiny_study.study.name
    trials = pq.read_table(tiny_study.study / "trials.parquet").to_pandas()
    best_id = rank_trials(trials, "metric.val_score.best", "max")["trial_id"].iloc[0]

    analysis = ExperimentAnalysis(str(experiment))
    best_trial = analysis.get_best_trial("val_score", "max", scope="all")
    assert best_trial.trial_id == best_id
    checkpoint = analysis.get_best_checkpoint(best_trial, "val_score", "max")
    assert checkpoint is not None, "Tune found no checkpoint for the best trial"
    assert checkpoint.path.startswith(str(experiment / best_id))

    # The checkpoint holds the weights of the trial's best epoch: the ones `raysearch run` exported.
    found = torch.load(f"{checkpoint.path}/{BEST_FILE}", map_location="cpu", weights_only=True)["model"]
    exported = torch.load(tiny_study.study / "model" / "weights.pt", map_location="cpu", weights_only=True)["model"]
    assert found.keys() == exported.keys()
    assert all(torch.equal(found[name], exported[name]) for name in found)

    result = ResultGrid(analysis).get_best_result("val_score", "max", scope="all")
    assert result.checkpoint is not None and result.checkpoint.path == checkpoint.path
    [(kept, metrics)] = result.best_checkpoints
    assert kept.path == checkpoint.path
    assert metrics["val_score"] == pytest.approx(trials.set_index("trial_id").loc[best_id, "metric.val_score.best"])


@pytest.mark.slow
def test_ray_logs_are_inside_the_study_folder(tiny_study: TinyStudy) -> None:
    experiment = tiny_study.study / "ray" / tiny_study.study.name
    trials = pq.read_table(tiny_study.study / "trials.parquet").column("trial_id").to_pylist()
    for trial_id in trials:
        folder = experiment / trial_id
        assert list(folder.glob("events.out.tfevents.*")), f"no TensorBoard events for {trial_id}"
        assert (folder / "result.json").is_file() and (folder / "progress.csv").is_file()
