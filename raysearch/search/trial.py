"""The Tune trial function: one configuration, trained in-process (1 worker) or by a TorchTrainer (N)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raysearch.core.schema import HParams
from raysearch.data.cache import ensure_cache
from raysearch.data.samples import DatasetIndex
from raysearch.search.resources import TrialShape
from raysearch.tasks import create_task
from raysearch.training.callbacks import Monitor
from raysearch.training.hparams import preprocessing_of, schema
from raysearch.training.session import TuneSession, discard_leftovers
from raysearch.training.trainer import LoopSettings, train


@dataclass(frozen=True)
class TrialSettings:
    """Study-wide settings every trial shares (sent once through the object store)."""

    task: str
    defaults: dict[str, Any]
    index: DatasetIndex
    fingerprint: str
    cache_root: str
    storage_path: str
    max_epochs: int
    seed: int
    workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    max_failures: int
    monitor: Monitor  # the study's metric and mode: what decides each trial's best epoch

    @property
    def shape(self) -> TrialShape:
        """The resources one trial reserves."""
        return TrialShape(self.workers, self.cpus_per_worker, self.gpus_per_worker)



def train_worker(config: dict[str, Any]) -> None:
    """What each Ray Train worker runs: the training loop on {"hp": ..., "loop": LoopSettings, "acks": the trial's
    TrainToTune.acks}."""
    from raysearch.training.session import TrainSession

    train(config["hp"], config["loop"], TrainSession(config["acks"]))


def run_trial(config: dict[str, Any], settings: TrialSettings) -> None:
    """Train one sampled configuration (validated and frozen as HParams); reports every epoch to Tune. A trial
    that Tune restarts after its driver died, and whose folder shows it had already finished, reports its last
    epoch again (marked FINISHED_BEFORE) and stops: its record is on disk, nothing is trained again."""
    from ray import tune

    from raysearch.search.history import FINISHED_BEFORE, has_finished, recorded_epochs

    trial_id = tune.get_context().get_trial_id()
    if has_finished(Path(settings.storage_path), trial_id, settings.max_epochs):
        tune.report({**recorded_epochs(Path(settings.storage_path), trial_id)[-1], FINISHED_BEFORE: True})
        return
    hp = HParams(schema(create_task(settings.task).hyperparameters), {**settings.defaults, **config},
                 where=f"trial {trial_id}")
    cache_dir, hit = ensure_cache(settings.index, settings.fingerprint, preprocessing_of(hp), Path(settings.cache_root),
                                progress=False)
    trial_dir = Path(settings.storage_path) / trial_id
    loop = LoopSettings(settings.task, str(cache_dir), settings.max_epochs, settings.seed,
                        threads=max(int(settings.cpus_per_worker), 1), cache_hit=hit, scratch_dir=str(trial_dir),
                        monitor=settings.monitor)
    use_gpu = settings.gpus_per_worker > 0
    discard_leftovers(trial_dir)
    if settings.workers == 1:
        train(hp, loop, TuneSession(use_gpu=use_gpu, directory=trial_dir))
        return
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from raysearch.search.train_reports import TrainToTune

    to_tune = TrainToTune()
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"hp": hp, "loop": loop, "acks": to_tune.acks},
        scaling_config=ScalingConfig(num_workers=settings.workers, use_gpu=use_gpu,
                                     resources_per_worker=settings.shape.worker()),
        run_config=RunConfig(
            name=trial_id,
            storage_path=settings.storage_path,
            # A worker group that cannot start within RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S fails the trial (Tune
            # retries it per --max-failures) instead of being retried forever, Ray Train's default.
            failure_config=FailureConfig(max_failures=settings.max_failures, controller_failure_limit=0),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            callbacks=[to_tune.callback],
        ),
    )
    to_tune.fit(trainer)
