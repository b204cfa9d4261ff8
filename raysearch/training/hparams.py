"""Every hyperparameter a trial understands, with its default; a task adds its own (Task.hyperparameters)."""

from __future__ import annotations

from typing import Any

from raysearch.data.preprocess import Preprocessing

MODEL = {"model": "vgg", "pretrained": False, "conv_layers": 4, "pool_every": 1, "width": 16, "batch_norm": True,
         "dropout": 0.2}
OPTIMISATION = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "momentum": 0.9, "batch_size": 32,
                "scheduler": "none", "step_size": 3, "gamma": 0.5, "warmup_epochs": 0, "plateau_patience": 2,
                "patience": 0}
PREPROCESSING = {name: value for name, value in Preprocessing().__dict__.items()}
AUGMENTATION = {"augment": 0.0, "class_balance": "none"}
CLASS_BALANCE = ("none", "weighted_loss", "sampler")


def defaults(task_hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """All defaults for a task: model, optimisation, preprocessing, augmentation, then the task's own."""
    return {**MODEL, **OPTIMISATION, **PREPROCESSING, **AUGMENTATION, **task_hyperparameters}


def preprocessing_of(hp: dict[str, Any]) -> Preprocessing:
    """The Preprocessing a trial's hyperparameters select."""
    return Preprocessing(**{name: hp[name] for name in PREPROCESSING})
