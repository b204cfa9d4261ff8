"""Predictions drawn on radiographs with OpenCV: true polygon red, predicted green, masks tinted.

Needs only OpenCV and numpy, so that the dashboard can draw without importing the training stack.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from raysearch.errors import DataError

TRUE_COLOUR = (0, 0, 255)  # BGR red
PREDICTED_COLOUR = (0, 200, 0)  # BGR green
MASK_ALPHA = 0.4


def write_png(path: Path, image: np.ndarray) -> None:
    """An image written as PNG at `path`; a DataError naming it when OpenCV cannot write it (OpenCV says nothing)."""
    if not cv2.imwrite(str(path), image):
        raise DataError(f"{path}: could not be written")


def _bgr(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image.copy()


def _points(polygon: Sequence[float], width: int, height: int) -> np.ndarray:
    points = np.asarray(polygon, dtype=np.float64).reshape(-1, 2) * [width, height]
    return np.round(points).astype(np.int32)


def draw_overlay(image: np.ndarray, *, true_polygon: Sequence[float] | None = None,
                 predicted_polygon: Sequence[float] | None = None, mask: np.ndarray | None = None,
                 true_mask: np.ndarray | None = None, label: str | None = None) -> np.ndarray:
    """A BGR copy of `image` (grey or BGR) with masks and polygons (normalised to the image) drawn on it.

    The predicted mask is tinted green and the true mask outlined in red; masks of any size are
    stretched to the image.
    """
    out = _bgr(image)
    height, width = out.shape[:2]
    thickness = max(1, round(max(width, height) / 200))
    if mask is not None:
        resized = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0
        tint = np.zeros_like(out)
        tint[resized] = PREDICTED_COLOUR
        out[resized] = cv2.addWeighted(out, 1 - MASK_ALPHA, tint, MASK_ALPHA, 0)[resized]
    if true_mask is not None:
        resized = cv2.resize(true_mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(resized, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, TRUE_COLOUR, thickness, cv2.LINE_AA)
    for polygon, colour in ((true_polygon, TRUE_COLOUR), (predicted_polygon, PREDICTED_COLOUR)):
        if polygon is not None and not np.isnan(np.asarray(polygon, dtype=np.float64)).any():
            cv2.polylines(out, [_points(polygon, width, height)], True, colour, thickness, cv2.LINE_AA)
    if label:
        scale = max(width, height) / 800
        origin = (thickness * 3, round(30 * scale) + thickness * 3)
        cv2.putText(out, label, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness * 3, cv2.LINE_AA)
        cv2.putText(out, label, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, PREDICTED_COLOUR, thickness, cv2.LINE_AA)
    return out
