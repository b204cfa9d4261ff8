"""What `evaluate` adds to a model's test metrics: surface distances of masks, the operating point of a
two-class model (threshold chosen on validation), bootstrap intervals on every figure and the paired
comparison of each runner-up with the best model.

Defaults: the positive class of a two-class study is the second class of the dataset's class order (data.yaml
`names`, or the sorted class folders); the threshold maximises Youden's J on validation unless a target
sensitivity is given; 1,000 stratified resamples seeded with the study's seed (`tasks.bootstrap`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raysearch.core.columns import PAIRED_PREFIX
from raysearch.data.cache import CachedDataset
from raysearch.data.images import ImageError, inspect_image
from raysearch.data.preprocess import placement
from raysearch.errors import ConfigError
from raysearch.tasks.base import Task
from raysearch.tasks.bootstrap import (
    RESAMPLES,
    SURFACE_FIGURES,
    ImageFigures,
    Replicates,
    intervals,
    paired,
    replicates,
)
from raysearch.tasks.metrics import operating_point, point_distances, polygon_iou, surface_distances, youden_threshold


@dataclass(frozen=True)
class Scoring:
    """How test figures are made: the two-class positive class and threshold rule, the bootstrap's size and seed."""

    positive: int | None
    target_sensitivity: float | None
    resamples: int
    seed: int


def scoring_for(classes: Sequence[str], seed: int, positive_class: str | None = None,
                target_sensitivity: float | None = None, resamples: int = RESAMPLES) -> Scoring:
    """Checked options (a ConfigError naming the flag otherwise); the positive class only for two classes."""
    if positive_class is not None and positive_class not in classes:
        raise ConfigError(f"--positive-class: {positive_class!r} is not a class of the study "
                          f"({', '.join(classes)})")
    if positive_class is not None and len(classes) != 2:
        raise ConfigError(f"--positive-class: the study has {len(classes)} classes; an operating point needs two")
    if target_sensitivity is not None and not 0 < target_sensitivity <= 1:
        raise ConfigError(f"--target-sensitivity: must be in (0, 1], got {target_sensitivity}")
    if resamples < 100:
        raise ConfigError(f"--resamples: at least 100, got {resamples}")
    positive = None if len(classes) != 2 else list(classes).index(positive_class) if positive_class else 1
    return Scoring(positive, target_sensitivity, resamples, seed)


def mask_pixels(predicted: np.ndarray, true: np.ndarray) -> np.ndarray:
    """(N, 3) true positive, false positive and false negative pixels per image of binary masks."""
    predicted, true = predicted.astype(bool), true.astype(bool)
    return np.stack([(predicted & true).sum(axis=(1, 2)), (predicted & ~true).sum(axis=(1, 2)),
                     (~predicted & true).sum(axis=(1, 2))], axis=1)


def polygon_errors(predicted: np.ndarray, true: np.ndarray) -> dict[str, np.ndarray]:
    """Per image: mean point distance (`apd`), mean squared error and polygon IoU; NaN where there is no truth."""
    missing = np.isnan(true).any(axis=1)
    pred, target = torch.from_numpy(predicted.astype(np.float32)), torch.from_numpy(np.nan_to_num(true))
    errors = {"apd": point_distances(pred, target).mean(dim=1).numpy().astype(np.float64),
              "squared_error": (pred - target).pow(2).mean(dim=1).numpy().astype(np.float64),
              "polygon_iou": polygon_iou(pred, target).numpy().astype(np.float64)}
    return {name: np.where(missing, np.nan, values) for name, values in errors.items()}


def image_figures(predicted: Mapping[str, np.ndarray], data: CachedDataset, rows: np.ndarray, baseline_apd: float,
                  positive: int | None, threshold: float | None, spacing: np.ndarray | None = None) -> ImageFigures:
    """A model's per-image results on cache `rows` (its `predicted` rows in the same order); `spacing`: each
    image's (row, column) size of a cache pixel in mm (NaN where unknown), for the surface distances in mm."""
    fields: dict[str, Any] = {"baseline_apd": baseline_apd}
    if "probabilities" in predicted:
        fields |= {"probabilities": predicted["probabilities"], "labels": np.asarray(data.labels[rows]),
                   "positive": positive, "threshold": threshold}
    if "polygon" in predicted:
        fields |= polygon_errors(predicted["polygon"], np.asarray(data.polygons[rows], dtype=np.float32))
    if "mask" in predicted:
        true = np.asarray(data.masks[rows])
        fields["pixels"] = mask_pixels(predicted["mask"], true)
        fields["hd95"], fields["assd"] = surface_distances(predicted["mask"], true)
        if spacing is not None and np.isfinite(spacing).all(axis=1).any():
            fields["hd95_mm"], fields["assd_mm"] = surface_distances_mm(predicted["mask"], true, spacing)
    return ImageFigures(**fields)


def surface_distances_mm(predicted: np.ndarray, true: np.ndarray, spacing: np.ndarray) -> tuple[np.ndarray, ...]:
    """HD95 and ASSD in mm, image by image at its own pixel spacing (NaN where it has none)."""
    hd95, assd = np.full(len(true), np.nan), np.full(len(true), np.nan)
    for i in np.flatnonzero(np.isfinite(spacing).all(axis=1)):
        found = surface_distances(predicted[i : i + 1], true[i : i + 1], tuple(float(v) for v in spacing[i]))
        hd95[i], assd[i] = found[0][0], found[1][0]
    return hd95, assd


def mm_per_pixel(paths: Sequence[str], image_size: int, resize: str) -> np.ndarray | None:
    """Each image's (row, column) size of a cache pixel in mm, from its DICOM PixelSpacing and its placement in
    the cache (NaN rows where the file gives no spacing); None when no image gives one."""
    spacing = np.full((len(paths), 2), np.nan)
    for i, path in enumerate(paths):
        try:
            header = inspect_image(Path(path))
        except ImageError:
            continue
        if header.pixel_spacing is not None:
            where = placement(header.width, header.height, image_size, resize)
            spacing[i] = header.pixel_spacing[0] / where.scale_y, header.pixel_spacing[1] / where.scale_x
    return spacing if np.isfinite(spacing).any() else None


def threshold_on(predicted_val: Mapping[str, np.ndarray], labels: np.ndarray, scoring: Scoring) -> float | None:
    """The operating threshold of a two-class model's positive-class probability, chosen on validation."""
    if scoring.positive is None or "probabilities" not in predicted_val:
        return None
    scores = predicted_val["probabilities"][:, scoring.positive]
    return youden_threshold(scores, np.asarray(labels) == scoring.positive, scoring.target_sensitivity)


def point_figures(figures: ImageFigures) -> dict[str, float]:
    """The test figures that only exist per image (mean HD95 and ASSD over the images where they are defined)
    and the operating point at the validation threshold."""
    found: dict[str, float] = {}
    for name in SURFACE_FIGURES:
        values = getattr(figures, name)
        if values is not None:
            found[name] = float(np.nanmean(values)) if (~np.isnan(values)).any() else float("nan")
    if figures.threshold is not None and figures.probabilities is not None and figures.positive is not None:
        found |= operating_point(figures.probabilities[:, figures.positive],
                                 np.asarray(figures.labels) == figures.positive, figures.threshold)
    return found


def strata_of(data: CachedDataset, rows: np.ndarray) -> np.ndarray:
    """The bootstrap's strata: the true class of each image (-1, one stratum, where it has none)."""
    return np.asarray(data.labels[rows], dtype=np.int64)


def bootstrap(task: Task, figures: ImageFigures, counts: np.ndarray) -> Replicates:
    """Every figure, the task's score included, on each resample of `counts`."""
    found = replicates(counts, figures)
    try:
        found["score"] = np.asarray(task.score_of(found), dtype=np.float64)
    except KeyError:
        pass
    return found


def ci_columns(found: Replicates, reported: Mapping[str, float], prefix: str) -> dict[str, float]:
    """`<prefix>.<metric>.ci_low` / `.ci_high` for each reported metric that the bootstrap evaluates."""
    names = {name.removesuffix(".mean") for name in reported}
    return intervals({name: values for name, values in found.items() if name in names}, prefix)


def paired_columns(best: Replicates, runner_up: Replicates, best_value: float, value: float, metric: str,
                   higher_is_better: bool) -> dict[str, float]:
    """`paired.<metric>.difference`, `.ci_low`, `.ci_high` (runner-up − best) and `.share_better`."""
    if metric not in best or metric not in runner_up:
        return {}
    comparison = paired(best[metric], runner_up[metric], value - best_value, higher_is_better)
    prefix = f"{PAIRED_PREFIX}{metric}"
    return {f"{prefix}.difference": comparison.difference, f"{prefix}.ci_low": comparison.ci_low,
            f"{prefix}.ci_high": comparison.ci_high, f"{prefix}.share_better": comparison.share_better}

