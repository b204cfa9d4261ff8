"""Segmentation: a binary mask per image with a segmentation_models_pytorch network.

The mask is the cache's: the dataset's own mask files where it has them (the phantom's bone masks), else
its polygons rasterised (the fracture regions of YOLO data). Hyperparameters: `architecture` (unet,
unetplusplus, fpn, or any smp architecture), `encoder` (an smp encoder name or tu-<timm name>),
`seg_loss` (dice, bce, focal, dice_focal — the reference choice — or dice_bce, from smp.losses).
`image_size` must suit the architecture: U-Net++ and FPN need a multiple of 32 (refused with a
ConfigError naming image_size otherwise; nothing is rounded).

Metrics: foreground IoU, F1 (= Dice), precision and recall from smp.metrics, computed once from pixel
counts (true/false positives/negatives) summed over the whole validation split and every worker, so
every pixel weighs the same. val_loss is the per-pixel binary cross-entropy whatever `seg_loss` trains,
so validation losses compare across trials. val_score = IoU. The surface distances (HD95, ASSD: MONAI,
`tasks.metrics.surface_distances`) are test figures only: about 0.1 s an image on a CPU, too slow per epoch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from raysearch.core.schema import checked, choice
from raysearch.models import create_segmentation_model
from raysearch.models.segmentation import architecture_problem, encoder_problem
from raysearch.tasks.base import Batch, Task, TaskContext
from raysearch.tasks.losses import SEGMENTATION_LOSSES, segmentation_loss
from raysearch.tasks.metrics import mask_counts, mask_metrics
from raysearch.tasks.registry import register_task


@register_task
class SegmentationTask(Task):
    """Binary mask from an encoder-decoder network."""

    name = "segmentation"
    hyperparameters = {"architecture": checked("unet", architecture_problem),
                       "encoder": checked("resnet18", encoder_problem),
                       "seg_loss": choice("dice_focal", SEGMENTATION_LOSSES)}
    needs = ("mask",)

    def build_model(self, hp: Mapping[str, Any], context: TaskContext) -> nn.Module:
        return create_segmentation_model(hp["architecture"], hp["encoder"], in_channels=context.in_channels,
                                         image_size=hp["image_size"], pretrained=hp["pretrained"],
                                         dropout=hp["dropout"])

    def loss(
        self, model: nn.Module, output: Any, batch: Batch, hp: Mapping[str, Any], context: TaskContext
    ) -> torch.Tensor:
        return segmentation_loss(hp["seg_loss"])(output["mask"], batch["mask"])

    def metric_sums(self, output: Any, batch: Batch, context: TaskContext) -> dict[str, torch.Tensor]:
        logits, masks = output["mask"], batch["mask"]
        per_image = F.binary_cross_entropy_with_logits(logits, masks, reduction="none").mean(dim=(1, 2, 3))
        return {"mask_loss": per_image.sum(), "count": torch.tensor(float(len(masks)), device=masks.device),
                "pixels": mask_counts(logits, masks)}

    def summarise(self, sums: dict[str, torch.Tensor], context: TaskContext) -> dict[str, float]:
        metrics = mask_metrics(sums["pixels"])
        return {"loss": sums["mask_loss"].item() / max(sums["count"].item(), 1.0), "score": self.score_of(metrics),
                **metrics}

    def score_of(self, figures: Mapping[str, Any]) -> Any:
        return figures["iou"]
