"""Reader for Ultralytics-style YOLO polygon exports (Roboflow, Kaggle): `data.yaml` + images/labels.

Splits come from the YAML's `train`, `val` (or `valid`) and `test` entries. Exports keep the author's
`path:`; when it does not exist on this machine, entries resolve relative to the YAML file. An image's
class is the class of its first polygon, and its regression target is that polygon reduced to 4 points
(`raysearch.data.polygons.to_four_points`); every polygon is kept in `shapes` for masks and audits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from raysearch.data.images import is_image
from raysearch.data.polygons import to_four_points
from raysearch.data.records import (
    SPLIT_FOLDERS,
    ChecksFor,
    EmptyLabels,
    FileChecks,
    OnError,
    Record,
    Scan,
    index_from,
    opening_every_file,
)
from raysearch.data.samples import DataIssue, DatasetIndex, Sample, Shape
from raysearch.errors import DataError


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
    raise DataError(f"{yaml_path}: field 'names' must be a non-empty list or mapping")


def _dataset_root(config: dict, yaml_path: Path) -> Path:
    """`path:` when it exists on this machine, else the folder holding the YAML (exports keep the author's path)."""
    declared = config.get("path")
    if declared:
        candidate = Path(str(declared))
        if not candidate.is_absolute():
            candidate = yaml_path.parent / candidate
        if candidate.is_dir():
            return candidate
    return yaml_path.parent


def _images_dir(entry: str, root: Path, yaml_path: Path) -> Path | None:
    """Resolve a split entry: `train/images`, Roboflow's `../train/images`, or an absolute path from the
    author's machine, whose trailing folders (`.../train/images`) are then looked for beside the YAML."""
    given = Path(entry)
    candidates = [given] if given.is_absolute() else [root / given, yaml_path.parent / given]
    parts = [p for p in given.parts if p not in ("..", ".", given.anchor)]
    candidates += [yaml_path.parent / Path(*parts[i:]) for i in range(max(len(parts) - 1, 1))]
    return next((c for c in candidates if c.is_dir()), None)


def _split_dirs(config: dict, root: Path, yaml_path: Path) -> dict[str, list[Path]]:
    """Image folders per split; an entry may be one folder or a list of folders (Ultralytics allows both)."""
    found: dict[str, list[Path]] = {}
    for split, keys in SPLIT_FOLDERS.items():
        entry = next((config[k] for k in keys if config.get(k)), None)
        entries = entry if isinstance(entry, list) else [entry] if entry else []
        folders = [_images_dir(str(e), root, yaml_path) for e in entries]
        missing = [str(e) for e, f in zip(entries, folders, strict=True) if f is None]
        if missing:
            raise DataError(f"{yaml_path}: {split} folder {missing[0]!r} not found (relative to {root})")
        if folders:
            found[split] = [f for f in folders if f is not None]
    if not found:
        raise DataError(f"{yaml_path}: no train/val/test entries naming image folders")
    return found


def label_path(image: Path) -> Path:
    """Ultralytics rule: the last `images` folder in the path becomes `labels`, suffix `.txt`."""
    parts = list(image.parts)
    if "images" not in parts:
        return image.with_suffix(".txt")
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
    if not np.isfinite(coords).all() or coords.min() < 0 or coords.max() > 1:
        raise ValueError(f"coordinate outside [0, 1] (min {coords.min():.4g}, max {coords.max():.4g})")
    return Shape(class_id, coords.reshape(-1, 2))


def read_label_file(label: Path, num_classes: int) -> tuple[list[tuple[int, Shape]], list[DataIssue]]:
    """Every polygon of a label file with its line number, and one issue per malformed line."""
    shapes: list[tuple[int, Shape]] = []
    issues: list[DataIssue] = []
    for number, line in enumerate(label.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            shapes.append((number, parse_label_line(line, num_classes)))
        except ValueError as error:
            issues.append(DataIssue(label, str(error), number))
    return shapes, issues


def _record(image: Path, split: str, num_classes: int, checks: FileChecks) -> Record:
    """What one image and its label file give: a labelled, empty, missing or malformed record."""
    bare = Sample(image, split, mask_path=_mask_path(image))
    label = label_path(image)
    problem = checks.problem(image)
    if problem is not None:
        return Record(bare, "malformed", (DataIssue(image, problem),))
    mask_problem = checks.problem(bare.mask_path) if bare.mask_path is not None else None
    if mask_problem is not None:
        return Record(bare, "malformed", (DataIssue(bare.mask_path, f"mask: {mask_problem}"),))
    if not label.is_file():
        return Record(bare, "missing", (DataIssue(label, "label file missing (an image without objects needs an "
                                                        "empty .txt)"),))
    try:
        numbered, issues = read_label_file(label, num_classes)
    except OSError as error:
        return Record(bare, "malformed", (DataIssue(label, f"unreadable label file: {error.strerror}"),))
    shapes = tuple(shape for _, shape in numbered)
    if issues:
        return Record(Sample(image, split, shapes=shapes, mask_path=bare.mask_path), "malformed", tuple(issues))
    if not shapes:
        return Record(bare, "empty")
    line, first = numbered[0]
    try:
        polygon = to_four_points(first.points)
    except ValueError as error:
        return Record(Sample(image, split, shapes=shapes, mask_path=bare.mask_path), "malformed",
                      (DataIssue(label, str(error), line),))
    return Record(Sample(image, split, first.class_id, polygon, shapes, bare.mask_path), "labelled")


def scan_yolo(root: Path, checks_for: ChecksFor = opening_every_file) -> Scan:
    """Every image of a YOLO dataset (`root` is its folder or its data.yaml) with its label status."""
    yaml_path = find_data_yaml(root)
    if yaml_path is None:
        raise DataError(f"{root}: no data.yaml found")
    try:
        config = yaml.safe_load(yaml_path.read_text()) or {}
    except yaml.YAMLError as error:
        raise DataError(f"{yaml_path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(config, dict):
        raise DataError(f"{yaml_path}: expected a mapping with names: and train:/val:/test: entries")
    classes = _class_names(config, yaml_path)
    checks = checks_for(yaml_path.parent)
    records = [
        _record(image, split, len(classes), checks)
        for split, folders in _split_dirs(config, _dataset_root(config, yaml_path), yaml_path).items()
        for folder in folders
        for image in sorted(p for p in folder.iterdir() if is_image(p))
    ]
    return Scan(root=yaml_path.parent, format="yolo", classes=classes, records=records)


def read_yolo(root: Path, *, on_error: OnError = "skip", empty_labels: EmptyLabels = "skip") -> DatasetIndex:
    """Read a YOLO polygon dataset into a DatasetIndex (see `records.index_from` for the two choices)."""
    return index_from(scan_yolo(root), on_error=on_error, empty_labels=empty_labels)
