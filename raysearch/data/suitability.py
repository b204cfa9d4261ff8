"""Whether a dataset can serve a task, decided before anything starts; what is repaired is always said.

- A task needs targets the data has: classes (classification, multitask: at least two in train),
  polygons (regression, multitask), masks or polygons to rasterise (segmentation). Missing ones stop the
  run with one line (`check_task_data`), instead of trials that score 0 or fail.
- A dataset without validation images gets a seeded validation split carved from train, stratified by
  class, with the `--split-ratios` validation share (`carve_validation`); the search scores trials on it.
- Masks hold 0/1 or 0/255 (or 0 and one colour). Any other values (class labels 0..5, anti-aliased edges)
  are refused unless `--binarise-masks` asks for every nonzero value to count as foreground
  (`check_mask_levels`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from raysearch.data.imageindex import keep_mask_facts, mask_facts
from raysearch.data.masklevels import describe_levels
from raysearch.data.records import SplitRatios
from raysearch.data.samples import DatasetIndex, Sample
from raysearch.errors import DataError

TARGETS: dict[str, tuple[str, Callable[[Sample], bool]]] = {
    "class": ("image classes (class folders or YOLO labels)", lambda s: s.class_id is not None),
    "polygon": ("polygons (YOLO labels)", lambda s: s.polygon is not None),
    "mask": ("masks or polygons to rasterise (image + mask folders or YOLO labels)",
             lambda s: s.mask_path is not None or bool(s.shapes)),
}


def check_task_data(index: DatasetIndex, task: str, needs: tuple[str, ...]) -> None:
    """DataError (one line) when the train or val split lacks a target `task` needs, or a classifying task
    has fewer than two classes in train."""
    if not index.split("train"):
        raise DataError(f"{index.root}: the train split has no usable images (of {len(index.samples)} usable in all)")
    for need in needs:
        what, has = TARGETS[need]
        for split in ("train", "val"):
            if not any(has(s) for s in index.split(split)):
                raise DataError(f"{index.root}: task {task} needs {what}, but the {split} split of this {index.format} "
                                f"data has none")
    if "class" in needs:
        present = sorted({s.class_id for s in index.split("train") if s.class_id is not None})
        if len(present) < 2:
            names = ", ".join(repr(index.classes[c]) for c in present)
            raise DataError(f"{index.root}: task {task} needs at least two classes in the train split, found "
                            f"{len(present)} ({names})")


def carve_validation(index: DatasetIndex, ratios: SplitRatios) -> int:
    """Without validation images, move the `ratios.val` share of train (seeded by `ratios.seed`, stratified
    by class) into val; returns how many moved (0 when the dataset has a validation split)."""
    if index.split("val"):
        return 0
    train = index.split("train")
    if ratios.val <= 0 or len(train) < 2:
        raise DataError(f"{index.root}: no validation split, and none can be carved from {len(train)} train images "
                        f"with a validation share of {ratios.val} (--split-ratios)")
    share = SplitRatios(train=1.0 - ratios.val, val=ratios.val, test=0.0, seed=ratios.seed)
    rng = np.random.default_rng(ratios.seed)
    by_class: dict[int, list[Sample]] = defaultdict(list)
    for sample in train:
        by_class[-1 if sample.class_id is None else sample.class_id].append(sample)
    moved: set[int] = set()
    for _, samples in sorted(by_class.items()):
        for sample, split in zip(samples, share.assign(len(samples), rng), strict=True):
            if split == "val":
                moved.add(id(sample))
    if not moved:
        moved.add(id(train[int(rng.integers(len(train)))]))
    index.samples = [replace(s, split="val") if id(s) in moved else s for s in index.samples]
    return len(moved)


def check_mask_levels(index: DatasetIndex, *, binarise: bool, index_file: Path | None = None) -> tuple[int, str]:
    """How many masks hold values other than 0/1/255 (or 0 and one level), and the first as `path: values`; the
    masks' values are kept beside the image index `index_file` (`imageindex.mask_facts`: read once per mask).

    Without `binarise`, any such mask is a DataError naming it and the flag that accepts it."""
    paths = [s.mask_path for s in index.samples if s.mask_path is not None]
    facts = mask_facts(paths, index_file, keep=False)  # kept only once the masks are accepted
    found = [(p, list(f.levels)) for p, f in zip(paths, facts, strict=True) if f.levels]
    first = f"{found[0][0]}: mask values {describe_levels(found[0][1])}" if found else ""
    if found and not binarise:
        raise DataError(f"{first} are not 0/1/255 ({len(found)} such masks); --binarise-masks treats every nonzero "
                        "value as foreground")
    if index_file is not None:
        keep_mask_facts(paths, facts, index_file)
    return len(found), first
