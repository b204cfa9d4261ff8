"""A one-worker trial's checkpoints (`TuneSession`): named by epoch, published with the epoch history, the newest
found again on restore. Outside a Tune trial `ray.tune.report` only warns, so this runs without Ray."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from raysearch.layout import HISTORY_FILE
from raysearch.training.session import TuneSession, checkpoint_name, latest_checkpoint, publish_checkpoint, read_history

pytestmark = pytest.mark.filterwarnings("ignore:`report` is meant to only be called:UserWarning")


def _written(folder: Path, epoch: int) -> Path:
    folder.mkdir(parents=True)
    (folder / "state.pt").write_text(f"weights of epoch {epoch}")
    return folder


def test_checkpoints_are_named_by_epoch_from_zero() -> None:
    assert checkpoint_name(1) == "checkpoint_000000"
    assert checkpoint_name(12) == "checkpoint_000011"


def test_the_latest_checkpoint_is_the_newest_complete_one(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path / "absent") is None
    assert latest_checkpoint(tmp_path) is None
    for name in ("checkpoint_000001", "checkpoint_000010", "checkpoint_000002", ".checkpoint_000011",
                 "checkpoint_tmp", "checkpoint_0000123"):
        (tmp_path / name).mkdir()
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint_000010"  # not the one still being written


def test_history_of_a_checkpoint(tmp_path: Path) -> None:
    assert read_history(None) == [] and read_history(tmp_path) == []
    (tmp_path / HISTORY_FILE).write_text(json.dumps([{"epoch": 1}, {"epoch": 2}]))
    assert read_history(tmp_path) == [{"epoch": 1}, {"epoch": 2}]


def test_a_trial_publishes_each_epoch_with_its_history_and_restores_the_newest(tmp_path: Path) -> None:
    trial = tmp_path / "train" / "trial_1"
    session = TuneSession(use_gpu=False, directory=trial)
    assert session.device == torch.device("cpu") and (session.world_rank, session.world_size) == (0, 1)
    with session.restored() as folder:
        assert folder is None and session.history == []
    epochs = [{"epoch": e, "val_score": e / 10} for e in (1, 2, 3)]
    session.report(epochs[0], _written(tmp_path / "tmp1", 1))
    session.report(epochs[1], _written(tmp_path / "tmp2", 2))
    session.report(epochs[2], None)  # a worker's epoch without a checkpoint still joins the history
    assert [p.name for p in trial.iterdir()] == ["checkpoint_000001"]  # the older one is gone
    assert (trial / "checkpoint_000001" / "state.pt").read_text() == "weights of epoch 2"
    assert read_history(trial / "checkpoint_000001") == epochs[:2]
    assert session.history == epochs

    restarted = TuneSession(use_gpu=False, directory=trial)  # the trial restarted after a failure
    with restarted.restored() as folder:
        assert folder == trial / "checkpoint_000001"
        assert restarted.history == epochs[:2]  # the record matches the weights it sits beside


def test_republishing_an_epoch_replaces_its_checkpoint(tmp_path: Path) -> None:
    trial = tmp_path / "train" / "trial_1"
    publish_checkpoint(_written(tmp_path / "first", 1), trial, "checkpoint_000000")
    again = _written(tmp_path / "again", 1)
    (again / "state.pt").write_text("epoch 1 run again after a restart")
    assert publish_checkpoint(again, trial, "checkpoint_000000") == trial / "checkpoint_000000"
    assert (trial / "checkpoint_000000" / "state.pt").read_text() == "epoch 1 run again after a restart"
    assert [p.name for p in trial.iterdir()] == ["checkpoint_000000"]
