"""`raysearch resume`: a study whose driver was killed (SIGKILL) mid-trial continues where it stopped, and
its Parquet files end with every trial exactly once, each with its full epoch history."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from ray_processes import alive, kill_all, kill_driver_when, title, wait_for
from test_search_choices import SPACE, assert_optuna_matches_parquet

from raysearch.core.layout import BEST_FILE, STATE_FILE, latest_checkpoint, read_history
from raysearch.data.phantom import PhantomSpec, write_phantom
from raysearch.errors import ConfigError
from raysearch.search.history import has_finished
from raysearch.study.run import resume_study

TRIALS, EPOCHS = 4, 6


def _environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


def _reported(trial_dir: Path) -> list[int]:
    """The epochs in Tune's result log of a trial, in order. Tune keeps this log across a restart (the trial
    holds a Tune checkpoint of its best weights), but the epochs reported last before a driver is killed may
    be missing from it: the log is copied into the study folder from Ray's staging folder only now and then.
    The epoch history raysearch keeps is the one in the trial's checkpoint."""
    path = trial_dir / "result.json"
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines()] if path.is_file() else []


def _running(experiment: Path) -> set[str]:
    """The trials that Tune's latest experiment snapshot records as RUNNING."""
    snapshots = sorted(experiment.glob("experiment_state-*.json"))
    try:
        trials = json.loads(snapshots[-1].read_text())["trial_data"] if snapshots else []
    except ValueError:
        return set()
    states = [json.loads(trial[0]) for trial in trials]
    return {state["trial_id"] for state in states if state["status"] == "RUNNING"}


def _checkpointed(study: Path, trial_id: str) -> list[int]:
    """The epochs in the history kept in a trial's latest checkpoint (written as each epoch ends)."""
    return [epoch["epoch"] for epoch in read_history(latest_checkpoint(study / "train" / trial_id))]


def _mid_trial(study: Path, experiment: Path) -> bool:
    """Whether a trial that Tune's snapshot records as running has checkpointed 2 to 4 of its 6 epochs."""
    return any(2 <= len(_checkpointed(study, trial_id)) <= EPOCHS - 2 for trial_id in _running(experiment))


def _thinned(study: Path) -> list[str]:
    """The trials whose latest checkpoint holds their best weights but no resumable state any more."""
    folders = [f for f in (study / "train").iterdir() if f.is_dir()] if (study / "train").is_dir() else []
    return [f.name for f in folders if (checkpoint := latest_checkpoint(f)) is not None
            and (checkpoint / BEST_FILE).is_file() and not (checkpoint / STATE_FILE).exists()]


def test_resume_refuses_a_folder_that_is_not_a_study(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no study.yaml"):
        resume_study(tmp_path)


@pytest.mark.slow
def test_driver_killed_mid_study_then_resumed(tmp_path: Path) -> None:
    # Epochs of about 2 s here (128 px, 480 images): slow enough that Tune's 2 s snapshots see a trial
    # mid-way, whatever the machine's load. With --keep-checkpoints best, a trial gives up its resumable state
    # as soon as it ends: the driver is killed once one has, while a later trial is mid-way.
    data = write_phantom(tmp_path / "phantom", PhantomSpec(train=480, val=16, test=8, image_size=128),
                         progress=False)
    results, study = tmp_path / "results", tmp_path / "results" / "resumed"
    experiment = study / "ray" / "resumed"
    space = tmp_path / "space.yaml"
    space.write_text("task: multitask\nparameters:\n  lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n"
                     "  width: {type: categorical, choices: [8, 16]}\n"
                     "fixed: {model: vgg, conv_layers: 3, patience: 0}\n")
    command = [sys.executable, "-m", "raysearch", "run", "multitask", "--data", str(data), "--space", str(space),
               "--trials", str(TRIALS), "--max-epochs", str(EPOCHS), "--image-size", "128", "--concurrency", "1",
               "--seed", "3", "--results", str(results), "--name", "resumed", "--quiet", "--keep-checkpoints", "best"]
    local_ray = kill_driver_when(command, lambda: _mid_trial(study, experiment) and _thinned(study),
                                 "a trial in progress after one that ended gave up its state", _environment())
    interrupted = {trial_id: _checkpointed(study, trial_id) for trial_id in _running(experiment)}
    assert interrupted, "a trial was running when the driver was killed"
    assert not set(_thinned(study)) & set(interrupted), "a running trial keeps its resumable state"
    assert not (study / "trials.parquet").exists()

    # The local Ray instance that the killed driver started dies with it: its GCS and raylet exit at once
    # (Ray's agents linger for a minute or two; stop them here rather than leave them to other tests).
    core = [pid for pid, name in local_ray.items() if name.split(" ")[0].endswith(("gcs_server", "raylet"))]
    assert core, "the driver had started a local Ray instance"
    wait_for(lambda: not any(alive(pid) for pid in core), 60, "the killed driver's GCS and raylet to exit")
    kill_all([pid for pid, name in local_ray.items() if title(pid) == name])

    again = subprocess.run(command, capture_output=True, text=True, env=_environment(), timeout=300)
    assert again.returncode == 2 and "raysearch resume" in again.stderr

    resumed = subprocess.run([sys.executable, "-m", "raysearch", "resume", str(study)],
                             capture_output=True, text=True, env=_environment(), timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    # The resume's default console, although the run was --quiet: raysearch's per-trial lines, none of Tune's own.
    assert re.search(r"^trial \w+  epoch \d/6  val_score \S+ \(best \S+\)", resumed.stdout, re.MULTILINE)
    assert "Trial status" not in resumed.stdout and "Configuration for experiment" not in resumed.stdout

    trials = pq.read_table(study / "trials.parquet").to_pandas()
    epochs = pq.read_table(study / "epochs.parquet").to_pandas()
    assert len(trials) == TRIALS and trials["trial_id"].is_unique
    assert set(trials["status"]) <= {"COMPLETED", "PRUNED"}
    assert sorted(_thinned(study)) == sorted(trials["trial_id"]), "best: every trial keeps its best weights only"
    for trial_id, group in epochs.groupby("trial_id"):
        count = trials.set_index("trial_id").loc[trial_id, "epochs"]
        assert group["epoch"].tolist() == list(range(1, count + 1)), trial_id
    assert set(epochs["trial_id"]) == set(trials["trial_id"])
    for trial_id, before in interrupted.items():
        reported = _reported(experiment / trial_id)
        after = [epoch for epoch in reported if epoch > len(before)]
        assert reported == sorted(set(reported)), f"{trial_id} trained an epoch twice: {reported}"
        assert after and after[0] == len(before) + 1, f"{trial_id} continued from its checkpoint: {reported}"
        history = epochs[epochs["trial_id"] == trial_id]["epoch"].tolist()
        assert history == before + after, trial_id
        assert trials.set_index("trial_id").loc[trial_id, "status"] in ("COMPLETED", "PRUNED")
        run_time = epochs[epochs["trial_id"] == trial_id]["epoch_time_s"].sum()
        assert trials.set_index("trial_id").loc[trial_id, "wall_time_s"] >= run_time, "wall time spans the restart"


def _finished(study: Path) -> dict[str, list[int]]:
    """The trials whose folders show they finished, with their checkpointed epochs."""
    train = study / "train"
    folders = [f.name for f in train.iterdir() if f.is_dir()] if train.is_dir() else []
    return {t: _checkpointed(study, t) for t in folders if has_finished(train, t, 2)}


@pytest.mark.slow
def test_trials_finished_before_the_driver_died_are_kept_on_resume(tmp_path: Path) -> None:
    """kill -9 of the driver as soon as two trials finished (one stopped by ASHA at its first rung), before
    Ray Tune's periodic snapshot could record it: `resume` keeps both as they were (same ids, statuses and
    epochs, not trained again), samples only the trials still missing, and optuna.db agrees."""
    data = write_phantom(tmp_path / "phantom", PhantomSpec(train=48, val=16, test=8, image_size=64), progress=False)
    results, study = tmp_path / "results", tmp_path / "results" / "kept"
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    command = [sys.executable, "-m", "raysearch", "run", "multitask", "--data", str(data), "--space", str(space),
               "--trials", "4", "--max-epochs", "2", "--image-size", "32", "--concurrency", "1", "--seed", "10",
               "--searcher", "random", "--results", str(results), "--name", "kept", "--quiet"]
    local_ray = kill_driver_when(command, lambda: len(_finished(study)) >= 2, "two finished trials", _environment(),
                                 every=0.05)
    before = _finished(study)
    assert len(before) >= 2 and not (study / "trials.parquet").exists()
    kill_all([pid for pid, name in local_ray.items() if title(pid) == name])

    resumed = subprocess.run([sys.executable, "-m", "raysearch", "resume", str(study), "--quiet"],
                             capture_output=True, text=True, env=_environment(), timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    trials = pq.read_table(study / "trials.parquet").to_pandas().set_index("trial_id")
    assert len(trials) == 4, "no trial lost, none sampled twice"
    assert "PRUNED" in set(trials.loc[list(before), "status"]), "the trial ASHA stopped was among the finished"
    for trial_id, epochs in before.items():
        assert trials.loc[trial_id, "epochs"] == len(epochs), f"{trial_id} was trained again after resume"
        assert set(_reported(study / "ray" / "kept" / trial_id)) <= set(epochs), f"{trial_id}: no new epoch"
    assert_optuna_matches_parquet(study)


@pytest.mark.slow
def test_sigterm_during_the_first_trial_stops_like_ctrl_c_then_resumes(tmp_path: Path) -> None:
    """SIGTERM (what Slurm, Kubernetes and systemd send) goes the way of Ctrl-C: Tune ends the search after a
    last signed snapshot, the lock is released, one line says how to resume, exit code 143; `resume` then
    finishes every trial once, the interrupted one continuing from its checkpoint with the same parameters."""
    data = write_phantom(tmp_path / "phantom", PhantomSpec(train=480, val=16, test=8, image_size=128),
                         progress=False)
    results, study = tmp_path / "results", tmp_path / "results" / "stopped"
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    command = [sys.executable, "-m", "raysearch", "run", "multitask", "--data", str(data), "--space", str(space),
               "--trials", "3", "--max-epochs", str(EPOCHS), "--image-size", "128", "--concurrency", "1",
               "--searcher", "random", "--seed", "5", "--results", str(results), "--name", "stopped", "--quiet"]
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_environment())
    try:
        train = study / "train"
        wait_for(lambda: driver.poll() is not None or (train.is_dir() and any(
            1 <= len(_checkpointed(study, f.name)) <= EPOCHS - 2 for f in train.iterdir())), 600, "the first trial")
        driver.send_signal(signal.SIGTERM)
        _, stderr = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 143, stderr[-3000:]
    assert "SIGTERM received: stopping the study" in stderr
    last = stderr.strip().splitlines()[-1]
    assert last == (f"raysearch: error: SIGTERM: study interrupted with 0 of 3 trials finished; continue it with "
                    f"`raysearch resume {study}`"), stderr[-3000:]
    assert "SIGTERM received at time" not in stderr, "Ray's C++ handler did not abort the driver"
    assert (study / "driver.lock").read_text() == "", "the lock is released (its record emptied)"
    first = next(f.name for f in train.iterdir() if f.is_dir())
    before = _checkpointed(study, first)

    resumed = subprocess.run([sys.executable, "-m", "raysearch", "resume", str(study), "--quiet"],
                             capture_output=True, text=True, env=_environment(), timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    trials = pq.read_table(study / "trials.parquet").to_pandas().set_index("trial_id")
    epochs = pq.read_table(study / "epochs.parquet").to_pandas()
    assert len(trials) == 3 and trials.index.is_unique
    assert set(trials["status"]) <= {"COMPLETED", "PRUNED", "EARLY_STOPPED"}
    assert epochs[epochs["trial_id"] == first]["epoch"].tolist()[:len(before)] == before
    assert_optuna_matches_parquet(study)
    # the same trials as an uninterrupted study of that seed: the random searcher's draws do not depend on the data
    # or the epochs, so a cheap uninterrupted twin (tiny images, one epoch) samples the same parameters in order
    tiny = write_phantom(tmp_path / "tiny", PhantomSpec(train=16, val=8, test=4, image_size=32), progress=False)
    twin = [*command[:command.index("--data")], "--data", str(tiny), *command[command.index("--space"):]]
    for flag, value in (("--max-epochs", "1"), ("--image-size", "32"), ("--name", "uninterrupted")):
        twin[twin.index(flag) + 1] = value
    whole = subprocess.run(twin, capture_output=True, text=True, env=_environment(), timeout=900)
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert _sampled(study) == _sampled(results / "uninterrupted")


def _sampled(study: Path) -> list[dict[str, object]]:
    """Each trial's sampled parameters, in the order the searcher drew them (None where a condition left one out)."""
    rows = pq.read_table(study / "trials.parquet").to_pandas().sort_values("number")
    params = rows[[c for c in rows.columns if c.startswith("param.")]].astype(object)
    return params.where(params.notna(), None).to_dict("records")
