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
sample with its own random parameters drawn by kornia's augmentations from torch's global generator.
The geometric steps' matrices (kornia's, identity where a step is not drawn) are composed into one
homography per sample, so the image (bilinear) and the mask (nearest-neighbour) are warped once, not once
per step (the warps are most of augmentation's cost on a CPU), and the polygon's points move as key points
by the same homography. Photometric steps touch the image only. A flip reverses the points' turning
direction and a rotation changes which point is top-left, so every augmented polygon is put back in
canonical order (`canonical_order_batch`); rows without a polygon (NaN) keep NaN.
"""

from __future__ import annotations

import kornia.augmentation as K
import torch
from kornia.geometry.linalg import transform_points
from kornia.geometry.transform import warp_perspective
from torch import nn

from raysearch.errors import ConfigError


def geometric_steps(strength: float) -> list[K.GeometricAugmentationBase2D]:
    """The geometric steps for one strength in [0, 1], in the order they apply (see the module's table)."""
    s = strength
    return [
        K.RandomHorizontalFlip(p=0.5 * s),
        K.RandomVerticalFlip(p=0.25 * s),
        K.RandomAffine(degrees=20 * s, translate=(0.1 * s, 0.1 * s), scale=(1 - 0.2 * s, 1 + 0.2 * s), p=0.8 * s),
        K.RandomPerspective(distortion_scale=0.3 * s, p=0.3 * s),
    ]


def photometric_steps(strength: float) -> nn.Sequential:
    """The photometric steps for one strength in [0, 1] (images only; see the module's table)."""
    s = strength
    return nn.Sequential(
        K.ColorJitter(brightness=0.3 * s, contrast=0.3 * s, p=0.8 * s),
        K.RandomGamma(gamma=(1 / (1 + 0.5 * s), 1 + 0.5 * s), p=0.5 * s),
        K.RandomGaussianNoise(std=0.04 * s, p=0.5 * s),
        K.RandomGaussianBlur(3, sigma=(0.1, 0.1 + 1.0 * s), p=0.3 * s),
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
        self.geometric = geometric_steps(strength)
        self.photometric = photometric_steps(strength)
        self.device = torch.device("cpu")

    def _follow(self, device: torch.device) -> None:
        """Draw the random parameters on the batch's device (no host-to-GPU copy of them per step)."""
        if device != self.device:
            for step in [*self.geometric, self.photometric]:
                step.to(device)
            self.device = device

    def homographies(self, images: torch.Tensor) -> torch.Tensor:
        """One drawn 3×3 pixel-coordinate homography per sample (N, 3, 3): the geometric steps composed."""
        total = torch.eye(3, device=images.device).expand(len(images), 3, 3)
        for step in self.geometric:
            params = step.forward_parameters(images.shape)
            total = step.generate_transformation_matrix(images, params, step.flags) @ total
        return total

    def __call__(
        self, images: torch.Tensor, masks: torch.Tensor, polygons: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """uint8 images (N, H, W), uint8 masks (N, H, W), float polygons (N, 8) normalised and NaN where absent
        → float images in [0, 1] (N, H, W), uint8 masks (N, H, W), polygons (N, 8) in canonical order."""
        count, height, width = images.shape
        self._follow(images.device)
        pixels = images[:, None].float().div_(255.0)
        homography = self.homographies(pixels)
        # Pixel centres sit on integer coordinates (align_corners): a flip maps pixels exactly onto pixels.
        pixels = warp_perspective(pixels, homography, (height, width), mode="bilinear", align_corners=True)
        moved_masks = warp_perspective(masks[:, None].float(), homography, (height, width), mode="nearest",
                                       align_corners=True)
        pixels = self.photometric(pixels)
        scale = torch.tensor([width, height], dtype=torch.float32, device=images.device)
        absent = polygons.isnan().any(dim=1)
        # Normalised coordinates cover pixel edges; pixel coordinates here are pixel centres.
        points = torch.where(absent[:, None], 0.0, polygons).reshape(count, -1, 2) * scale - 0.5
        moved = canonical_order_batch((transform_points(homography, points) + 0.5) / scale).reshape(count, -1)
        return (pixels[:, 0].clamp_(0.0, 1.0), moved_masks[:, 0].round_().to(torch.uint8),
                torch.where(absent[:, None], torch.nan, moved))


def augmentation_for(strength: float) -> Augmentation | None:
    """The augmentation of a trial, or None when its strength is 0 (training batches then pass untouched)."""
    return Augmentation(strength) if strength > 0 else None
