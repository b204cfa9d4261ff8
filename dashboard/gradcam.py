"""Grad-CAM heat maps (the `grad-cam` package) for models with a class head. Imported only when asked
for, since it brings in torch and the model code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import streamlit as st
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from raysearch.core.files import inside
from raysearch.core.layout import StudyFolder
from raysearch.dashboard.logic import study_distributions, typed_params
from raysearch.errors import DataError
from raysearch.inference.restore import build_model, model_input, trial_hyperparameters
from raysearch.tasks import create_task
from raysearch.training.checkpoints import load_weights
from raysearch.training.hparams import preprocessing_of

MIN_CAM_SIDE = 4


class ClassLogits(nn.Module):
    """A task model seen through its class logits only, as Grad-CAM expects."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)["logits"]


@st.cache_resource(show_spinner="Loading the trial's checkpoint…", max_entries=4)
def trial_model(root: str, directory: str, trial_id: str, _spec: dict[str, Any],
                _row: pd.Series) -> tuple[nn.Module, dict[str, Any]]:
    """A trial's network with its best checkpoint (which must lie inside the results folder), and its hp."""
    checkpoint = StudyFolder(Path(directory)).best_checkpoint(trial_id)
    if checkpoint is None:
        raise DataError(f"trial {trial_id}: no checkpoint in {directory}")
    checkpoint = inside(Path(root), checkpoint)
    params = {f"param.{k}": v for k, v in typed_params(_row, study_distributions(_spec)).items()}
    hp = trial_hyperparameters(_spec, params)
    network = build_model(create_task(_spec["task"]), hp, len(_spec["data"]["classes"]))
    return load_weights(network, checkpoint, torch.device("cpu")), hp


def target_layer(network: nn.Module, images: torch.Tensor) -> nn.Module:
    """The deepest convolution whose output still has at least MIN_CAM_SIDE pixels a side (small inputs
    shrink to 1×1 in the last layers, where a heat map has nothing to show), else the first one."""
    sides: dict[nn.Module, int] = {}
    convolutions = [m for m in network.modules() if isinstance(m, nn.Conv2d)]
    hooks = [m.register_forward_hook(lambda m, _, out: sides.__setitem__(m, min(out.shape[-2:])))
             for m in convolutions]
    with torch.no_grad():
        network(images)
    for hook in hooks:
        hook.remove()
    wide = [m for m in convolutions if sides.get(m, 0) >= MIN_CAM_SIDE]
    return wide[-1] if wide else convolutions[0]


def heat_map(network: nn.Module, hp: dict[str, Any], view: np.ndarray, class_id: int) -> np.ndarray:
    """The Grad-CAM of `class_id` over the grey view image, as RGB uint8."""
    tensor, _ = model_input(view, preprocessing_of(hp))
    layer = target_layer(network, tensor)
    with torch.enable_grad(), GradCAM(model=ClassLogits(network), target_layers=[layer]) as cam:
        grey = cam(input_tensor=tensor, targets=[ClassifierOutputTarget(class_id)])[0]
    heat = cv2.resize(grey, (view.shape[1], view.shape[0]), interpolation=cv2.INTER_LINEAR)
    rgb = cv2.cvtColor(view, cv2.COLOR_GRAY2RGB).astype(np.float32) / 255.0
    return show_cam_on_image(rgb, heat, use_rgb=True, image_weight=0.6)
