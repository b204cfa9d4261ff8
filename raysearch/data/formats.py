"""Dataset formats: detect which one a folder holds and read it (`load_dataset`), or just scan it (`scan_dataset`).

- `yolo`: `data.yaml` + `split/images`, `split/labels` (one polygon per line); every task.
- `class-folders`: `split/class name/*.png` or `class name/*.png`; classification.
- `image-mask`: `images/` + `masks/` matched by file stem, at the top or in each split; segmentation.
- `table`: a CSV (or a folder holding one) naming each image with its class, split and patient; classification.

Images are JPEG, PNG, BMP, TIFF (8 or 16 bits) or DICOM (`.dcm`, or no suffix with the DICOM preamble) in
every format (`raysearch.data.images`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from raysearch.data.folders import scan_class_folders
from raysearch.data.images import is_image
from raysearch.data.masks import has_image_mask_folders, scan_image_masks
from raysearch.data.records import (
    DEFAULT_SPLIT,
    ChecksFor,
    EmptyLabels,
    OnError,
    Scan,
    SplitRatios,
    index_from,
    opening_every_file,
    split_folders,
)
from raysearch.data.samples import DatasetIndex
from raysearch.data.table import find_table, is_label_table, parse_columns, scan_table
from raysearch.data.yolo import find_data_yaml, scan_yolo
from raysearch.errors import ConfigError, DataError

Scanner = Callable[[Path, SplitRatios, dict[str, str], ChecksFor], Scan]
FORMATS: dict[str, Scanner] = {
    "yolo": lambda root, ratios, columns, checks_for: scan_yolo(root, checks_for),
    "class-folders": lambda root, ratios, columns, checks_for: scan_class_folders(root, ratios, checks_for),
    "image-mask": lambda root, ratios, columns, checks_for: scan_image_masks(root, ratios, checks_for),
    "table": scan_table,
}


def _has_class_folders(folder: Path) -> bool:
    return any(p.is_dir() and any(is_image(f) for f in p.iterdir()) for p in folder.iterdir())


def detect_format(root: Path) -> str:
    """The format of the dataset at `root`; a one-line DataError when it is none of the known ones."""
    if not root.exists():
        raise DataError(f"{root}: does not exist")
    if find_data_yaml(root) is not None:
        return "yolo"
    if is_label_table(root):
        return "table"
    if root.is_dir():
        splits = list(split_folders(root).values())
        if has_image_mask_folders(root) or any(has_image_mask_folders(s) for s in splits):
            return "image-mask"
        if any(_has_class_folders(folder) for folder in splits or [root]):
            return "class-folders"
    if find_table(root) is not None:
        return "table"
    raise DataError(f"{root}: unknown dataset format (expected data.yaml, images/ + masks/ folders, class "
                    f"folders or a labels .csv); name one with --format {'|'.join(FORMATS)}")


def scan_dataset(root: Path, format: str | None = None, *, split_ratios: SplitRatios = DEFAULT_SPLIT,
                 columns: str | None = None, checks_for: ChecksFor = opening_every_file) -> Scan:
    """Every image file of the dataset at `root` with its label status, before anything is dropped; `columns`
    names a label table's columns (`raysearch.data.table.parse_columns`); `checks_for` how each file is checked
    (`raysearch.data.imageindex.indexed_checks`: from the image index where it knows the file).

    Paths are made absolute: trials decode the images again from other working directories (Ray's).
    """
    root = Path(root).resolve()
    if format is None:
        format = detect_format(root)
    if format not in FORMATS:
        raise ConfigError(f"--format: unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    if not root.exists():
        raise DataError(f"{root}: does not exist")
    return FORMATS[format](root, split_ratios, parse_columns(columns), checks_for)


def load_dataset(
    root: Path,
    format: str | None = None,
    *,
    on_error: OnError = "skip",
    empty_labels: EmptyLabels = "skip",
    split_ratios: SplitRatios = DEFAULT_SPLIT,
    columns: str | None = None,
    checks_for: ChecksFor = opening_every_file,
) -> DatasetIndex:
    """Read the dataset at `root` (format detected unless given) into a DatasetIndex.

    Problems (corrupt image, malformed label line, coordinate outside [0, 1], mask size mismatch) are
    skipped and listed in `index.issues`, or with on_error="error" stop with a one-line DataError. Images
    with empty label files are skipped and counted, or with empty_labels="background" kept as "no fracture".
    Each file is checked by `checks_for` (see `scan_dataset`).
    """
    scan = scan_dataset(root, format, split_ratios=split_ratios, columns=columns, checks_for=checks_for)
    return index_from(scan, on_error=on_error, empty_labels=empty_labels)
