"""Reader for Ultralytics-style YOLO polygon exports (Roboflow, Kaggle): `data.yaml` + images/labels."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import yaml

from raysearch.data.polygons import to_four_points
from raysearch.data.samples import DataIssue, DatasetIndex, Sample, Shape

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
SPLIT_KEYS: dict[str, tuple[str, ...]] = {"train": ("train",), "val": ("val", "valid"), "test": ("test",)}
BACKGROUND_CLASS = "no fracture"
OnError = Literal["skip", "error"]
EmptyLabels = Literal["skip", "background"]


def find_data_yaml(root: Path) -> Path | None:
    """The dataset's `data.yaml` (or `data.yml`), given the file itself or its folder."""
    if root.is_file() and root.suffix in (".yaml", ".yml"):
        return root
    for name in ("data.yaml", "data.yml"):
        if (root / name).is_file():
            return root / name
    return None


def _class_names(config: dict, yaml_path: Path) -> list[str]:
    names = config.get("names")
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names)]
    if isinstance(names, list) and names:
        return [str(n) for n in names]
    raise ValueError(f"{yaml_path}: field 'names' must be a non-empty list or mapping")


def _dataset_root(config: dict, yaml_path: Path) -> Path:
    """`path:` when it exists on this machine, else the folder holding the YAML (exports keep the author's path)."""
    declared = config.get("path")
    if declared:
        candidate = Path(declared)
        if not candidate.is_absolute():
            candidate = yaml_path.parent / candidate
        if candidate.is_dir():
            return candidate
    return yaml_path.parent


def _images_dir(entry: str, root: Path, yaml_path: Path) -> Path | None:
    """Resolve a split entry such as `train/images` or Roboflow's `../train/images`."""
    relative = Path(entry)
    candidates = [relative] if relative.is_absolute() else [root / relative, yaml_path.parent / relative]
    candidates += [root / Path(*[p for p in relative.parts if p not in ("..", ".")])]
    return next((c for c in candidates if c.is_dir()), None)


def _labels_path(image: Path) -> Path:
    """Ultralytics rule: the last `images` folder in the path becomes `labels`, suffix `.txt`."""
    parts = list(image.parts)
    index = len(parts) - 1 - parts[::-1].index("images")
    parts[index] = "labels"
    return Path(*parts).with_suffix(".txt")


def _mask_path(image: Path) -> Path | None:
    masks = image.parent.parent / "masks"
    for suffix in (".png", image.suffix):
        candidate = masks / (image.stem + suffix)
        if candidate.is_file():
            return candidate
    return None


def parse_label_line(line: str, num_classes: int) -> Shape:
    """One YOLO segmentation line `class x1 y1 ...`; ValueError with a readable reason if malformed."""
    tokens = line.split()
    try:
        class_id = int(tokens[0])
        coords = np.array([float(t) for t in tokens[1:]], dtype=np.float32)
    except ValueError:
        raise ValueError(f"not numbers: {line.strip()[:60]!r}") from None
    if not 0 <= class_id < num_classes:
        raise ValueError(f"class {class_id} outside 0..{num_classes - 1}")
    if len(coords) % 2 or len(coords) < 6:
        raise ValueError(f"expected an even count of at least 6 coordinates, got {len(coords)}")
    if coords.min() < 0 or coords.max() > 1:
        raise ValueError(f"coordinate outside [0, 1] (min {coords.min():.4g}, max {coords.max():.4g})")
    return Shape(class_id, coords.reshape(-1, 2))


def _read_shapes(label: Path, num_classes: int) -> Iterator[Shape | DataIssue]:
    for number, line in enumerate(label.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield parse_label_line(line, num_classes)
        except ValueError as error:
            yield DataIssue(label, str(error), number)


def read_yolo(
    root: Path, *, on_error: OnError = "skip", empty_labels: EmptyLabels = "skip"
) -> DatasetIndex:
    """Read a YOLO polygon dataset into a DatasetIndex.

    Malformed label lines become DataIssues (the image is skipped) or, with on_error="error", a
    DataError naming file and line. Images with empty label files are skipped and counted, or with
    empty_labels="background" kept as an extra class named "no fracture" without a polygon.
    """
    from raysearch.errors import DataError

    yaml_path = find_data_yaml(root)
    if yaml_path is None:
        raise DataError(f"{root}: no data.yaml found")
    try:
        config = yaml.safe_load(yaml_path.read_text()) or {}
        classes = _class_names(config, yaml_path)
    except (yaml.YAMLError, ValueError) as error:
        raise DataError(str(error).splitlines()[0]) from None
    background = len(classes) if empty_labels == "background" else None
    index = DatasetIndex(root=yaml_path.parent, format="yolo", classes=list(classes), samples=[])
    if background is not None:
        index.classes.append(BACKGROUND_CLASS)
    dataset_root = _dataset_root(config, yaml_path)
    for split, keys in SPLIT_KEYS.items():
        entry = next((config[k] for k in keys if config.get(k)), None)
        images_dir = _images_dir(str(entry), dataset_root, yaml_path) if entry else None
        if images_dir is None:
            continue
        for image in sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            sample = _read_sample(image, split, len(classes), background, index)
            if sample is not None:
                index.samples.append(sample)
    if on_error == "error" and index.issues:
        raise DataError(str(index.issues[0]))
    if not index.samples:
        raise DataError(f"{yaml_path}: no usable labelled images in any split")
    return index


def _read_sample(
    image: Path, split: str, num_classes: int, background: int | None, index: DatasetIndex
) -> Sample | None:
    label = _labels_path(image)
    if not label.is_file():
        index.issues.append(DataIssue(label, "label file missing"))
        return None
    shapes: list[Shape] = []
    for item in _read_shapes(label, num_classes):
        if isinstance(item, DataIssue):
            index.issues.append(item)
            return None
        shapes.append(item)
    if not shapes:
        if background is None:
            index.skipped_empty += 1
            return None
        return Sample(image, split, class_id=background, mask_path=_mask_path(image))
    try:
        polygon = to_four_points(shapes[0].points)
    except ValueError as error:
        index.issues.append(DataIssue(label, str(error), 1))
        return None
    return Sample(image, split, shapes[0].class_id, polygon, tuple(shapes), _mask_path(image))
