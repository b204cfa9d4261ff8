"""Sessions: how the training loop reports metrics and checkpoints, inside a Tune trial or a Train worker.

A one-worker trial runs the loop directly in the Tune trial process (`TuneSession`: no worker group to
start, ~30 s cheaper per trial); a multi-worker trial runs it in every worker of a Ray Train
`TorchTrainer` (`TrainSession`). The loop itself cannot tell the difference.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, Protocol

import torch


class Session(Protocol):
    """What the training loop needs from its runtime."""

    world_rank: int
    world_size: int
    device: torch.device

    def restored(self) -> AbstractContextManager[Path | None]:
        """A context yielding the folder of the checkpoint to resume from, or None."""

    def report(self, metrics: dict[str, Any], checkpoint: Path | None) -> None:
        """Report one epoch's metrics, with rank 0's checkpoint folder."""


def _device(use_gpu: bool) -> torch.device:
    return torch.device("cuda", 0) if use_gpu and torch.cuda.is_available() else torch.device("cpu")


class TuneSession:
    """The loop running inside a Ray Tune function trial (one worker)."""

    world_rank = 0
    world_size = 1

    def __init__(self, *, use_gpu: bool) -> None:
        self.device = _device(use_gpu)

    def restored(self) -> AbstractContextManager[Path | None]:
        from ray import tune

        checkpoint = tune.get_checkpoint()
        return _as_path(checkpoint.as_directory()) if checkpoint else nullcontext(None)

    def report(self, metrics: dict[str, Any], checkpoint: Path | None) -> None:
        from ray import tune

        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(checkpoint) if checkpoint else None)


class TrainSession:
    """The loop running in one worker of a Ray Train TorchTrainer (DDP over the worker group)."""

    def __init__(self) -> None:
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        self.world_rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.device = ray.train.torch.get_device()

    def restored(self) -> AbstractContextManager[Path | None]:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        return _as_path(checkpoint.as_directory()) if checkpoint else nullcontext(None)

    def report(self, metrics: dict[str, Any], checkpoint: Path | None) -> None:
        """Report from every worker (a barrier); rank 0's checkpoint is copied to the run's storage as
        `checkpoint_<N>`, numbered from 0 by epoch like a Tune trial's, not named by timestamp."""
        import ray.train

        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(checkpoint) if checkpoint else None,
                         checkpoint_dir_name=f"checkpoint_{metrics['epoch'] - 1:06d}")


class _as_path(AbstractContextManager):
    """Wrap a checkpoint's `as_directory()` context so it yields a Path."""

    def __init__(self, inner: AbstractContextManager[str]) -> None:
        self.inner = inner

    def __enter__(self) -> Path:
        return Path(self.inner.__enter__())

    def __exit__(self, *exc: object) -> None:
        self.inner.__exit__(*exc)
