"""What the training loop does with `class_balance` and `patience`, observed in what it reports (no Ray: the loop
runs in this process with `RecordingSession`). With lr 0 the network never changes, so the epoch's loss shows
exactly which rows were trained on and how they were weighted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from recording_session import RecordingSession
from torch.nn import functional as F

from raysearch.data.cache import CachedDataset, dataset_fingerprint, ensure_cache, load_cache
from raysearch.data.formats import load_dataset
from raysearch.data.phantom import PhantomSpec, write_phantom
from raysearch.layout import STATE_FILE
from raysearch.results import TrialRecord, trial_status
from raysearch.tasks import create_task
from raysearch.trained import build_model, load_weights
from raysearch.training.hparams import defaults, preprocessing_of
from raysearch.training.loop import LoopSettings, make_batch, train

TRAIN_IMAGES = 16  # phantom classes 3, 3, 3, 3, 2, 2: unequal, so inverse-frequency weights are not all 1


@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory) -> CachedDataset:
    root = write_phantom(tmp_path_factory.mktemp("phantom") / "data", PhantomSpec(TRAIN_IMAGES, 8, 4, image_size=32),
                         progress=False)
    index = load_dataset(root)
    directory, _ = ensure_cache(index, dataset_fingerprint(index), preprocessing_of({**defaults({}), "image_size": 32}),
                                tmp_path_factory.mktemp("cache"), progress=False)
    return load_cache(directory)


def _hp(**changes: Any) -> dict[str, Any]:
    """A tiny frozen classifier: lr 0, no dropout or batch norm (nothing changes between epochs or runs)."""
    return {**defaults(create_task("classification").hyperparameters), "image_size": 32, "conv_layers": 2, "width": 8,
            "lr": 0.0, "dropout": 0.0, "batch_norm": False, "batch_size": TRAIN_IMAGES, **changes}


def _run(data: CachedDataset, hp: dict[str, Any], epochs: int, kept: Path | None = None) -> list[dict[str, Any]]:
    session = RecordingSession(kept)
    train(hp, LoopSettings("classification", str(data.directory), max_epochs=epochs, seed=0), session)
    return session.metrics


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


def test_a_trial_stops_at_the_patience_epoch_and_is_recorded_early_stopped(cached: CachedDataset) -> None:
    # lr 0: the validation score never beats epoch 1, so with patience 2 the trial stops after epoch 3
    epochs = _run(cached, _hp(patience=2), 6)
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert [e["stopped_early"] for e in epochs] == [0.0, 0.0, 1.0]
    assert trial_status(TrialRecord("stopped", {}, epochs=epochs), max_epochs=6) == "EARLY_STOPPED"

    patient = _run(cached, _hp(patience=0), 4)
    assert [e["epoch"] for e in patient] == [1, 2, 3, 4] and not any(e["stopped_early"] for e in patient)
    assert trial_status(TrialRecord("patient", {}, epochs=patient), max_epochs=4) == "COMPLETED"
