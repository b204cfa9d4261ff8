"""Ray Tune's own result tools on a raysearch study: `ExperimentAnalysis` and `ResultGrid` find each trial's
best checkpoint (its best weights), for one-worker and 2-worker trials alike, and Ray's TensorBoard, JSON and
CSV logs sit inside the study folder; a 2-worker trial records exactly the epochs Tune got."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from conftest import TinyStudy

from raysearch.core.columns import rank_trials
from raysearch.core.layout import BEST_FILE, STOPPED_MARKER, TRAIN_DIR
from raysearch.training.session import BEST_ONLY_PREFIX


def _assert_best_checkpoint_is_the_exported_model(tiny_study: TinyStudy) -> None:
    """Tune's best trial is raysearch's, and its best checkpoint holds the weights `raysearch run` exported."""
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
    assert metrics["epoch"] == trials.set_index("trial_id").loc[best_id, "best_epoch"]


@pytest.mark.slow
def test_experiment_analysis_finds_the_best_trials_best_checkpoint(tiny_study: TinyStudy) -> None:
    _assert_best_checkpoint_is_the_exported_model(tiny_study)


@pytest.mark.slow
def test_experiment_analysis_finds_the_best_checkpoint_of_two_worker_trials(two_worker_study: TinyStudy) -> None:
    resources = yaml.safe_load((two_worker_study.study / "study.yaml").read_text())["resources"]
    assert resources["workers_per_trial"] == 2, "the trials ran on 2 Ray Train workers"
    _assert_best_checkpoint_is_the_exported_model(two_worker_study)
    leftovers = list((two_worker_study.study / "train").glob(f"*/.{BEST_ONLY_PREFIX}*"))
    assert not leftovers, f"the best-weights folders handed to Tune are removed once reported: {leftovers}"


@pytest.mark.slow
def test_ray_logs_are_inside_the_study_folder(tiny_study: TinyStudy) -> None:
    experiment = tiny_study.study / "ray" / tiny_study.study.name
    trials = pq.read_table(tiny_study.study / "trials.parquet").column("trial_id").to_pylist()
    for trial_id in trials:
        folder = experiment / trial_id
        assert list(folder.glob("events.out.tfevents.*")), f"no TensorBoard events for {trial_id}"
        assert (folder / "result.json").is_file() and (folder / "progress.csv").is_file()


@pytest.mark.slow
def test_two_worker_trials_record_exactly_the_epochs_tune_got(two_worker_study: TinyStudy) -> None:
    """Ray Train workers wait for Tune's verdict on each epoch: a trial that ASHA stopped trained no further epoch
    (PRUNED, its record Tune's), and every trial's epochs.parquet rows are the epochs in Tune's result log."""
    study = two_worker_study.study
    trials = pq.read_table(study / "trials.parquet").to_pandas().set_index("trial_id")
    epochs = pq.read_table(study / "epochs.parquet").to_pandas()
    assert len(trials) == 3
    for trial_id, trial in trials.iterrows():
        log = (study / "ray" / study.name / trial_id / "result.json").read_text().splitlines()
        tune_got = [json.loads(line)["epoch"] for line in log]
        assert epochs.loc[epochs["trial_id"] == trial_id, "epoch"].tolist() == tune_got, trial_id
        if (study / TRAIN_DIR / trial_id / STOPPED_MARKER).is_file() and tune_got[-1] < 2:
            assert trial["status"] == "PRUNED", (trial_id, tune_got)
