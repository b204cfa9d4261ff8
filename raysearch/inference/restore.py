"""The trained models of a finished study: each trial's hyperparameters, its best checkpoint, and the
network rebuilt from them. Paths are found inside the study folder, so a copied folder works too."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from raysearch.core.layout import BEST_FILE, StudyFolder
from raysearch.data.preprocess import Preprocessing, enhance, fit, normalise, placement
from raysearch.errors import ConfigError, DataError
from raysearch.tasks import create_task
from raysearch.tasks.base import Task, TaskContext
from raysearch.training.checkpoints import load_weights
from raysearch.training.hparams import defaults, preprocessing_of


def trial_hyperparameters(study: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """Every hyperparameter of one trial: today's defaults (for any added since the study ran), the study's
    defaults, its fixed values, then the sampled ones.

    `params` is a trials.parquet row (its `param.<name>` entries are used); None or NaN marks a
    conditional parameter the trial did not use.
    """
    sampled = {k.removeprefix("param."): v for k, v in params.items()
               if k.startswith("param.") and v is not None and v == v}
    current = defaults(create_task(study["task"]).hyperparameters)
    return {**current, **study["defaults"], **study["search_space"]["fixed"], **sampled}


def check_ensemble(study: Mapping[str, Any], members: list[Mapping[str, Any]], ensemble: int) -> None:
    """Refuse (ConfigError) an ensemble of more trials than finished, or of trials that see the images differently
    (`members`: their trials.parquet rows, best first)."""
    if len(members) < ensemble:
        raise ConfigError(f"--ensemble {ensemble}: the study has only {len(members)} finished trials")
    if not members:
        return
    first = trial_hyperparameters(study, members[0])
    for row in members[1:]:
        hp = trial_hyperparameters(study, row)
        if preprocessing_of(hp) != preprocessing_of(first):
            raise ConfigError(f"--ensemble {ensemble}: trial {row['trial_id']} preprocesses images differently from "
                              f"the best trial {members[0]['trial_id']} ({preprocessing_of(hp)} against "
                              f"{preprocessing_of(first)}); an ensemble needs one input")


def build_model(task: Task, hp: Mapping[str, Any], num_classes: int) -> nn.Module:
    """The task's network for `hp`, untrained (never fetches pretrained weights: they are loaded next)."""
    return task.build_model({**hp, "pretrained": False}, TaskContext(num_classes, hp["channels"], 0.0))


def restore_trial(study_dir: Path, study: Mapping[str, Any], trial_id: str, params: Mapping[str, Any],
                  device: torch.device) -> tuple[Task, nn.Module, dict[str, Any]]:
    """A trial's task, its network with the best checkpoint's weights, and its hyperparameters."""
    checkpoint = StudyFolder(study_dir).best_checkpoint(trial_id)
    if checkpoint is None:
        raise DataError(f"{study_dir}: trial {trial_id} has no checkpoint with {BEST_FILE}")
    task = create_task(study["task"])
    hp = trial_hyperparameters(study, params)
    model = build_model(task, hp, len(study["data"]["classes"]))
    return task, load_weights(model, checkpoint, device), hp


def model_input(image: np.ndarray, preprocessing: Preprocessing) -> tuple[torch.Tensor, Any]:
    """A grey uint8 image of any size as the (1, C, S, S) input a model was trained on, and its placement."""
    height, width = image.shape
    where = placement(width, height, preprocessing.image_size, preprocessing.resize)
    pixels = enhance(fit(image, where), preprocessing)
    return normalise(pixels[None], preprocessing), where


