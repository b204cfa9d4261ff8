"""The reader-independent description of a dataset: samples, classes, and problems found while reading."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class Shape:
    """One labelled polygon: a class index and its points, normalised to [0, 1], shape (K, 2) as (x, y)."""

    class_id: int
    points: np.ndarray


@dataclass(frozen=True)
class Sample:
    """One image and everything known about it.

    `class_id` is the image-level class (first shape's class for YOLO data, folder name for class
    folders); `polygon` is the 4-point regression target (4, 2) in canonical order, or None;
    `shapes` keeps every polygon of the image (used to rasterise fracture masks); `mask_path` points to
    a mask image when the dataset has one; `patient` is the patient (or group) a label table names (a DICOM
    file's PatientID, read from the file, comes first: `raysearch.data.splits.patients_of`).
    """

    image_path: Path
    split: str
    class_id: int | None = None
    polygon: np.ndarray | None = None
    shapes: tuple[Shape, ...] = ()
    mask_path: Path | None = None
    patient: str | None = None


@dataclass(frozen=True)
class DataIssue:
    """A problem found in a dataset file: where it is, and what is wrong."""

    path: Path
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else str(self.path)
        return f"{where}: {self.message}"


@dataclass
class DatasetIndex:
    """Every usable sample of a dataset, its class names, the problems that made samples unusable, the split
    policy (`raysearch.data.splits`) that gave the samples their splits, and whether the dataset's own file
    (a label table) gave them (split folders and YOLO's data.yaml are found on disk)."""

    root: Path
    format: str
    classes: list[str]
    samples: list[Sample]
    issues: list[DataIssue] = field(default_factory=list)
    skipped_empty: int = 0
    split_policy: str = "published"
    ships_splits: bool = False

    def split(self, name: str) -> list[Sample]:
        """The samples of one split, in a stable order."""
        return [s for s in self.samples if s.split == name]
