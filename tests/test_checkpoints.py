"""Checkpoints: a received checkpoint cannot run code (`weights_only=True` wherever one is loaded), and a
checkpoint is published atomically (a failed copy leaves the previous one whole)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

from raysearch.core.layout import STATE_FILE
from raysearch.data.cache import dataset_fingerprint, ensure_cache
from raysearch.data.formats import load_dataset
from raysearch.data.phantom import PhantomSpec, write_phantom
from raysearch.errors import DataError
from raysearch.inference.restore import build_model
from raysearch.tasks import create_task
from raysearch.training.checkpoints import load_weights
from raysearch.training.hparams import defaults, preprocessing_of
from raysearch.training.session import LocalSession, latest_checkpoint, publish_checkpoint
from raysearch.training.trainer import LoopSettings, train


class _Payload:
    """Unpickled, it creates the folder `marker`: proof that code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return os.mkdir, (str(self.marker),)


def _crafted(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": _Payload(marker), "epoch": 1}, path)
    return path


def _hp() -> dict[str, Any]:
    return {**defaults(create_task("multitask").hyperparameters), "image_size": 32, "conv_layers": 2, "width": 8}


def test_a_checkpoint_carrying_a_pickled_payload_is_refused_and_its_code_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    weights = _crafted(tmp_path / "received" / "best_model.pt", marker)
    model = build_model(create_task("multitask"), _hp(), num_classes=6)
    with pytest.raises(DataError, match="best_model.pt: not a plain weights file.*raysearch will not unpickle it"
                       ) as refused:
        load_weights(model, weights, torch.device("cpu"))  # dashboard, evaluate, predict and export load this way
    assert "weights_only" not in str(refused.value) and "\n" not in str(refused.value)  # never the unsafe advice
    assert not marker.exists()

    data = write_phantom(tmp_path / "phantom", PhantomSpec(4, 2, 2, image_size=32), progress=False)
    index = load_dataset(data)
    cache, _ = ensure_cache(index, dataset_fingerprint(index), preprocessing_of(_hp()), tmp_path / "cache",
                            progress=False)
    checkpoint = _crafted(tmp_path / "restored" / STATE_FILE, marker).parent
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        train(_hp(), LoopSettings("multitask", str(cache), max_epochs=1, seed=0),
              LocalSession(resume_from=checkpoint))
    assert not marker.exists()

    torch.load(weights, weights_only=False)  # the payload is live: an unsafe load would have run it
    assert marker.is_dir()


def _checkpoint(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True)
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return folder


def test_a_copy_failing_midway_leaves_the_previous_checkpoint_whole(tmp_path: Path) -> None:
    trial = tmp_path / "train" / "trial_0001"
    first = _checkpoint(tmp_path / "epoch1", {"state.pt": b"epoch 1 weights", "history.json": b"[1]"})
    publish_checkpoint(first, trial, "checkpoint_000000")
    second = _checkpoint(tmp_path / "epoch2", {"history.json": b"[1, 2]", "state.pt": b"epoch 2 weights"})
    (second / "state.pt").unlink()
    (second / "state.pt").symlink_to(tmp_path / "vanished.pt")  # the OS refuses to read it: the copy fails midway
    with pytest.raises(OSError, match="No such file or directory"):
        publish_checkpoint(second, trial, "checkpoint_000001")
    kept = latest_checkpoint(trial)
    assert kept == trial / "checkpoint_000000"
    assert {p.name: p.read_bytes() for p in kept.iterdir()} == {"state.pt": b"epoch 1 weights",
                                                                "history.json": b"[1]"}
    assert not (trial / "checkpoint_000001").exists()

    (second / "state.pt").unlink()
    (second / "state.pt").write_bytes(b"epoch 2 weights")
    assert publish_checkpoint(second, trial, "checkpoint_000001") == latest_checkpoint(trial)
    assert sorted(p.name for p in trial.iterdir()) == ["checkpoint_000001"]  # the older and the unfinished go
    assert (trial / "checkpoint_000001" / "state.pt").read_bytes() == b"epoch 2 weights"
