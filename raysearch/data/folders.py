"""Reader for class folders (`split/class name/*.png|jpg`, or `class name/*` without split folders), for classification.

Class names are the folder names (spaces allowed), sorted. Without split folders, images are split per
class (stratified) into train / val / test with the given ratios and seed, so every class keeps its share.
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


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if is_image(p))


def _record(image: Path, split: str, class_id: int, checks: FileChecks) -> Record:
    sample = Sample(image, split, class_id=class_id)
    problem = checks.problem(image)
    if problem is not None:
        return Record(sample, "malformed", (DataIssue(image, problem),))
    return Record(sample, "labelled")


def _stray(folder: Path, split: str) -> list[Record]:
    """Images lying beside the class folders: reported, since their class is unknown."""
    return [Record(Sample(image, split), "missing", (DataIssue(image, "image outside any class folder"),))
            for image in _images(folder)]


def scan_class_folders(root: Path, ratios: SplitRatios = DEFAULT_SPLIT,
                       checks_for: ChecksFor = opening_every_file) -> Scan:
    """Every image under `root`'s class folders, with its split (from the folders or a seeded stratified split)."""
    checks = checks_for(root)
    splits = split_folders(root)
    layout = {split: {d.name: d for d in _class_dirs(folder)} for split, folder in splits.items()}
    if not splits:
        layout = {"": {d.name: d for d in _class_dirs(root)}}
    classes = sorted({name for folders in layout.values() for name in folders})
    if not classes:
        raise DataError(f"{root}: no class folders found (expected split/class name/*.png or class name/*.png)")
    records: list[Record] = []
    rng = np.random.default_rng(ratios.seed)
    for split, folders in layout.items():
        records += _stray(splits[split] if split else root, split or "train")
        for name, folder in folders.items():
            images = _images(folder)
            assigned = [split] * len(images) if split else ratios.assign(len(images), rng)
            records += [_record(image, s, classes.index(name), checks)
                        for image, s in zip(images, assigned, strict=True)]
    return Scan(root=root, format="class-folders", classes=classes, records=records)
