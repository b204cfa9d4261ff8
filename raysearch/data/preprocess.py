"""Deterministic image preprocessing with OpenCV: resize or letterbox, CLAHE, denoising filters.

These steps run once per (dataset, configuration) when the cache is built. Normalisation and the
channel count are applied per batch (see `normalise`), so they never multiply the cache.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal

import cv2
import numpy as np

from raysearch.data.images import Intensity

if TYPE_CHECKING:
    import torch

ResizeMode = Literal["stretch", "letterbox"]
FilterName = Literal["none", "median", "gaussian", "bilateral"]
Normalisation = Literal["none", "minus_one_one", "imagenet", "standardize"]  # the choices a search space has
PRETRAINED = "pretrained"  # the normalisation of a model with pretrained weights: their mean and std
IMAGENET_MEAN, IMAGENET_STD = 0.449, 0.226  # grey-level mean of ImageNet's RGB statistics
PER_BATCH_FIELDS = ("normalisation", "channels", "mean", "std")


@dataclass(frozen=True)
class Preprocessing:
    """What is done to every image before training; the cached part is everything but PER_BATCH_FIELDS.

    `intensity` maps images deeper than 8 bits (DICOM, 16-bit PNG / TIFF) to 8-bit grey (raysearch.data.images);
    8-bit images keep their pixels under every choice.

    `normalisation` "pretrained" uses `mean` and `std`, the RGB statistics of a model's pretrained weights
    (set by raysearch.training.hparams.preprocessing_of, never searched); with one channel, their averages
    (timm and smp adapt a pretrained first convolution to one channel by summing its RGB weights)."""

    image_size: int = 64
    intensity: Intensity = "window"
    resize: ResizeMode = "letterbox"
    clahe: bool = False
    clahe_clip: float = 2.0
    clahe_grid: int = 8
    filter: FilterName = "none"
    filter_size: int = 3
    normalisation: Normalisation | Literal["pretrained"] = "minus_one_one"
    channels: int = 1
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def cache_fields(self) -> dict[str, object]:
        """The fields that change the cached pixels (the cache key is built from these)."""
        fields = asdict(self)
        for per_batch in PER_BATCH_FIELDS:
            del fields[per_batch]
        return fields


@dataclass(frozen=True)
class Placement:
    """Where a source image lands in the square output: scale per axis and padding, in pixels."""

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float
    size: int

    def points(self, normalised: np.ndarray, width: int, height: int) -> np.ndarray:
        """Map points normalised to the source image into points normalised to the output."""
        out = np.empty_like(normalised, dtype=np.float32)
        out[..., 0] = (normalised[..., 0] * width * self.scale_x + self.pad_x) / self.size
        out[..., 1] = (normalised[..., 1] * height * self.scale_y + self.pad_y) / self.size
        return out


def placement(width: int, height: int, size: int, mode: ResizeMode) -> Placement:
    """How a width×height image is fitted into size×size."""
    if mode == "stretch":
        return Placement(size / width, size / height, 0.0, 0.0, size)
    scale = size / max(width, height)
    new_w, new_h = round(width * scale), round(height * scale)
    return Placement(new_w / width, new_h / height, (size - new_w) // 2, (size - new_h) // 2, size)


def fit(image: np.ndarray, where: Placement, interpolation: int = cv2.INTER_AREA) -> np.ndarray:
    """Resize (and pad with zeros, for letterbox) an image into its placement."""
    height, width = image.shape[:2]
    new_w, new_h = round(width * where.scale_x), round(height * where.scale_y)
    resized = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    out = np.zeros((where.size, where.size), dtype=image.dtype)
    x, y = int(where.pad_x), int(where.pad_y)
    out[y : y + new_h, x : x + new_w] = resized
    return out


def enhance(image: np.ndarray, config: Preprocessing) -> np.ndarray:
    """CLAHE then the chosen denoising filter, on a uint8 grey image."""
    if config.clahe:
        grid = (config.clahe_grid, config.clahe_grid)
        image = cv2.createCLAHE(clipLimit=config.clahe_clip, tileGridSize=grid).apply(image)
    k = config.filter_size | 1
    if config.filter == "median":
        image = cv2.medianBlur(image, k)
    elif config.filter == "gaussian":
        image = cv2.GaussianBlur(image, (k, k), 0)
    elif config.filter == "bilateral":
        image = cv2.bilateralFilter(image, k, sigmaColor=50, sigmaSpace=k)
    return image


def normalise(batch: np.ndarray | torch.Tensor, config: Preprocessing) -> torch.Tensor:
    """uint8 (N, H, W), or float in [0, 1] (augmented), → float32 (N, C, H, W) with the configured normalisation
    and channel count, on the batch's device."""
    import torch

    x = torch.as_tensor(batch)
    x = (x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()).unsqueeze(1)
    if config.normalisation == "minus_one_one":
        x = x.mul_(2).sub_(1)
    elif config.normalisation == "imagenet":
        x = x.sub_(IMAGENET_MEAN).div_(IMAGENET_STD)
    elif config.normalisation == "standardize":
        mean = x.mean(dim=(2, 3), keepdim=True)
        std = x.std(dim=(2, 3), keepdim=True).clamp_min(1e-6)
        x = (x - mean) / std
    elif config.normalisation == PRETRAINED:
        mean = torch.as_tensor(config.mean, dtype=x.dtype, device=x.device)
        std = torch.as_tensor(config.std, dtype=x.dtype, device=x.device)
        if config.channels == 1:
            mean, std = mean.mean().reshape(1), std.mean().reshape(1)
        x = x.expand(-1, config.channels, -1, -1)
        return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    return x.expand(-1, config.channels, -1, -1).contiguous() if config.channels > 1 else x
