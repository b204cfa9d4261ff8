"""Searchers and schedulers to choose from, the Optuna study that agrees with trials.parquet, and the
budgets that stop sampling. Each study is a real `raysearch run` (subprocess, local Ray) on tiny phantom data."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pyarrow.parquet as pq
import pytest
import yaml

from raysearch.data.phantom import PhantomSpec, write_phantom
from raysearch.errors import ConfigError
from raysearch.search.choices import SCHEDULERS, SEARCHERS
from raysearch.search.scheduler import SCHEDULER_CLASSES
from raysearch.search.searcher import SAMPLER_CLASSES, create_sampler, sampler_settings
from raysearch.search.space import parse_space
from raysearch.study.spec import StudySpec

# The first trial gets lr 1e-2, the second lr 1e-9 (RandomSampler and TPE's start-up sampler with seed 10):
# the second barely learns, so ASHA stops it at the first rung.
SEED = 10
SPACE = """task: multitask
metric: val_score
mode: max
parameters:
  lr: {type: categorical, choices: [1.0e-2, 1.0e-9]}
fixed: {model: vgg, conv_layers: 2, width: 8, batch_size: 16, patience: 0}
"""
OPTUNA_STATES = {"COMPLETED": "COMPLETE", "EARLY_STOPPED": "COMPLETE", "PRUNED": "PRUNED", "FAILED": "FAIL"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("choices")
    space = root / "space.yaml"
    space.write_text(SPACE)
    return write_phantom(root / "phantom", PhantomSpec(train=48, val=16, test=16, image_size=64), progress=False), space


def run_study(inputs: tuple[Path, Path], results: Path, *flags: str) -> subprocess.CompletedProcess:
    data, space = inputs
    command = [sys.executable, "-m", "raysearch", "run", "multitask", "--data", str(data), "--space", str(space),
               "--max-epochs", "2", "--image-size", "32", "--concurrency", "1", "--seed", str(SEED),
               "--results", str(results), "--name", "study", "--quiet", *flags]
    environment = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run(command, capture_output=True, text=True, timeout=900, env=environment)


def assert_optuna_matches_parquet(study: Path) -> None:
    """optuna.db holds the trials of trials.parquet, with the same states, values and per-epoch values."""
    trials = pq.read_table(study / "trials.parquet").to_pandas().set_index("trial_id")
    epochs = pq.read_table(study / "epochs.parquet").to_pandas()
    optuna_trials = optuna.load_study(study_name=study.name, storage=f"sqlite:///{study / 'optuna.db'}").trials
    ran = {t.user_attrs["trial_id"]: t for t in optuna_trials if not t.user_attrs.get("never_run")}
    assert set(ran) == set(trials.index)
    assert not [t for t in optuna_trials if t.state.name in ("RUNNING", "WAITING")]
    for trial_id, row in trials.iterrows():
        frozen = ran[trial_id]
        assert frozen.state.name == OPTUNA_STATES[row["status"]], trial_id
        assert frozen.user_attrs["status"] == row["status"]
        if row["status"] != "FAILED":
            assert math.isclose(frozen.value, row["metric.val_score.best"]), trial_id
        per_epoch = epochs[epochs["trial_id"] == trial_id].set_index("epoch")["val_score"].to_dict()
        assert frozen.intermediate_values == pytest.approx(per_epoch), trial_id


@pytest.mark.slow
@pytest.mark.parametrize(("searcher", "scheduler"), [("tpe", "asha"), ("random", "hyperband"), ("qmc", "median")])
def test_each_searcher_and_scheduler_runs_a_study(inputs: tuple[Path, Path], tmp_path: Path, searcher: str,
                                                  scheduler: str) -> None:
    startup = ("--startup-trials", "3") if searcher == "tpe" else ()  # 3 > --trials: both trials sampled at random
    done = run_study(inputs, tmp_path, "--trials", "2", "--searcher", searcher, "--scheduler", scheduler, *startup)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    study = tmp_path / "study"
    recorded = yaml.safe_load((study / "study.yaml").read_text())
    assert recorded["searcher"]["name"] == searcher and recorded["scheduler"]["name"] == scheduler
    assert recorded["searcher"].get("n_startup_trials") == (3 if searcher == "tpe" else None)
    assert recorded["searcher"]["sampler"] == SAMPLER_CLASSES[searcher].__name__
    trials = pq.read_table(study / "trials.parquet").to_pandas()
    assert len(trials) == 2 and set(trials["status"]) <= {"COMPLETED", "PRUNED"}
    assert "trial-epochs" in done.stdout and f"{trials['epochs'].sum()} trial-epochs" in done.stdout
    if scheduler == "asha":
        assert trials.sort_values("trial_id")["status"].tolist().count("PRUNED") == 1, "lr 1e-9 stopped at rung 1"
    assert_optuna_matches_parquet(study)


@pytest.mark.slow
def test_time_budget_stops_sampling_and_lets_the_running_trial_finish(inputs: tuple[Path, Path],
                                                                       tmp_path: Path) -> None:
    done = run_study(inputs, tmp_path, "--trials", "3", "--time-budget", "1s", "--searcher", "random",
                     "--scheduler", "none")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    study = tmp_path / "study"
    trials = pq.read_table(study / "trials.parquet").to_pandas()
    assert len(trials) == 1, "no trial sampled after the budget was spent"
    assert trials["status"].tolist() == ["COMPLETED"] and trials["epochs"].tolist() == [2], "ran to --max-epochs"
    recorded = yaml.safe_load((study / "study.yaml").read_text())
    assert recorded["budget"]["time_budget_s"] == 1.0 and recorded["scheduler"]["name"] == "none"
    assert_optuna_matches_parquet(study)


def test_every_named_searcher_and_scheduler_exists() -> None:
    assert set(SAMPLER_CLASSES) == set(SEARCHERS) and set(SCHEDULER_CLASSES) == set(SCHEDULERS)


def test_space_keys_choose_searcher_and_scheduler() -> None:
    space = parse_space({"task": "multitask", "searcher": "random", "scheduler": "none"}, source="s.yaml")
    assert (space.searcher, space.scheduler) == ("random", "none")
    with pytest.raises(ConfigError, match=r"s.yaml: searcher: must be one of tpe, random, qmc, got 'grid'"):
        parse_space({"task": "multitask", "searcher": "grid"}, source="s.yaml")
    with pytest.raises(ConfigError, match=r"s.yaml: scheduler: must be one of"):
        parse_space({"task": "multitask", "scheduler": "pbt"}, source="s.yaml")


@pytest.mark.parametrize(("trials", "startup_trials", "expected"), [
    (96, None, 10), (12, None, 4), (4, None, 2), (96, 4, 4), (4, 7, 7)])
def test_tpe_starts_with_the_random_trials_asked_for_else_a_third_of_the_cap(
        trials: int, startup_trials: int | None, expected: int) -> None:
    settings = sampler_settings("tpe", seed=0, trials=trials, startup_trials=startup_trials)
    assert settings["n_startup_trials"] == expected
    tpe, random = (sampled(create_sampler(name, sampler_settings(name, seed=0, trials=trials,
                                                                startup_trials=startup_trials)), expected + 1)
                   for name in ("tpe", "random"))
    assert tpe[:expected] == random[:expected]  # the start-up trials: random search's own
    assert tpe[expected] != random[expected]  # then TPE's proposal


def sampled(sampler: optuna.samplers.BaseSampler, trials: int) -> list[float]:
    """The values `sampler` proposes for x in [0, 1] over `trials` trials whose objective is x."""
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=trials)
    return [trial.params["x"] for trial in study.trials]


@pytest.mark.parametrize(("text", "seconds"), [("2h", 7200.0), ("30m", 1800.0), ("90s", 90.0), ("1.5h", 5400.0),
                                               ("45", 45.0)])
def test_time_budget_durations(text: str, seconds: float) -> None:
    assert StudySpec("multitask", time_budget=text).budget_seconds() == seconds


@pytest.mark.parametrize(("field", "value", "message"), [
    ("time_budget", "2 days", "--time-budget: expected a positive duration"),
    ("time_budget", "0s", "--time-budget: expected a positive duration"),
    ("epoch_budget", 0, "--epoch-budget: must be at least 1"),
    ("searcher", "grid", "--searcher: must be one of"),
    ("startup_trials", 0, "--startup-trials: must be at least 1"),
    ("scheduler", "pbt", "--scheduler: must be one of"),
])
def test_bad_budgets_and_choices_are_refused(field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        StudySpec("multitask", **{field: value})
