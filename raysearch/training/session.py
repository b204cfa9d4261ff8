"""Sessions: how the training loop reports metrics and checkpoints, inside a Tune trial or a Train worker.

A one-worker trial runs the loop directly in the Tune trial process (`TuneSession`: no worker group to
start, ~30 s cheaper per trial); a multi-worker trial runs it in every worker of a Ray Train
`TorchTrainer` (`TrainSession`); evaluation's retraining and the tests run it in their own process
(`LocalSession`). The loop itself cannot tell the difference.

Both keep a trial's checkpoints in one folder per trial, `<study>/train/<trial_id>/checkpoint_<N>` (N
counts epochs from 0), and both find them again by the trial's id when Tune restarts the trial (after a
failure or `raysearch resume`). A one-worker trial writes its own checkpoints there rather than through
Tune: Ray Tune 2.60 deletes a trial's previous checkpoint before its experiment snapshot stops pointing to
it, so a driver killed in between left a trial that could not be restored.

Tune still gets a checkpoint, for its result tools (`ResultGrid`, `ExperimentAnalysis.get_best_checkpoint`):
each epoch that improves the trial's score also reports its best weights (`best_model.pt` alone) as a Tune
checkpoint, which Tune copies to `<study>/ray/<study>/<trial_id>/checkpoint_<N>` and keeps only the best of
(raysearch.search.tuner). A one-worker trial reports it itself; a multi-worker trial's epochs reach Tune through
its Train controller (raysearch.search.train_reports). Restarting a trial never reads it (see `ResumeFromOwnCheckpoints`
in raysearch.search.tuner), so Tune deleting one that a stale snapshot still names does no harm.

Every checkpoint also holds the metrics of every epoch up to it (`history.json`). That history, not Ray
Tune's result log, is a trial's record: Tune starts a trial's log afresh when it restarts a trial that
has no Tune checkpoint, and the history always matches the weights it sits beside.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, Protocol

import torch

from raysearch.core.devices import torch_device
from raysearch.core.files import atomic_folder
from raysearch.core.layout import (
    BEST_FILE,
    CHECKPOINT_GLOB,
    EPOCH_STAGING_PREFIX,
    HISTORY_FILE,
    checkpoint_name,
    latest_checkpoint,
    read_history,
)

BEST_ONLY_PREFIX = "best-only-"
IMPROVED_KEY = "improved"  # in a Train worker's reported metrics: the epoch improved the trial's score


class Session(Protocol):
    """What the training loop needs from its runtime."""

    world_rank: int
    world_size: int
    device: torch.device

    def restored(self) -> AbstractContextManager[Path | None]:
        """A context yielding the folder of the checkpoint to resume from, or None."""

    def report(self, metrics: dict[str, Any], checkpoint: Path | None, *, improved: bool = False) -> None:
        """Report one epoch's metrics, with rank 0's checkpoint folder; `improved`: the epoch's score is the
        trial's best so far (its weights are the checkpoint's best weights)."""


def publish_checkpoint(source: Path, directory: Path, name: str) -> Path:
    """Copy `source` to `directory/name` atomically (a temporary sibling, then a rename), then delete the
    older checkpoints: a crash leaves either the previous checkpoint or the new one, never half of one."""
    final = directory / name
    with atomic_folder(final) as staging:
        shutil.copytree(source, staging, dirs_exist_ok=True)
    for stale in directory.glob(CHECKPOINT_GLOB):
        if stale.name < name:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def link_best_weights(best: Path) -> Path:
    """A folder beside `best`'s checkpoint holding only that weights file (a hard link where the file system
    allows, else a copy): what a Tune checkpoint of the best model holds, without the optimizer state. The link
    outlives the checkpoint it came from."""
    folder = best.parent.parent / f".{BEST_ONLY_PREFIX}{best.parent.name}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    try:
        os.link(best, folder / best.name)
    except OSError:
        shutil.copy2(best, folder / best.name)
    return folder


def discard_leftovers(directory: Path) -> None:
    """Remove what a killed run of a trial left in its `directory` (a SIGTERM or SIGKILL gives no process the
    time to clean up): the folders of `link_best_weights` not yet reported to Tune, and epoch checkpoints being
    staged (call only while nothing of the trial runs: at its start)."""
    patterns = (f".{BEST_ONLY_PREFIX}*", f"{EPOCH_STAGING_PREFIX}*")
    for folder in [f for p in patterns for f in directory.glob(p)] if directory.is_dir() else ():
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def best_weights_only(best: Path) -> Iterator[Path]:
    """`link_best_weights(best)`, removed again on leaving the context."""
    folder = link_best_weights(best)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _record(history: list[dict[str, Any]], metrics: dict[str, Any], checkpoint: Path | None) -> None:
    """Append an epoch to `history` and write the whole history into its checkpoint folder."""
    history.append(metrics)
    if checkpoint is not None:
        (checkpoint / HISTORY_FILE).write_text(json.dumps(history))


class _Restoring(AbstractContextManager):
    """Enter a checkpoint folder's context, loading the epoch history kept in it into `history`."""

    def __init__(self, inner: AbstractContextManager[Any], history: list[dict[str, Any]]) -> None:
        self.inner, self.history = inner, history

    def __enter__(self) -> Path | None:
        entered = self.inner.__enter__()
        folder = None if entered is None else Path(entered)
        self.history[:] = read_history(folder)
        return folder

    def __exit__(self, *exc: object) -> None:
        self.inner.__exit__(*exc)



class LocalSession:
    """The loop running in this process as one worker, without Ray (evaluation's retraining, tests): it keeps
    every reported epoch (`history`) and whether it improved the trial's score (`improved`); `kept`, when given,
    receives a copy of each reported checkpoint as `epoch_<N>`; `resume_from` is the checkpoint to restore."""

    world_rank = 0
    world_size = 1

    def __init__(self, device: torch.device | None = None, *, kept: Path | None = None,
                 resume_from: Path | None = None) -> None:
        self.device = torch.device("cpu") if device is None else device
        self.kept, self.resume_from = kept, resume_from
        self.history: list[dict[str, Any]] = []
        self.improved: list[bool] = []

    def restored(self) -> AbstractContextManager[Path | None]:
        return nullcontext(self.resume_from)

    def report(self, metrics: dict[str, Any], checkpoint: Path | None, *, improved: bool = False) -> None:
        self.history.append(metrics)
        self.improved.append(improved)
        if self.kept is not None and checkpoint is not None:
            shutil.copytree(checkpoint, self.kept / f"epoch_{metrics['epoch']}")


class TuneSession:
    """The loop running inside a Ray Tune function trial (one worker), checkpointing into `directory`."""

    world_rank = 0
    world_size = 1

    def __init__(self, *, use_gpu: bool, directory: Path) -> None:
        self.device = torch_device(use_gpu)
        self.directory = directory
        self.history: list[dict[str, Any]] = []

    def restored(self) -> AbstractContextManager[Path | None]:
        return _Restoring(nullcontext(latest_checkpoint(self.directory)), self.history)

    def report(self, metrics: dict[str, Any], checkpoint: Path | None, *, improved: bool = False) -> None:
        """Publish the checkpoint first, then report the epoch (with its `checkpoint_path`, as Ray Train's
        TuneReportCallback does), so that a reported epoch always has its checkpoint; an improved epoch hands
        Tune its best weights as a Tune checkpoint as well."""
        from ray import tune

        _record(self.history, metrics, checkpoint)
        if checkpoint is None:
            tune.report(metrics)
            return
        saved = publish_checkpoint(checkpoint, self.directory, checkpoint_name(metrics["epoch"]))
        metrics = {**metrics, "checkpoint_path": str(saved)}
        best = saved / BEST_FILE
        if not (improved and best.is_file()):
            tune.report(metrics)
            return
        with best_weights_only(best) as folder:
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


class TrainSession:
    """The loop running in one worker of a Ray Train TorchTrainer (DDP over the worker group); `acks`: the queue
    into which the trial puts each epoch's number once Tune let the trial go on after it
    (raysearch.search.train_reports.TrainToTune)."""

    def __init__(self, acks: Any) -> None:
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        self.world_rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.device = ray.train.torch.get_device()
        self.acks = acks
        self.history: list[dict[str, Any]] = []

    def restored(self) -> AbstractContextManager[Path | None]:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        return _Restoring(checkpoint.as_directory() if checkpoint else nullcontext(None), self.history)

    def report(self, metrics: dict[str, Any], checkpoint: Path | None, *, improved: bool = False) -> None:
        """Report from every worker (a barrier); Ray Train copies rank 0's checkpoint to the run's storage
        as `checkpoint_<N>` (not named by timestamp) and records it only once the copy is complete. The metrics
        carry `improved` (as IMPROVED_KEY) to the trial's ReportToTune callback, which takes it out again. Then
        every worker waits until Tune let the trial go on after this epoch (`wait_for_tune`)."""
        import ray.train

        _record(self.history, metrics, checkpoint)
        ray.train.report({**metrics, IMPROVED_KEY: improved},
                         checkpoint=ray.train.Checkpoint.from_directory(checkpoint) if checkpoint else None,
                         checkpoint_dir_name=checkpoint_name(metrics["epoch"]))
        self.wait_for_tune(metrics["epoch"])

    def wait_for_tune(self, epoch: int) -> None:
        """Rank 0 waits for the acknowledgement of `epoch` (skipping those of epochs that a replaced worker group
        reported before), then all ranks meet at Ray Train's barrier: no worker trains the next epoch before Tune
        decided on this one. If Tune stops the trial, the trial's actor and its workers are torn down here."""
        from ray.train.collective import barrier

        if self.world_rank == 0:
            while self.acks.get() < epoch:
                pass
        barrier()
