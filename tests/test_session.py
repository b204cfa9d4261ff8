"""A one-worker trial's checkpoints (`TuneSession`): named by epoch, published with the epoch history, the newest
found again on restore. Outside a Tune trial `ray.tune.report` only warns, so most of this runs without Ray; what
Tune receives is checked in Tune's own function trainable, run in this process."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from raysearch.core.layout import BEST_FILE, EPOCH_STAGING_PREFIX, HISTORY_FILE, STATE_FILE
from raysearch.training.session import (
    BEST_ONLY_PREFIX,
    TuneSession,
    checkpoint_name,
    discard_leftovers,
    latest_checkpoint,
    link_best_weights,
    publish_checkpoint,
    read_history,
)

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


def _checkpoint_with_best(folder: Path, epoch: int) -> Path:
    folder = _written(folder, epoch)
    (folder / BEST_FILE).write_text(f"best weights up to epoch {epoch}")
    return folder


def test_the_best_weights_link_holds_that_file_alone_and_replaces_an_older_link(tmp_path: Path) -> None:
    checkpoint = _checkpoint_with_best(tmp_path / "trial" / "checkpoint_000002", 3)
    stale = tmp_path / "trial" / f".{BEST_ONLY_PREFIX}checkpoint_000002"
    stale.mkdir()
    (stale / "leftover.pt").write_text("from a killed run")
    folder = link_best_weights(checkpoint / BEST_FILE)
    assert folder == stale and [p.name for p in folder.iterdir()] == [BEST_FILE]  # no optimizer state, no leftover
    assert (folder / BEST_FILE).stat().st_ino == (checkpoint / BEST_FILE).stat().st_ino  # a hard link, no copy
    publish_checkpoint(_written(tmp_path / "next", 4), tmp_path / "trial", "checkpoint_000003")
    assert not checkpoint.exists() and (folder / BEST_FILE).read_text() == "best weights up to epoch 3"


def test_where_hard_links_fail_the_best_weights_are_copied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a file system without hard links (os.link raises, as on some network mounts) the file is copied."""
    checkpoint = _checkpoint_with_best(tmp_path / "trial" / "checkpoint_000000", 1)

    def no_hard_links(source: object, target: object) -> None:
        raise OSError(errno.EPERM, "hard links not supported here")

    monkeypatch.setattr(os, "link", no_hard_links)
    folder = link_best_weights(checkpoint / BEST_FILE)
    assert [p.name for p in folder.iterdir()] == [BEST_FILE]
    copied = folder / BEST_FILE
    assert copied.read_text() == "best weights up to epoch 1"
    assert copied.stat().st_ino != (checkpoint / BEST_FILE).stat().st_ino


@pytest.mark.parametrize(("use_gpu", "cuda_available", "device"), [
    (True, True, torch.device("cuda", 0)), (True, False, torch.device("cpu")),
    (False, True, torch.device("cpu")), (False, False, torch.device("cpu"))])
def test_a_one_worker_trial_trains_on_the_first_gpu_only_when_asked_and_present(
        use_gpu: bool, cuda_available: bool, device: torch.device, monkeypatch: pytest.MonkeyPatch) -> None:
    """The device choice, with CUDA's presence set (this machine has no GPU; the gpu-marked tests train on one)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_available)
    assert TuneSession(use_gpu=use_gpu, directory=Path("unused")).device == device


def test_leftover_best_weights_links_and_epoch_stagings_are_discarded_and_nothing_else(tmp_path: Path) -> None:
    discard_leftovers(tmp_path / "absent")  # a trial's first start: no folder yet
    trial = tmp_path / "trial"
    kept = _checkpoint_with_best(trial / "checkpoint_000000", 1)
    link_best_weights(kept / BEST_FILE)
    (trial / f".{BEST_ONLY_PREFIX}checkpoint_000007").mkdir()
    (trial / ".checkpoint_000001").mkdir()  # an unfinished checkpoint copy is publish_checkpoint's to clean
    (trial / f"{EPOCH_STAGING_PREFIX}k2j3h4").mkdir()  # an epoch staged by a run killed before it reported it
    discard_leftovers(trial)
    assert sorted(p.name for p in trial.iterdir()) == [".checkpoint_000001", "checkpoint_000000"]
    assert sorted(p.name for p in kept.iterdir()) == [BEST_FILE, STATE_FILE]


def test_an_improved_epoch_is_published_whole_and_leaves_no_best_weights_link(tmp_path: Path) -> None:
    trial = tmp_path / "train" / "trial_1"
    session = TuneSession(use_gpu=False, directory=trial)
    session.report({"epoch": 1, "val_score": 0.5}, _checkpoint_with_best(tmp_path / "tmp1", 1), improved=True)
    session.report({"epoch": 2, "val_score": 0.4}, _checkpoint_with_best(tmp_path / "tmp2", 2), improved=False)
    assert [p.name for p in trial.iterdir()] == ["checkpoint_000001"]  # the link for Tune went with its report
    assert sorted(p.name for p in (trial / "checkpoint_000001").iterdir()) == [BEST_FILE, HISTORY_FILE, STATE_FILE]


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """A Ray instance of this process (Tune's function trainable needs one for its session folders)."""
    import ray

    ray.init(num_cpus=1, include_dashboard=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


def run_as_tune_trial(train_fn: Callable[[dict], None], storage: Path, epochs: int) -> tuple[list[dict], Path]:
    """Run `train_fn` as Ray Tune's function trainable does, in this process, for `epochs` results (one `train()`
    each): those results and the trial's folder, where Tune keeps the checkpoints that came with them."""
    from ray.train._internal.storage import StorageContext
    from ray.tune.trainable.function_trainable import wrap_function

    context = StorageContext(storage_path=str(storage), experiment_dir_name="study", trial_dir_name="trial")
    trainable = wrap_function(train_fn)(config={}, storage=context)
    try:
        return [trainable.train() for _ in range(epochs)], Path(context.trial_fs_path)
    finally:
        trainable.stop()


@pytest.mark.slow
def test_tune_gets_each_epoch_with_its_checkpoint_path_and_the_best_weights_alone_of_improved_epochs(
        local_ray: None, tmp_path: Path) -> None:
    trial = tmp_path / "train" / "t"

    def train(config: dict) -> None:
        session = TuneSession(use_gpu=False, directory=trial)
        session.report({"epoch": 1, "val_score": 0.5}, _checkpoint_with_best(tmp_path / "tmp1", 1), improved=True)
        session.report({"epoch": 2, "val_score": 0.4}, _checkpoint_with_best(tmp_path / "tmp2", 2))  # not improved
        session.report({"epoch": 3, "val_score": 0.7}, _checkpoint_with_best(tmp_path / "tmp3", 3), improved=True)
        session.report({"epoch": 4, "val_score": 0.6}, None, improved=True)  # a worker without a checkpoint

    results, tune_trial = run_as_tune_trial(train, tmp_path / "ray", epochs=4)
    assert [(r["epoch"], r["val_score"]) for r in results] == [(1, 0.5), (2, 0.4), (3, 0.7), (4, 0.6)]
    assert [r.get("checkpoint_path") for r in results] == [
        str(trial / "checkpoint_000000"), str(trial / "checkpoint_000001"), str(trial / "checkpoint_000002"), None]
    # Tune got a checkpoint from the two improved epochs with weights only: their best weights, nothing else
    kept = sorted(tune_trial.glob("checkpoint_*"))
    assert [[p.name for p in folder.iterdir()] for folder in kept] == [[BEST_FILE], [BEST_FILE]]
    assert [(folder / BEST_FILE).read_text() for folder in kept] == [
        "best weights up to epoch 1", "best weights up to epoch 3"]
    assert not list(trial.glob(f".{BEST_ONLY_PREFIX}*"))  # the links handed to Tune are gone
