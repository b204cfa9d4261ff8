"""Training-time augmentation that keeps labels true: image, mask and polygon move together (torchvision v2).

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

Geometric steps move the mask (nearest-neighbour) and the polygon's points (`tv_tensors.KeyPoints`);
photometric steps touch the image only. A flip reverses the points' turning direction and a rotation
changes which point is top-left, so every augmented polygon is put back in `canonical_order`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from raysearch.data.polygons import canonical_order
from raysearch.errors import ConfigError


class RandomGamma(v2.Transform):
    """Gamma correction with gamma drawn log-uniformly from [1 / (1 + spread), 1 + spread]; images only."""

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, spread: float) -> None:
        super().__init__()
        self.spread = spread

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        """Draw this call's gamma."""
        bound = math.log1p(self.spread)
        return {"gamma": math.exp(torch.empty(()).uniform_(-bound, bound).item())}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        """Apply the drawn gamma."""
        return self._call_kernel(F.adjust_gamma, inpt, gamma=params["gamma"])


def augmentation_pipeline(strength: float) -> v2.Compose:
    """The v2 pipeline for one strength in [0, 1] (see the module docstring for the table at strength 1)."""
    s = strength
    bilinear = v2.InterpolationMode.BILINEAR
    return v2.Compose([
        v2.RandomHorizontalFlip(p=0.5 * s),
        v2.RandomVerticalFlip(p=0.25 * s),
        v2.RandomApply([v2.RandomAffine(degrees=20 * s, translate=(0.1 * s, 0.1 * s), scale=(1 - 0.2 * s, 1 + 0.2 * s),
                                        interpolation=bilinear)], p=0.8 * s),
        v2.RandomPerspective(distortion_scale=0.3 * s, p=0.3 * s, interpolation=bilinear),
        v2.RandomApply([v2.ColorJitter(brightness=0.3 * s, contrast=0.3 * s)], p=0.8 * s),
        v2.RandomApply([RandomGamma(0.5 * s)], p=0.5 * s),
        v2.RandomApply([v2.GaussianNoise(sigma=0.04 * s)], p=0.5 * s),
        v2.RandomApply([v2.GaussianBlur(3, sigma=(0.1, 0.1 + 1.0 * s))], p=0.3 * s),
    ])


class Augmentation:
    """Augments a batch sample by sample (each draws its own parameters) from torch's global generator."""

    def __init__(self, strength: float) -> None:
        if not 0.0 <= strength <= 1.0:
            raise ConfigError(f"augment: must be between 0 and 1, got {strength}")
        self.strength = strength
        self.transform = augmentation_pipeline(strength)

    def __call__(
        self, images: np.ndarray, masks: np.ndarray, polygons: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """uint8 images (N, H, W), uint8 masks (N, H, W) and polygons (N, 8) normalised, NaN where absent."""
        height, width = images.shape[1:]
        scale = np.array([width, height], dtype=np.float32)
        out_images, out_masks, out_polygons = [], [], np.array(polygons, dtype=np.float32, copy=True)
        floats = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)  # v2 is quickest on floats
        for k in range(len(images)):
            image = tv_tensors.Image(floats[k, None])
            mask = tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(masks[k]))[None])
            if np.isnan(out_polygons[k]).any():
                image, mask = self.transform(image, mask)
            else:
                # Normalised coordinates cover pixel edges; torchvision's key points sit on pixel centres.
                points = tv_tensors.KeyPoints(out_polygons[k].reshape(4, 2) * scale - 0.5, canvas_size=(height, width))
                image, mask, points = self.transform(image, mask, points)
                out_polygons[k] = canonical_order((points.numpy() + 0.5) / scale).ravel()
            out_images.append(image[0])
            out_masks.append(mask[0])
        pixels = torch.stack(out_images).mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)
        return pixels, torch.stack(out_masks), out_polygons


def augmentation_for(strength: float) -> Augmentation | None:
    """The augmentation of a trial, or None when its strength is 0 (training batches then pass untouched)."""
    return Augmentation(strength) if strength > 0 else None
