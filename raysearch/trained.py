"""The trained models of a finished study: each trial's hyperparameters, its best checkpoint, and the
network rebuilt from them. Paths are found inside the study folder, so a copied folder works too."""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from raysearch.data.preprocess import Preprocessing, enhance, fit, normalise, placement
from raysearch.errors import DataError
from raysearch.layout import BEST_FILE, WEIGHTS_KEY, StudyFolder
from raysearch.tasks import create_task
from raysearch.tasks.base import Task, TaskContext
from raysearch.training.hparams import defaults


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


def build_model(task: Task, hp: Mapping[str, Any], num_classes: int) -> nn.Module:
    """The task's network for `hp`, untrained (never fetches pretrained weights: they are loaded next)."""
    return task.build_model({**hp, "pretrained": False}, TaskContext(num_classes, hp["channels"], 0.0))


def read_weights(path: Path, device: torch.device) -> dict[str, torch.Tensor]:
    """The network state dict in a weights file (best_model.pt, weights.pt), loaded with `weights_only=True`;
    a DataError naming the file when it is truncated or not a weights file."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except (RuntimeError, EOFError, ValueError, OSError, pickle.UnpicklingError) as error:
        raise DataError(f"{path}: not a readable weights file, truncated or damaged ({_line(error, 0)})") from None
    if not isinstance(state, dict) or not isinstance(state.get(WEIGHTS_KEY), dict):
        raise DataError(f"{path}: not a raysearch weights file (no {WEIGHTS_KEY!r} state dict)")
    return state[WEIGHTS_KEY]


def load_weights(model: nn.Module, path: Path, device: torch.device) -> nn.Module:
    """Load a weights file (see read_weights) into `model`, in eval mode; a DataError naming the file when
    the weights belong to another network."""
    weights = read_weights(path, device)
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise DataError(f"{path}: the weights do not fit the network its configuration builds "
                        f"({_line(error, 1)})") from None
    return model.to(device).eval()


def _line(error: BaseException, index: int) -> str:
    """Line `index` of an error's message (the last one if it has fewer), shortened."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    return lines[min(index, len(lines) - 1)][:200]


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


def device() -> torch.device:
    """The first CUDA GPU when there is one, else the CPU."""
    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
