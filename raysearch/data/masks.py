"""Reader for image + mask folders (`images/` and `masks/`, matched by file stem), for segmentation.

Either `root/images` + `root/masks` (split with the given ratios and seed) or the same pair inside each
split folder. Masks may be 0/1 or 0/255, grey, RGB or RGBA (see `cache.read_mask`); images may have any
size and channel count, but a mask must have its image's size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from raysearch.data.images import is_image
from raysearch.data.records import (
    DEFAULT_SPLIT,
    ChecksFor,
    FileChecks,
    Record,
    Scan,
    SplitRatios,
    opening_every_file,
    split_folders,
)
from raysearch.data.samples import DataIssue, Sample
from raysearch.errors import DataError

MASK_CLASSES = ["foreground"]


def has_image_mask_folders(folder: Path) -> bool:
    """Whether `folder` holds an `images/` and a `masks/` folder."""
    return (folder / "images").is_dir() and (folder / "masks").is_dir()


def _masks_by_stem(folder: Path) -> dict[str, Path]:
    masks: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if is_image(path):
            masks.setdefault(path.stem, path)
    return masks


def _record(image: Path, split: str, masks: dict[str, Path], checks: FileChecks) -> Record:
    """An image with its mask; missing, unreadable or differently sized files are problems."""
    mask = masks.get(image.stem)
    sample = Sample(image, split, mask_path=mask)
    problem = checks.problem(image)
    if problem is not None:
        return Record(sample, "malformed", (DataIssue(image, problem),))
    if mask is None:
        return Record(sample, "missing", (DataIssue(image, f"no mask named {image.stem}.* in {image.parent.parent.name}"
                                                           f"/masks"),))
    problem = checks.problem(mask)
    if problem is not None:
        return Record(sample, "malformed", (DataIssue(mask, f"mask: {problem}"),))
    size, mask_size = checks.size(image), checks.size(mask)
    if mask_size != size:
        return Record(sample, "malformed", (DataIssue(mask, f"mask is {mask_size[0]}x{mask_size[1]}, its image "
                                                            f"{image.name} is {size[0]}x{size[1]}"),))
    return Record(sample, "labelled")


def scan_image_masks(root: Path, ratios: SplitRatios = DEFAULT_SPLIT,
                     checks_for: ChecksFor = opening_every_file) -> Scan:
    """Every image under `root`'s images/ folders with its mask, per split (folders or a seeded split)."""
    checks = checks_for(root)
    splits = {s: f for s, f in split_folders(root).items() if has_image_mask_folders(f)}
    if not splits and not has_image_mask_folders(root):
        raise DataError(f"{root}: expected images/ and masks/ folders, at the top or in train/val/test")
    pairs = splits or {"": root}
    rng = np.random.default_rng(ratios.seed)
    records: list[Record] = []
    for split, folder in pairs.items():
        images = sorted(p for p in (folder / "images").iterdir() if is_image(p))
        masks = _masks_by_stem(folder / "masks")
        assigned = [split] * len(images) if split else ratios.assign(len(images), rng)
        records += [_record(image, s, masks, checks) for image, s in zip(images, assigned, strict=True)]
    return Scan(root=root, format="image-mask", classes=list(MASK_CLASSES), records=records)
