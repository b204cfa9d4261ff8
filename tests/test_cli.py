"""`raysearch run` as a user runs it: a real subprocess, a real local Ray instance, real Parquet files."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import TinyStudy

from raysearch.cli import build_parser, reference, spec_fields
from raysearch.study.spec import StudySpec


def raysearch(*args: str, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh interpreter, as the console script does."""
    environment = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | (env or {})
    return subprocess.run([sys.executable, "-m", "raysearch", *args], capture_output=True, text=True,
                          timeout=timeout, env=environment)


def test_bad_space_file_exits_with_one_line(tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text("task: multitask\nparameters:\n  lr: {type: float, low: 0.1, high: 0.01}\n")
    result = raysearch("run", "multitask", "--space", str(space), "--results", str(tmp_path / "r"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("raysearch: error: ") and "parameters.lr.low" in lines[0] and str(space) in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "r").exists()


def test_unknown_task_lists_valid_ones(tmp_path: Path) -> None:
    result = raysearch("run", "detection", "--results", str(tmp_path))
    assert result.returncode == 2
    assert "unknown task 'detection'" in result.stderr and "multitask" in result.stderr


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--reduction-factor", "1", "--reduction-factor: must be at least 2, got 1"),
    ("--grace-period", "0", "--grace-period: must be at least 1, got 0"),
    ("--wait-for-nodes", "-5", "--wait-for-nodes: must not be negative, got -5.0"),
    ("--concurrency", "0", "--concurrency: must be at least 1, got 0"),
    ("--seed", "-5", "--seed: must be between 0 and 4294967295 (numpy and Optuna seeds), got -5"),
    ("--seed", str(2**32), "--seed: must be between 0 and 4294967295 (numpy and Optuna seeds), got 4294967296"),
    ("--grace-period", "3", "--grace-period: must not exceed --max-epochs (1), got 3"),
    ("--trials-per-gpu", "0", "--trials-per-gpu: must be at least 1, got 0"),
    ("--gpus-per-worker", "-1", "--gpus-per-worker: must be auto or a number of at least 0, got -1.0"),
])
def test_bad_run_flag_exits_with_one_line_naming_it(tmp_path: Path, flag: str, value: str, message: str) -> None:
    result = raysearch("run", "multitask", "--max-epochs", "1", flag, value, "--results", str(tmp_path / "r"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"raysearch: error: {message}"]
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_run_multitask_end_to_end(tiny_study: TinyStudy) -> None:
    """The session's tiny study (conftest): `raysearch run multitask`, 2 trials, 2 epochs, 32 px."""
    assert "Best trials by val_score" in tiny_study.stdout
    assert "raysearch dashboard" in tiny_study.stdout
    # --gpus-per-worker auto on this GPU-less machine: the plan says so, and study.yaml records 0
    assert re.search(r"^Device plan: \d+ trials? at once, no GPU, device cpu \(1 worker of 1 CPU; the cluster has "
                     r"0 GPU\)$", tiny_study.stdout, re.MULTILINE)
    study = tiny_study.study

    trials = pq.read_table(study / "trials.parquet").to_pandas()
    assert len(trials) == 2 and trials["trial_id"].is_unique
    assert set(trials["status"]) <= {"COMPLETED", "PRUNED", "EARLY_STOPPED"}
    for column in ("param.conv_layers", "param.lr", "param.scheduler", "metric.val_score.best",
                   "metric.val_score.last", "metric.val_accuracy.best", "metric.val_apd.last", "epochs",
                   "wall_time_s", "checkpoint"):
        assert column in trials.columns, column
    assert trials["param.conv_layers"].dtype.kind == "i" and trials["param.lr"].dtype.kind == "f"
    assert trials["epochs"].between(1, 2).all() and (trials["wall_time_s"] > 0).all()
    assert all(Path(c, "state.pt").is_file() for c in trials["checkpoint"])

    epochs = pq.read_table(study / "epochs.parquet").to_pandas()
    assert len(epochs) == trials["epochs"].sum()
    for column in ("trial_id", "epoch", "val_loss", "val_accuracy", "val_apd", "val_mse", "val_score", "lr",
                   "epoch_time_s"):
        assert column in epochs.columns, column
    for trial_id, group in epochs.groupby("trial_id"):
        assert group["epoch"].tolist() == list(range(1, len(group) + 1))
        last = trials.set_index("trial_id").loc[trial_id, "metric.val_score.last"]
        assert group["val_score"].iloc[-1] == pytest.approx(last)
    assert epochs["val_accuracy"].between(0, 1).all() and (epochs["val_apd"] > 0).all()

    resolved = yaml.safe_load((study / "study.yaml").read_text())
    assert resolved["task"] == "multitask" and resolved["seed"] == 0
    assert resolved["scheduler"]["name"] == "asha" and resolved["scheduler"]["time_attr"] == "epoch"
    assert "lr" in resolved["search_space"]["parameters"]
    assert resolved["versions"]["ray"].startswith("2.60")
    resources = resolved["resources"]
    assert resources["gpus_per_worker"] == 0.0 and resources["gpus_per_worker_requested"] == "auto"
    assert set(epochs["precision"]) == {"fp32"}
    assert (study / "optuna.db").is_file()

    again = raysearch("run", "multitask", "--data", str(tiny_study.data), "--results", str(tiny_study.results),
                      "--name", study.name)
    assert again.returncode == 2 and "already finished" in again.stderr


def test_the_cli_reference_in_docs_is_the_parser_s_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    written = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    assert written == reference() + "\n", "docs/cli.md is stale: python -m raysearch.cli > docs/cli.md"


def test_every_study_spec_flag_reaches_the_spec_with_its_default() -> None:
    args = build_parser().parse_args(["run", "multitask"])
    built = {f.name: getattr(args, f.name) for f in spec_fields()}
    assert StudySpec(**built) == StudySpec(task="multitask", address=built["address"])
    assert {f.name for f in spec_fields()} == {f.name for f in dataclasses.fields(StudySpec)}
