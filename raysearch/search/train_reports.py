"""A multi-worker trial's epochs, from its Ray Train controller to Ray Tune, with its best weights as a Tune
checkpoint.

Ray's `ray.tune.integration.ray_train.TuneReportCallback` passes rank 0's metrics (and the path of the epoch's
Train checkpoint) through a queue actor to the Tune session, which reports them without a checkpoint: Tune's
result tools found no checkpoint for a multi-worker trial. `ReportToTune` does the same, and on an epoch that
improved the trial's score it also hands over the epoch's best weights: in the controller, while the epoch's
Train checkpoint is still the newest (Ray Train deletes it when it registers the next one), it hard-links
`best_model.pt` into a folder of its own (raysearch.training.session.link_best_weights). The trial function runs
`TorchTrainer.fit()` in a thread and reports each epoch from its own thread with `ray.tune.report`, the folder
as a `ray.tune.Checkpoint` (Tune copies it into `ray/<study>/<trial>/checkpoint_<N>`, as for a one-worker
trial), then removes the folder.

Ray Train workers do not wait for what their controller passes on: left alone they would train on while Tune
decides, and a trial that Tune stopped after epoch N would record epochs it never reported. So once
`ray.tune.report` for epoch N returns (Tune lets the trial go on), `TrainToTune.fit` puts N into `acks`, a queue
whose handle the workers get in their loop config; each worker's TrainSession waits for it after reporting epoch
N (raysearch.training.session), the contract of a one-worker trial, whose `tune.report` blocks the same way.
"""

from __future__ import annotations

import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.train.v2.api.callback import UserCallback
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY

from raysearch.core.layout import BEST_FILE
from raysearch.training.session import IMPROVED_KEY, link_best_weights


@dataclass(frozen=True)
class Epoch:
    """One epoch as rank 0 reported it, and the folder holding its weights when it improved the trial's score."""

    metrics: dict[str, Any]
    best_weights: str | None

    def report(self) -> None:
        """Report to Tune (from the trial function's thread, where Tune holds the trial until it decided), with the
        best weights as a checkpoint."""
        from ray import tune

        if self.best_weights is None:
            tune.report(self.metrics)
            return
        try:
            tune.report(self.metrics, checkpoint=tune.Checkpoint.from_directory(self.best_weights))
        finally:
            shutil.rmtree(self.best_weights, ignore_errors=True)


class ReportToTune(UserCallback):
    """Ray Train callback (run in the trial's Train controller): every epoch, rank 0's metrics with the path of
    the epoch's checkpoint, and on improving epochs a link to its best weights, into `queue` (one at a time:
    the controller waits while the trial function still holds the previous epoch)."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        reported = dict(metrics[0])
        improved = bool(reported.pop(IMPROVED_KEY, False))
        best = None
        if checkpoint is not None:
            reported[CHECKPOINT_PATH_KEY] = checkpoint.path
            weights = Path(checkpoint.path) / BEST_FILE
            if improved and weights.is_file():
                best = str(link_best_weights(weights))
        self.queue.put(Epoch(reported, best))


class TrainToTune:
    """What connects one multi-worker trial's TorchTrainer to its Tune trial: `callback` goes into the trainer's
    RunConfig and `acks` to its workers (TrainSession), then `fit(trainer)` trains and reports."""

    def __init__(self) -> None:
        from ray.util.queue import Queue

        self.queue = Queue(maxsize=1, actor_options={"num_cpus": 0})
        self.acks = Queue(actor_options={"num_cpus": 0})
        self.callback = ReportToTune(self.queue)

    def fit(self, trainer: Any) -> None:
        """Run `trainer.fit()` in a thread and report every epoch it passes on from this one (the trial's own
        thread, where Tune stops a trial at a report), acknowledging each epoch to the workers once Tune let the
        trial go on; re-raise what `fit` raised."""
        failures: list[BaseException] = []

        def fit() -> None:
            try:
                trainer.fit()
            except BaseException as error:  # re-raised in the trial's thread below
                failures.append(error)
            finally:
                self.queue.put(None)

        thread = threading.Thread(target=fit, name="raysearch-train-fit", daemon=True)
        thread.start()
        while (epoch := self.queue.get()) is not None:
            epoch.report()
            self.acks.put(epoch.metrics["epoch"])
        thread.join()
        if failures:
            raise failures[0]
