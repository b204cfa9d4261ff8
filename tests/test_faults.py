"""Surviving faults: a Train worker killed mid-trial is replaced and the trial continues from its last
checkpoint; a trial that fails every attempt is recorded as FAILED with its error and the study goes on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from ray_processes import titled, wait_for

from raysearch.data.phantom import PhantomSpec, write_phantom
from raysearch.study.run import run_study
from raysearch.study.spec import StudySpec

WORKER = "ray::RayTrainWorker"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small phantom dataset."""
    return write_phantom(tmp_path_factory.mktemp("faults") / "phantom",
                         PhantomSpec(train=64, val=16, test=8, image_size=64), progress=False)


@pytest.mark.slow
def test_trial_that_keeps_failing_is_recorded_and_the_study_goes_on(data: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    space = tmp_path / "space.yaml"
    # inception_v3 is a valid model name (the space passes validation) that cannot run on 32 px images
    space.write_text("task: multitask\nparameters:\n  model: {type: categorical, choices: [vgg, inception_v3]}\n"
                     "  lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\nfixed:\n  width: 8\n")
    spec = StudySpec(task="multitask", data=str(data), space=str(space), name="failing", results=str(tmp_path),
                     trials=4, max_epochs=2, image_size=32, max_failures=1)
    outcome = run_study(spec, progress=False, out=open(os.devnull, "w"))

    trials = pq.read_table(outcome.directory / "trials.parquet").to_pandas().set_index("trial_id")
    assert len(trials) == 4
    failed = trials[trials["param.model"] == "inception_v3"]
    assert len(failed) >= 1, "seed 0 samples the invalid model at least once"
    assert (failed["status"] == "FAILED").all() and (failed["epochs"] == 0).all()
    assert failed["error"].str.contains("ConfigError: image_size: model 'inception_v3' cannot run on 32x32").all()
    trained = trials[trials["param.model"] == "vgg"]
    assert len(trained) >= 1 and trained["status"].isin(["COMPLETED", "PRUNED"]).all()
    assert trained["error"].isna().all()


@pytest.mark.slow
def test_killed_train_worker_is_replaced_and_the_trial_continues(data: Path, tmp_path: Path) -> None:
    """SIGKILL one of a 2-worker trial's Train workers once its first checkpoint is registered: Ray Train starts
    a new worker group from that checkpoint, so every epoch is reported exactly once and the trial completes."""
    environment = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    space = tmp_path / "space.yaml"
    space.write_text("task: multitask\nparameters:\n  lr: {type: float, low: 1.0e-3, high: 3.0e-3}\n"
                     "fixed: {model: vgg, conv_layers: 3, width: 8, patience: 0}\n")
    command = [sys.executable, "-m", "raysearch", "run", "multitask", "--data", str(data), "--space", str(space),
               "--trials", "1", "--max-epochs", "8", "--image-size", "32", "--workers-per-trial", "2",
               "--results", str(tmp_path), "--name", "killed", "--quiet"]
    log = tmp_path / "run.log"
    with log.open("w") as output:
        run = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=environment)
    try:
        wait_for(lambda: any((tmp_path / "killed" / "train").glob("*/checkpoint_manager_snapshot.json"))
                 or run.poll() is not None, 600, "the trial's first registered checkpoint")
        first = titled(run.pid, WORKER)
        assert len(first) == 2, f"expected the trial's two Train workers below the driver, found {first}"
        os.kill(first[1], signal.SIGKILL)
        wait_for(lambda: set(titled(run.pid, WORKER)) - set(first) or run.poll() is not None, 300,
                 "a replacement worker")
        replaced = set(titled(run.pid, WORKER)) - set(first)
        run.wait(timeout=600)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, log.read_text()[-4000:]
    assert replaced, "Ray Train started new workers after the kill"

    study = tmp_path / "killed"
    trials = pq.read_table(study / "trials.parquet").to_pandas()
    assert trials["status"].tolist() == ["COMPLETED"] and trials["epochs"].tolist() == [8]
    trial_id = trials["trial_id"][0]
    reported = [json.loads(line)["epoch"] for line in (study / "ray" / "killed" / trial_id / "result.json")
                .read_text().splitlines()]
    assert reported == list(range(1, 9)), "continued from the checkpoint: no epoch trained or reported twice"
    epochs = pq.read_table(study / "epochs.parquet").to_pandas()
    assert epochs["epoch"].tolist() == list(range(1, 9))
