"""Every hyperparameter a trial understands: its default, type and allowed values (raysearch.core.schema).

The allowed names come from the components' own registries (optimizers and schedulers in
raysearch.training.optim, losses in raysearch.tasks.losses, resize modes, filters and normalisations in
raysearch.data.preprocess, intensity windows in raysearch.data.images, model names from timm and smp); a task
adds its own (Task.hyperparameters). The same schema gives the defaults and validates search spaces
(raysearch.search.space) before anything runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, get_args

from raysearch.core.schema import HParam, checked, choice, defaults_of, flag, integer, real
from raysearch.data.images import INTENSITIES
from raysearch.data.preprocess import PRETRAINED, FilterName, Normalisation, Preprocessing, ResizeMode
from raysearch.training.optim import LR_SCHEDULERS, OPTIMIZERS

CLASS_BALANCE = ("none", "weighted_loss", "sampler")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")  # auto: bf16 on a GPU that supports it, else fp32
MIN_IMAGE_SIZE = 16


def _model_problem(family: str) -> str | None:
    from raysearch.models.factory import model_problem

    return model_problem(family)


def _weights_problem(pretrained: bool | str) -> str | None:
    if isinstance(pretrained, str) and not Path(pretrained).expanduser().is_file():
        return f"weights file {pretrained} not found"
    return None


MODEL_SCHEMA: dict[str, HParam] = {
    "model": checked("vgg", _model_problem),
    "pretrained": checked(False, _weights_problem, (bool, str)),
    "conv_layers": integer(4, 1, 32), "pool_every": integer(1, 1), "width": integer(16, 1), "batch_norm": flag(True),
    "dropout": real(0.2, 0.0, 1.0, high_open=True),
}
OPTIMISATION_SCHEMA: dict[str, HParam] = {
    "optimizer": choice("adam", OPTIMIZERS), "lr": real(1e-3, 0.0, low_open=True), "weight_decay": real(0.0, 0.0),
    "momentum": real(0.9, 0.0, 1.0, high_open=True), "batch_size": integer(32, 1),
    "scheduler": choice("none", tuple(LR_SCHEDULERS)), "step_size": integer(3, 1),
    "gamma": real(0.5, 0.0, 1.0, low_open=True),
    "warmup_epochs": integer(0, 0), "plateau_patience": integer(2, 0), "patience": integer(0, 0),
}
_PREPROCESSING_DEFAULTS = Preprocessing()
PREPROCESSING_SCHEMA: dict[str, HParam] = {
    "image_size": integer(_PREPROCESSING_DEFAULTS.image_size, MIN_IMAGE_SIZE),
    "intensity": choice(_PREPROCESSING_DEFAULTS.intensity, INTENSITIES),
    "resize": choice(_PREPROCESSING_DEFAULTS.resize, get_args(ResizeMode)),
    "clahe": flag(_PREPROCESSING_DEFAULTS.clahe),
    "clahe_clip": real(_PREPROCESSING_DEFAULTS.clahe_clip, 0.0, low_open=True),
    "clahe_grid": integer(_PREPROCESSING_DEFAULTS.clahe_grid, 1),
    "filter": choice(_PREPROCESSING_DEFAULTS.filter, get_args(FilterName)),
    "filter_size": integer(_PREPROCESSING_DEFAULTS.filter_size, 1),
    "normalisation": choice(_PREPROCESSING_DEFAULTS.normalisation, get_args(Normalisation)),
    "channels": integer(_PREPROCESSING_DEFAULTS.channels, 1),
}
AUGMENTATION_SCHEMA: dict[str, HParam] = {
    "augment": real(0.0, 0.0, 1.0), "class_balance": choice("none", CLASS_BALANCE),
}
HARDWARE_SCHEMA: dict[str, HParam] = {"precision": choice("auto", PRECISIONS)}
GROUPS = (MODEL_SCHEMA, OPTIMISATION_SCHEMA, PREPROCESSING_SCHEMA, AUGMENTATION_SCHEMA, HARDWARE_SCHEMA)
MODEL, OPTIMISATION, PREPROCESSING, AUGMENTATION, HARDWARE = (defaults_of(group) for group in GROUPS)  # defaults


def schema(task_hyperparameters: Mapping[str, HParam]) -> dict[str, HParam]:
    """Every hyperparameter of a task: model, optimisation, preprocessing, augmentation, hardware, then the task's
    own."""
    merged: dict[str, HParam] = {}
    for group in (*GROUPS, task_hyperparameters):
        merged.update(group)
    return merged


def defaults(task_hyperparameters: Mapping[str, HParam]) -> dict[str, Any]:
    """All defaults for a task (see `schema`)."""
    return defaults_of(schema(task_hyperparameters))


def pretrained_weights_of(hp: Mapping[str, Any]) -> tuple[str, bool] | None:
    """The model (or, with True, the segmentation encoder) whose pretrained weights a trial loads: None without
    `pretrained` or for the from-scratch 'vgg' family, which the model factory refuses."""
    if not hp.get("pretrained"):
        return None
    if "encoder" in hp:
        return hp["encoder"], True
    return None if hp["model"] == "vgg" else (hp["model"], False)


def preprocessing_of(hp: Mapping[str, Any]) -> Preprocessing:
    """The Preprocessing a trial's hyperparameters select; with pretrained weights, the input normalisation
    follows the weights' own mean and standard deviation instead of `normalisation`."""
    config = Preprocessing(**{name: hp[name] for name in PREPROCESSING_SCHEMA})
    weights = pretrained_weights_of(hp)
    if weights is None:
        return config
    from raysearch.models.hub import pretrained_statistics

    mean, std = pretrained_statistics(weights[0], encoder=weights[1])
    return replace(config, normalisation=PRETRAINED, mean=mean, std=std)
