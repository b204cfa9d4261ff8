"""A multi-worker trial's session (`TrainSession`) run by Ray Train's own local mode (`ScalingConfig(num_workers=0)`:
the training function runs in this process with Ray Train's real context, report and checkpoint calls, and no Ray
instance), so that it is tested here rather than only inside the worker processes of a slow study."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from ray.train import Result, ScalingConfig
from ray.train.torch import TorchTrainer

from raysearch.core.layout import HISTORY_FILE, read_history
from raysearch.training.session import IMPROVED_KEY, TrainSession

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def in_ray_train(train_fn: Callable[[], Any]) -> Result:
    """Run `train_fn` under Ray Train in local mode (one worker, in this process)."""
    return TorchTrainer(train_fn, scaling_config=ScalingConfig(num_workers=0)).fit()


def acknowledged(*epochs: int) -> queue.Queue:
    """A queue already holding Tune's acknowledgements of `epochs`, in order."""
    acks: queue.Queue = queue.Queue()
    for epoch in epochs:
        acks.put(epoch)
    return acks


def checkpoint_folder(root: Path, epoch: int) -> Path:
    folder = root / f"rank0-epoch{epoch}"
    folder.mkdir(parents=True)
    (folder / "state.pt").write_text(f"weights of epoch {epoch}")
    return folder


def test_a_worker_knows_its_rank_world_and_device() -> None:
    def train() -> tuple[int, int, torch.device]:
        session = TrainSession(acknowledged())
        return session.world_rank, session.world_size, session.device

    assert in_ray_train(train).return_value == (0, 1, torch.device("cpu"))


def test_each_epoch_reaches_ray_train_with_its_checkpoint_history_and_whether_it_improved(tmp_path: Path) -> None:
    epochs = [{"epoch": 0, "val_score": 0.4}, {"epoch": 1, "val_score": 0.3}, {"epoch": 2, "val_score": 0.6}]
    reported: list[Path | None] = []  # the checkpoint each epoch handed Ray Train

    def train() -> list[dict[str, Any]]:
        import ray.train

        session = TrainSession(acknowledged(0, 1, 2))
        for metrics, improved in zip(epochs, (True, False, True), strict=True):
            folder = checkpoint_folder(tmp_path, metrics["epoch"]) if metrics["epoch"] != 1 else None
            session.report(metrics, folder, improved=improved)
            checkpoint = ray.train.get_checkpoint()
            reported.append(None if checkpoint is None else Path(checkpoint.path))
        return session.history

    result = in_ray_train(train)
    assert result.return_value == epochs  # the session's record holds every epoch as reported
    assert result.metrics == {**epochs[2], IMPROVED_KEY: True}  # what Ray Train got, with the improvement flag
    assert reported == [tmp_path / "rank0-epoch0", None, tmp_path / "rank0-epoch2"]
    assert read_history(tmp_path / "rank0-epoch0") == epochs[:1]  # each checkpoint holds the history up to it
    assert read_history(tmp_path / "rank0-epoch2") == epochs
    assert IMPROVED_KEY not in epochs[0]  # the caller's metrics are not changed


def test_an_epoch_is_not_reported_improved_unless_said(tmp_path: Path) -> None:
    def train() -> None:
        TrainSession(acknowledged(0)).report({"epoch": 0, "val_score": 0.1}, checkpoint_folder(tmp_path, 0))

    assert in_ray_train(train).metrics[IMPROVED_KEY] is False


def test_a_restarted_worker_resumes_from_the_last_reported_checkpoint_and_its_history(tmp_path: Path) -> None:
    epochs = [{"epoch": 0, "val_score": 0.2}, {"epoch": 1, "val_score": 0.5}]

    def train() -> tuple[Path | None, list[dict[str, Any]], Path | None, list[dict[str, Any]]]:
        first = TrainSession(acknowledged(0, 1))
        with first.restored() as nothing:
            before = (nothing, list(first.history))
        for metrics in epochs:
            first.report(metrics, checkpoint_folder(tmp_path, metrics["epoch"]), improved=True)
        again = TrainSession(acknowledged())  # as a replaced worker group starts the function again
        with again.restored() as folder:
            return (*before, folder, list(again.history))

    nothing, history_before, folder, history = in_ray_train(train).return_value
    assert (nothing, history_before) == (None, [])
    assert folder == tmp_path / "rank0-epoch1" and (folder / HISTORY_FILE).is_file()
    assert history == epochs


def test_a_worker_waits_for_tunes_verdict_on_its_epoch_and_skips_older_acknowledgements(tmp_path: Path) -> None:
    """Acknowledgements of epochs a replaced worker group reported are passed over; the report of epoch 2 returns
    only once Tune acknowledged epoch 2, and takes nothing from the queue beyond it."""
    acks = acknowledged(0, 1, 0, 1)
    returned = threading.Event()

    def train() -> None:
        session = TrainSession(acks)
        session.report({"epoch": 2, "val_score": 0.5}, checkpoint_folder(tmp_path, 2))
        returned.set()

    worker = threading.Thread(target=in_ray_train, args=(train,), daemon=True)
    worker.start()
    deadline = time.monotonic() + 120
    while not acks.empty() and not returned.is_set() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not returned.wait(timeout=2), "the epoch's report returned before Tune acknowledged it"
    assert acks.empty(), "the worker did not read past the stale acknowledgements"
    acks.put(2)
    acks.put(3)
    assert returned.wait(timeout=60), "the acknowledged epoch's report did not return"
    worker.join(timeout=60)
    assert acks.get_nowait() == 3  # the next epoch's acknowledgement is left for the next epoch
