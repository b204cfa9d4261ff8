"""The grey levels a mask holds: 0/1/255, or 0 and one level, are binary; anything else (class labels, anti-aliased
edges) needs `--binarise-masks` (`raysearch.data.suitability.check_mask_levels`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from raysearch.data.images import ImageError, read_array

BINARY_LEVELS = frozenset({0, 1, 255})


def mask_levels(path: Path) -> np.ndarray | None:
    """The grey levels of a mask as read for training (colour masks: the brightest channel, or alpha when the
    colour is empty; EXIF orientation applied, as to images); None when unreadable."""
    try:
        raw = read_array(path)
    except ImageError:
        return None
    if raw.ndim == 3:
        colour = raw[..., :3].max(axis=2)
        raw = colour if colour.any() or raw.shape[2] < 4 else raw[..., 3]
    return raw


def other_levels(path: Path) -> list[int]:
    """The values of a mask when they are not 0/1/255 nor 0 and one level; [] for a binary (or unreadable) mask."""
    levels = mask_levels(path)
    if levels is None:
        return []
    found = np.unique(levels).tolist()
    nonzero = [v for v in found if v]
    return [] if set(found) <= BINARY_LEVELS or len(nonzero) == 1 else found


def describe_levels(levels: list[int]) -> str:
    """Mask values for a message: all of them when few, else the range and count."""
    return ", ".join(map(str, levels)) if len(levels) <= 6 else f"{levels[0]}..{levels[-1]} ({len(levels)} levels)"
