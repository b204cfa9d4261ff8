"""Training-time augmentation that keeps labels true: image, mask and polygon move together (kornia, batched).

One hyperparameter, `augment` in [0, 1], scales every magnitude and probability; 0 turns augmentation
off. At strength 1:

| step                     | probability | magnitude                                       |
| ------------------------ | ----------- | ----------------------------------------------- |
| horizontal flip          | 0.5         |                                                 |
| vertical flip            | 0.25        |                                                 |
| affine                   | 0.8         | rotation ±20°, translation ±10 %, scale ±20 %   |
| perspective              | 0.3         | distortion 0.3                                  |
| brightness and contrast  | 0.8         | ±30 % each                                      |
| gamma                    | 0.5         | gamma in [1/1.5, 1.5]                           |
| Gaussian noise           | 0.5         | sigma 0.04 of the intensity range               |
| Gaussian blur            | 0.3         | 3×3 kernel, sigma up to 1.1 pixels              |

A whole batch is augmented at once, on the device its tensors are on (the trial's GPU, or the CPU), each
sample with its own random parameters (kornia's `AugmentationSequential`, parameters drawn from torch's
global generator). Geometric steps move the mask (nearest-neighbour) and the polygon's points (key
points); photometric steps touch the image only. A flip reverses the points' turning direction and a
rotation changes which point is top-left, so every augmented polygon is put back in canonical order
(`canonical_order_batch`); rows without a polygon (NaN) keep NaN.
"""

from __future__ import annotations

import kornia.augmentation as K
import torch
from torch import nn

from raysearch.errors import ConfigError


def augmentation_pipeline(strength: float) -> K.AugmentationSequential:
    """The kornia pipeline for one strength in [0, 1] (see the module docstring for the table at strength 1)."""
    s = strength
    return K.AugmentationSequential(
        K.RandomHorizontalFlip(p=0.5 * s),
        K.RandomVerticalFlip(p=0.25 * s),
        K.RandomAffine(degrees=20 * s, translate=(0.1 * s, 0.1 * s), scale=(1 - 0.2 * s, 1 + 0.2 * s), p=0.8 * s),
        K.RandomPerspective(distortion_scale=0.3 * s, p=0.3 * s),
        K.ColorJitter(brightness=0.3 * s, contrast=0.3 * s, p=0.8 * s),
        K.RandomGamma(gamma=(1 / (1 + 0.5 * s), 1 + 0.5 * s), p=0.5 * s),
        K.RandomGaussianNoise(std=0.04 * s, p=0.5 * s),
        K.RandomGaussianBlur(3, sigma=(0.1, 0.1 + 1.0 * s), p=0.3 * s),
        data_keys=["image", "mask", "keypoints"],
    )


def canonical_order_batch(points: torch.Tensor) -> torch.Tensor:
    """`polygons.canonical_order` for a batch (N, K, 2): clockwise on screen, starting from the top-left point."""
    x, y = points[..., 0], points[..., 1]
    area = (x * y.roll(-1, dims=1) - x.roll(-1, dims=1) * y).sum(dim=1)
    points = torch.where((area < 0)[:, None, None], points.flip(1), points)
    start = (points[..., 0] + points[..., 1]).argmin(dim=1)
    order = (start[:, None] + torch.arange(points.shape[1], device=points.device)) % points.shape[1]
    return points.gather(1, order[..., None].expand(-1, -1, 2))


class Augmentation:
    """Augments a batch at once on its own device, every sample with its own random parameters."""

    def __init__(self, strength: float) -> None:
        if not 0.0 <= strength <= 1.0:
            raise ConfigError(f"augment: must be between 0 and 1, got {strength}")
        self.strength = strength
        self.transform: nn.Module = augmentation_pipeline(strength)

    def __call__(
        self, images: torch.Tensor, masks: torch.Tensor, polygons: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """uint8 images (N, H, W), uint8 masks (N, H, W), float polygons (N, 8) normalised and NaN where absent
        → float images in [0, 1] (N, H, W), uint8 masks (N, H, W), polygons (N, 8) in canonical order."""
        count, height, width = images.shape
        scale = torch.tensor([width, height], dtype=torch.float32, device=images.device)
        absent = polygons.isnan().any(dim=1)
        # Normalised coordinates cover pixel edges; kornia's key points sit on pixel centres.
        points = torch.where(absent[:, None], 0.0, polygons).reshape(count, -1, 2) * scale - 0.5
        moved_images, moved_masks, moved_points = self.transform(
            images[:, None].float().div_(255.0), masks[:, None].float(), points)
        polygons = canonical_order_batch((moved_points + 0.5) / scale).reshape(count, -1)
        return (moved_images[:, 0].clamp_(0.0, 1.0), moved_masks[:, 0].round_().to(torch.uint8),
                torch.where(absent[:, None], torch.nan, polygons))


def augmentation_for(strength: float) -> Augmentation | None:
    """The augmentation of a trial, or None when its strength is 0 (training batches then pass untouched)."""
    return Augmentation(strength) if strength > 0 else None
