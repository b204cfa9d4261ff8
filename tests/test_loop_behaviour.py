"""What the training loop does with `class_balance` and `patience`, observed in what it reports (no Ray: the loop
runs in this process with `LocalSession`). With lr 0 the network never changes, so the epoch's loss shows
exactly which rows were trained on and how they were weighted."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import cached_phantom
from torch.nn import functional as F

from raysearch.core.layout import BEST_FILE, EPOCH_STAGING_PREFIX, STATE_FILE, WEIGHTS_KEY
from raysearch.data.cache import CachedDataset
from raysearch.data.phantom import PhantomSpec
from raysearch.inference.restore import build_model
from raysearch.search.results import TrialRecord, trial_status
from raysearch.tasks import create_task
from raysearch.training.batches import make_batch
from raysearch.training.callbacks import BestWeights, Callback, EarlyStopping, Fitting, Monitor, Reporting
from raysearch.training.checkpoints import load_weights
from raysearch.training.hparams import defaults
from raysearch.training.session import LocalSession
from raysearch.training.trainer import LoopSettings, Trainer, train

TRAIN_IMAGES = 16  # phantom classes 3, 3, 3, 3, 2, 2: unequal, so inverse-frequency weights are not all 1


@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory) -> CachedDataset:
    return cached_phantom(tmp_path_factory, PhantomSpec(TRAIN_IMAGES, 8, 4, image_size=32))


def _hp(**changes: Any) -> dict[str, Any]:
    """A tiny frozen classifier: lr 0, no dropout or batch norm (nothing changes between epochs or runs)."""
    return {**defaults(create_task("classification").hyperparameters), "image_size": 32, "conv_layers": 2, "width": 8,
            "lr": 0.0, "dropout": 0.0, "batch_norm": False, "batch_size": TRAIN_IMAGES, **changes}


def _settings(data: CachedDataset, epochs: int) -> LoopSettings:
    return LoopSettings("classification", str(data.directory), max_epochs=epochs, seed=0)


def _run(data: CachedDataset, hp: dict[str, Any], epochs: int, kept: Path | None = None,
         resume_from: Path | None = None) -> list[dict[str, Any]]:
    session = LocalSession(kept=kept, resume_from=resume_from)
    train(hp, _settings(data, epochs), session)
    return session.history


def test_class_balance_weights_the_training_loss_by_inverse_class_frequency(cached: CachedDataset,
                                                                             tmp_path: Path) -> None:
    data = cached
    plain = _run(data, _hp(class_balance="none"), 1, kept=tmp_path)[0]["train_loss"]
    weighted = _run(data, _hp(class_balance="weighted_loss"), 1)[0]["train_loss"]
    sampled = _run(data, _hp(class_balance="sampler"), 1)[0]["train_loss"]
    assert _run(data, _hp(class_balance="none"), 1)[0]["train_loss"] == plain  # the run itself is deterministic

    # the per-image cross-entropy of the (frozen) network the loop trained, on the epoch's one batch
    task, rows = create_task("classification"), data.indices("train")
    model = load_weights(build_model(task, _hp(), len(data.classes)), tmp_path / "epoch_1" / STATE_FILE,
                         torch.device("cpu"))
    batch = make_batch(data, rows, _hp(), torch.device("cpu"))
    with torch.no_grad():
        per_image = F.cross_entropy(model(batch["image"])["logits"], batch["label"], reduction="none").numpy()
    labels = batch["label"].numpy()
    counts = np.bincount(labels, minlength=len(data.classes))
    weight = len(labels) / (np.count_nonzero(counts) * counts[labels])  # N / (K · n_c) for each image's class
    assert plain == pytest.approx(per_image.mean(), rel=1e-5)
    assert weighted == pytest.approx((weight * per_image).sum() / weight.sum(), rel=1e-5)
    assert abs(weighted - plain) > 1e-4
    # the balanced sampler draws the epoch with replacement, favouring rare classes: other images, other loss
    assert abs(sampled - plain) > 1e-4 and abs(sampled - weighted) > 1e-4


def test_a_trial_stops_at_the_patience_epoch_and_is_recorded_early_stopped(cached: CachedDataset,
                                                                           tmp_path: Path) -> None:
    # lr 0: the validation score never beats epoch 1, so with patience 2 the trial stops after epoch 3
    epochs = _run(cached, _hp(patience=2), 6, kept=tmp_path)
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert [e["stopped_early"] for e in epochs] == [0.0, 0.0, 1.0]
    assert trial_status(TrialRecord("stopped", {}, epochs=epochs), max_epochs=6) == "EARLY_STOPPED"
    assert _run(cached, _hp(patience=2), 6, resume_from=tmp_path / "epoch_3") == []  # restored stopped: no more
    assert [e["epoch"] for e in _run(cached, _hp(patience=1), 6)] == [1, 2]

    patient = _run(cached, _hp(patience=0), 4)
    assert [e["epoch"] for e in patient] == [1, 2, 3, 4] and not any(e["stopped_early"] for e in patient)
    assert trial_status(TrialRecord("patient", {}, epochs=patient), max_epochs=4) == "COMPLETED"


def test_a_resumed_trial_restores_its_whole_state_and_continues_as_if_never_stopped(cached: CachedDataset,
                                                                                   tmp_path: Path) -> None:
    hp = _hp(lr=0.05, scheduler="cosine", patience=5)  # learning: weights, Adam's moments and the LR all move
    whole = LocalSession(kept=tmp_path)
    train(hp, _settings(cached, 3), whole)
    saved = torch.load(tmp_path / "epoch_1" / STATE_FILE, weights_only=True)
    session = LocalSession(resume_from=tmp_path / "epoch_1")
    trainer = Trainer(hp, _settings(cached, 3), session)
    trainer.restore()
    assert trainer.epoch == 1 and not trainer.should_stop
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(tensor, saved[WEIGHTS_KEY][name]), name
    moments = trainer.optimizer.state_dict()["state"]
    assert moments.keys() == saved["optimizer"]["state"].keys() and len(moments) > 0
    for step, state in moments.items():
        assert all(torch.equal(value, saved["optimizer"]["state"][step][key]) for key, value in state.items())
    assert trainer.scheduler.state_dict() == saved["scheduler"]
    early, best, reporting = trainer.callbacks
    assert isinstance(early, EarlyStopping) and isinstance(best, BestWeights) and isinstance(reporting, Reporting)
    assert (early.best.value, early.stale) == (whole.history[0]["val_score"], 0)
    assert best.best.value == reporting.best.value == whole.history[0]["val_score"]
    assert best.weights is not None
    assert all(torch.equal(v, saved[WEIGHTS_KEY][k]) for k, v in best.weights.items())
    trainer.fit()
    timing = {"epoch_time_s", "latency_ms"}
    assert [{k: v for k, v in m.items() if k not in timing} for m in session.history] == [
        {k: v for k, v in m.items() if k not in timing} for m in whole.history[1:]]
    assert session.improved == whole.improved[1:]


class _ScriptedScore(Callback):
    """Writes a scripted `scripted` metric into each epoch's record: 1 in the `improving` epochs, else 0 (what the
    monitor then decides from)."""

    def __init__(self, improving: set[int]) -> None:
        self.improving = improving

    def on_validation_end(self, trainer: Fitting, metrics: dict[str, Any]) -> None:
        metrics["val_scripted"] = float(trainer.epoch in self.improving)


SCRIPTED = Monitor("val_scripted", "max")


def test_every_checkpoint_keeps_the_weights_of_the_best_epoch_so_far(cached: CachedDataset, tmp_path: Path) -> None:
    session = LocalSession(kept=tmp_path)
    Trainer(_hp(lr=0.05), _settings(cached, 3), session,
            callbacks=[_ScriptedScore({1}), BestWeights(SCRIPTED), Reporting(SCRIPTED)]).fit()
    assert session.improved == [True, False, False]
    assert [m["stopped_early"] for m in session.history] == [0.0, 0.0, 0.0]  # no early stopping among the callbacks

    def weights(epoch: int, file: str) -> dict[str, torch.Tensor]:
        return torch.load(tmp_path / f"epoch_{epoch}" / file, weights_only=True)[WEIGHTS_KEY]

    best_epoch = weights(1, STATE_FILE)
    for epoch in (1, 2, 3):
        best = weights(epoch, BEST_FILE)
        assert all(torch.equal(best[k], best_epoch[k]) for k in best_epoch), epoch
    latest = weights(3, STATE_FILE)
    assert any(not torch.equal(latest[k], best_epoch[k]) for k in best_epoch)  # the network did move on

    never = LocalSession(kept=tmp_path / "never")
    (tmp_path / "never").mkdir()
    nan = Monitor("val_never", "max")  # no epoch has this metric: NaN, which never improves
    Trainer(_hp(lr=0.05), _settings(cached, 1), never, callbacks=[BestWeights(nan), Reporting(nan)]).fit()
    assert sorted(p.name for p in (tmp_path / "never" / "epoch_1").iterdir()) == [STATE_FILE]  # no best weights yet


def test_the_grad_scaler_s_state_is_checkpointed_and_restored(cached: CachedDataset, tmp_path: Path) -> None:
    hp = _hp(precision="fp16")
    _run(cached, hp, 1, kept=tmp_path)
    state_file = tmp_path / "epoch_1" / STATE_FILE
    state = torch.load(state_file, weights_only=True)
    assert state["scaler"]["scale"] == torch.amp.GradScaler("cpu").get_scale()
    state["scaler"]["scale"] = 128.0  # as after a few overflowing fp16 steps
    torch.save(state, state_file)
    trainer = Trainer(hp, _settings(cached, 2), LocalSession(resume_from=tmp_path / "epoch_1"))
    trainer.restore()
    assert trainer.precision.scaler.get_scale() == 128.0


def test_augmentation_changes_the_training_batches_and_never_the_validation_ones(cached: CachedDataset) -> None:
    plain, augmented = _run(cached, _hp(), 1)[0], _run(cached, _hp(augment=1.0), 1)[0]
    assert abs(augmented["train_loss"] - plain["train_loss"]) > 1e-4  # lr 0: other images, other loss
    validation = [{k: v for k, v in m.items() if k.startswith("val_")} for m in (plain, augmented)]
    assert validation[0] == validation[1]


def test_epoch_schedulers_step_once_an_epoch_and_onecycle_once_a_batch(cached: CachedDataset) -> None:
    batches = 2  # 16 training images in batches of 8
    step = _run(cached, _hp(lr=0.1, scheduler="step", step_size=1, gamma=0.5, batch_size=8), 3)
    assert [e["lr"] for e in step] == pytest.approx([0.1, 0.05, 0.025])  # the LR each epoch trained with
    onecycle = _run(cached, _hp(lr=0.1, scheduler="onecycle", batch_size=8), 2)
    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=0.1)
    reference = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=2 * batches)
    expected = []
    for _ in range(2):
        for _ in range(batches):
            optimizer.step()
            reference.step()
        expected.append(optimizer.param_groups[0]["lr"])
    assert [e["lr"] for e in onecycle] == pytest.approx(expected)
    # plateau watches the validation loss: replaying the reported losses through torch's scheduler gives the LRs
    plateau = _run(cached, _hp(lr=0.1, scheduler="plateau", plateau_patience=0, gamma=0.5), 4)
    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=0.1)
    replay = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=0)
    replayed = []
    for epoch in plateau:
        replayed.append(optimizer.param_groups[0]["lr"])
        replay.step(epoch["val_loss"])
    assert [e["lr"] for e in plateau] == pytest.approx(replayed) and replayed[-1] < 0.1  # it did reduce


def test_a_diverged_trial_stops_after_patience_epochs_of_nan_scores(cached: CachedDataset, tmp_path: Path) -> None:
    trainer = Trainer(_hp(patience=2), _settings(cached, 6), LocalSession())
    early = trainer.callbacks[0]
    seen = []
    for _ in range(3):
        metrics = {"val_score": math.nan}  # NaN never beats anything: no epoch improves
        early.on_validation_end(trainer, metrics)
        seen.append((early.best.improved, metrics["stopped_early"], trainer.should_stop))
    assert seen == [(False, 0.0, False), (False, 1.0, True), (False, 1.0, True)]


class _StagingSession(LocalSession):
    """Records where each epoch's checkpoint was staged."""

    def __init__(self) -> None:
        super().__init__()
        self.staged: list[Path] = []

    def report(self, metrics: dict[str, Any], checkpoint: Path | None, *, improved: bool = False) -> None:
        super().report(metrics, checkpoint, improved=improved)
        self.staged.append(checkpoint)


def test_epochs_are_staged_in_the_trials_folder_never_in_the_temp_dir(cached: CachedDataset, tmp_path: Path) -> None:
    """A trial killed mid-epoch (SIGTERM, SIGKILL) leaves its staging in its own folder, which the trial's next start
    clears (raysearch.training.session.discard_leftovers), not a `raysearch-ckpt-*` in the temporary directory."""
    trial = tmp_path / "train" / "trial_1"
    session = _StagingSession()
    settings = LoopSettings("classification", str(cached.directory), max_epochs=2, seed=0, scratch_dir=str(trial))
    train(_hp(), settings, session)
    assert len(session.staged) == 2
    assert all(folder.parent == trial and folder.name.startswith(EPOCH_STAGING_PREFIX) for folder in session.staged)
    assert list(trial.iterdir()) == []  # each staging is gone once its epoch was reported
