"""What a reader found for every image file, and the one policy that turns those findings into a DatasetIndex.

Every format's scanner (YOLO, class folders, image + mask folders) returns a `Scan`: one `Record` per image
file, with its label status and the problems found in its files. `index_from` then applies the user's
choices the same way for every format: problems are skipped and listed (or stop the run with a one-line
error), and images whose label file is empty are skipped and counted (or kept as a "no fracture" class).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from raysearch.data.images import ImageError, inspect_image
from raysearch.data.samples import SPLITS, DataIssue, DatasetIndex, Sample
from raysearch.errors import ConfigError, DataError

if TYPE_CHECKING:
    import pyarrow as pa

LabelStatus = Literal["labelled", "empty", "missing", "malformed"]
OnError = Literal["skip", "error"]
EmptyLabels = Literal["skip", "background"]
ON_ERROR: tuple[str, ...] = ("skip", "error")
EMPTY_LABELS: tuple[str, ...] = ("skip", "background")
BACKGROUND_CLASS = "no fracture"
SPLIT_FOLDERS: dict[str, tuple[str, ...]] = {"train": ("train",), "val": ("val", "valid"), "test": ("test",)}
TRAILERS: dict[str, tuple[bytes, str]] = {".jpg": (b"\xff\xd9", "JPEG end-of-image marker"),
                                         ".jpeg": (b"\xff\xd9", "JPEG end-of-image marker"),
                                         ".png": (b"IEND\xaeB`\x82", "PNG IEND chunk")}
TAIL_BYTES = 64


@dataclass(frozen=True)
class Record:
    """One image file as found on disk: the sample it would give, its label status and its problems."""

    sample: Sample
    status: LabelStatus
    issues: tuple[DataIssue, ...] = ()


@dataclass(frozen=True)
class Scan:
    """Everything a scanner found in a dataset folder, before any sample is kept or dropped."""

    root: Path
    format: str
    classes: list[str]
    records: list[Record]
    ships_splits: bool = False  # whether the format gave every image its split (a label table's split column)


@dataclass(frozen=True)
class SplitRatios:
    """Train / val / test shares for datasets without split folders, and the seed of that split."""

    train: float = 0.8
    val: float = 0.1
    test: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        shares = (self.train, self.val, self.test)
        if min(shares) < 0 or self.train <= 0 or not np.isclose(sum(shares), 1.0, atol=1e-6):
            raise ConfigError(f"--split-ratios: need train > 0, val, test >= 0 summing to 1, got {shares}")

    @classmethod
    def parse(cls, text: str) -> SplitRatios:
        """`"0.8,0.1,0.1"` → SplitRatios; ConfigError naming the flag otherwise."""
        try:
            train, val, test = (float(v) for v in text.split(","))
        except ValueError:
            raise ConfigError(f"--split-ratios: expected TRAIN,VAL,TEST such as {cls().text()}, got {text!r}") from None
        return cls(train, val, test)

    def text(self) -> str:
        """The `--split-ratios` text of these shares (`parse` reads it back)."""
        return f"{self.train},{self.val},{self.test}"

    def assign(self, count: int, rng: np.random.Generator) -> list[str]:
        """A shuffled list of `count` split names in these proportions (val and test rounded, train the rest)."""
        val, test = round(count * self.val), round(count * self.test)
        if count >= 3 and self.val > 0 and val == 0:
            val = 1
        if count >= 3 and self.test > 0 and test == 0:
            test = 1
        names = ["val"] * val + ["test"] * test
        names = ["train"] * (count - len(names)) + names
        return [names[i] for i in rng.permutation(count)]


DEFAULT_SPLIT = SplitRatios()


def split_folders(root: Path) -> dict[str, Path]:
    """The split folders present under `root` (`train`, `val` or `valid`, `test`), by canonical split name."""
    found = {}
    for split, names in SPLIT_FOLDERS.items():
        folder = next((root / n for n in names if (root / n).is_dir()), None)
        if folder is not None:
            found[split] = folder
    return found


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) as displayed (EXIF orientation applied), from the file's header without decoding it; None
    when the file is not a readable image (`raysearch.data.images.inspect_image`)."""
    try:
        header = inspect_image(path)
    except ImageError:
        return None
    return header.width, header.height


def image_problem(path: Path) -> str | None:
    """Why an image file cannot be trained on (unreadable or hostile header, colour or multi-frame DICOM, a JPEG
    or PNG cut short), or None.

    A JPEG must end with its end-of-image marker and a PNG with its IEND chunk (trailing padding
    allowed): decoders fill a truncated file's missing part with grey and only warn, so a download or copy
    cut short would otherwise be trained on. Reading the last bytes costs nothing next to decoding."""
    try:
        inspect_image(path)
    except ImageError as error:
        return str(error)
    trailer = TRAILERS.get(path.suffix.lower())
    if trailer is None:
        return None
    marker, what = trailer
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        handle.seek(max(handle.tell() - TAIL_BYTES, 0))
        tail = handle.read().rstrip(b"\x00\r\n\t ")
    return None if tail.endswith(marker) else f"truncated image: no {what} at the end of the file"


@dataclass(frozen=True)
class FileChecks:
    """How a scanner checks each image file: why it cannot be trained on (`image_problem`) and its displayed size
    (`image_size`). `raysearch.data.imageindex.indexed_checks` answers both from the image index for the files
    it holds unchanged, so that a second scan of a dataset opens none of them."""

    problem: Callable[[Path], str | None] = image_problem
    size: Callable[[Path], tuple[int, int] | None] = image_size


ChecksFor = Callable[[Path], FileChecks]  # the file checks of the dataset at a scanner's root


def opening_every_file(root: Path) -> FileChecks:
    """The file checks that open every file (no image index)."""
    return FileChecks()


def index_from(scan: Scan, *, on_error: OnError = "skip", empty_labels: EmptyLabels = "skip") -> DatasetIndex:
    """Apply the user's choices to a scan: the samples kept, the problems listed, the empty labels counted.

    With on_error="error" the first problem stops the run as a one-line DataError naming file and line.
    """
    if on_error not in ON_ERROR:
        raise ConfigError(f"--on-error: must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
    if empty_labels not in EMPTY_LABELS:
        raise ConfigError(f"--empty-labels: must be one of {', '.join(EMPTY_LABELS)}, got {empty_labels!r}")
    index = DatasetIndex(root=scan.root, format=scan.format, classes=list(scan.classes), samples=[],
                         ships_splits=scan.ships_splits)
    background = None
    if empty_labels == "background" and any(r.status == "empty" for r in scan.records):
        background = len(index.classes)
        index.classes.append(BACKGROUND_CLASS)
    for record in scan.records:
        if record.issues:
            if on_error == "error":
                raise DataError(f"{record.issues[0]} (use --on-error skip to skip such files)")
            index.issues.extend(record.issues)
        elif record.status == "empty" and background is None:
            index.skipped_empty += 1
        elif record.status == "empty":
            index.samples.append(replace(record.sample, class_id=background))
        else:
            index.samples.append(record.sample)
    if not index.samples:
        raise DataError(f"{scan.root}: no usable labelled images in any split")
    return index


def describe_index(index: DatasetIndex) -> str:
    """A short account of what was read and what was left out, for the terminal (never silent)."""
    counts = ", ".join(f"{split} {len(index.split(split))}" for split in SPLITS)
    lines = [f"dataset: {index.format} at {index.root}: {counts} images, {len(index.classes)} classes"]
    if index.skipped_empty:
        lines.append(f"  {index.skipped_empty} images with empty label files skipped "
                     f"(--empty-labels background keeps them as class {BACKGROUND_CLASS!r})")
    if index.classes and index.classes[-1] == BACKGROUND_CLASS:
        kept = sum(s.class_id == len(index.classes) - 1 for s in index.samples)
        lines.append(f"  {kept} images with empty label files used as class {BACKGROUND_CLASS!r}")
    if index.issues:
        files = len({i.path for i in index.issues})
        lines.append(f"  {len(index.issues)} problems in {files} files; their images skipped "
                     f"(first: {index.issues[0]})")
    return "\n".join(lines)


def issues_table(issues: list[DataIssue]) -> pa.Table:
    """The problems as a pyarrow Table (path, line, message), for `data_issues.parquet`."""
    import pyarrow as pa

    return pa.table({
        "path": pa.array([str(i.path) for i in issues], pa.string()),
        "line": pa.array([i.line for i in issues], pa.int64()),
        "message": pa.array([i.message for i in issues], pa.string()),
    })
