"""Reader for a label table: a CSV naming each image (relative to the CSV) with its class, and optionally its split
and its patient, as MURA, RSNA and CheXpert-style sets ship them; for classification.

`--data labels.csv`, or a folder holding one CSV. Columns are found by their common spellings (`COLUMNS`,
compared without case, spaces, hyphens or underscores), or named with `--columns path=NAME,label=NAME,...`.
A row whose image is missing or unreadable, whose class is empty or whose split is unknown is a problem naming
the CSV and its line. Without a split column (or where a row's split is empty), images are split per class
with the given ratios and seed, as class folders are. The patient (or group) column makes one patient one
source group (`raysearch.data.splits`).
"""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import numpy as np

from raysearch.data.records import (
    DEFAULT_SPLIT,
    SPLIT_FOLDERS,
    ChecksFor,
    FileChecks,
    Record,
    Scan,
    SplitRatios,
    opening_every_file,
)
from raysearch.data.samples import DataIssue, Sample
from raysearch.errors import ConfigError, DataError

TABLE_SUFFIX = ".csv"
COLUMNS: dict[str, tuple[str, ...]] = {
    "path": ("path", "image", "imagepath", "file", "filename", "filepath", "imagefile", "imageindex", "dicom"),
    "label": ("label", "class", "classname", "target", "finding", "findinglabels", "diagnosis", "category"),
    "split": ("split", "set", "subset", "partition"),
    "patient": ("patient", "patientid", "group", "groupid", "subject", "subjectid"),
}
REQUIRED = ("path", "label")
SPLIT_NAMES: dict[str, str] = {name: split for split, names in SPLIT_FOLDERS.items() for name in names} | {
    "validation": "val"}


def _spelling(name: str) -> str:
    return "".join(c for c in name.lower() if c not in " _-")


def parse_columns(text: str | None) -> dict[str, str]:
    """`"path=Image Index,label=Finding"` → {"path": "Image Index", "label": "Finding"}; ConfigError naming the flag."""
    if not text:
        return {}
    named = {}
    for part in text.split(","):
        role, _, name = part.partition("=")
        if role.strip() not in COLUMNS or not name.strip():
            raise ConfigError(f"--columns: expected ROLE=NAME pairs with ROLE in {', '.join(COLUMNS)}, got {part!r}")
        named[role.strip()] = name.strip()
    return named


def find_table(root: Path) -> Path | None:
    """The CSV of a label table: `root` itself, or the one CSV in the folder `root` (None when there is none)."""
    if root.is_file():
        return root if root.suffix.lower() == TABLE_SUFFIX else None
    tables = sorted(p for p in root.glob(f"*{TABLE_SUFFIX}") if p.is_file()) if root.is_dir() else []
    if len(tables) > 1:
        raise DataError(f"{root}: {len(tables)} CSV files ({', '.join(p.name for p in tables)}); name the label table "
                        "with --data FOLDER/labels.csv")
    return tables[0] if tables else None


def is_label_table(root: Path) -> bool:
    """Whether `root` is (or holds) a CSV whose header names an image column and a class column."""
    try:
        table = find_table(root)
        if table is None:
            return False
        with open(table, newline="", encoding="utf-8-sig") as handle:
            header = next(csv.reader(handle), [])
    except (DataError, OSError, UnicodeDecodeError, csv.Error):
        return False
    spelled = {_spelling(cell) for cell in header}
    return all(spelled & set(COLUMNS[role]) for role in REQUIRED)


def _header_columns(table: Path, header: list[str], named: dict[str, str]) -> dict[str, str]:
    """The CSV column of each role: named by --columns, else the first header cell spelled like the role."""
    found = {}
    for role, spellings in COLUMNS.items():
        if role in named:
            if named[role] not in header:
                raise DataError(f"{table}:1: no column {named[role]!r} (--columns {role}=...); columns: "
                                f"{', '.join(header)}")
            found[role] = named[role]
            continue
        match = next((cell for cell in header if _spelling(cell) in spellings), None)
        if match is not None:
            found[role] = match
    missing = [role for role in REQUIRED if role not in found]
    if missing:
        raise DataError(f"{table}:1: no {' or '.join(missing)} column among {', '.join(header)} (expected one of "
                        f"{'; '.join(', '.join(COLUMNS[r]) for r in missing)}, or --columns {missing[0]}=NAME)")
    return found


def _row(table: Path, row: dict[str, str], columns: dict[str, str],
         checks: FileChecks) -> tuple[Sample, str | None, str]:
    """A row's sample (split '' when the table gives none), its problem or None, and its class name."""
    cell = {role: (row.get(name) or "").strip() for role, name in columns.items()}
    image = table.parent / cell["path"]
    split = SPLIT_NAMES.get(cell.get("split", "").lower(), "") if cell.get("split") else ""
    sample = Sample(image.resolve(), split, patient=cell.get("patient") or None)
    if not cell["path"]:
        return sample, "empty image path", ""
    if not image.is_file():
        return sample, f"image {cell['path']} not found (relative to {table.parent})", ""
    if not cell["label"]:
        return sample, "empty class", ""
    if cell.get("split") and not split:
        return sample, f"unknown split {cell['split']!r} (expected {', '.join(SPLIT_NAMES)})", ""
    problem = checks.problem(image)
    return sample, None if problem is None else f"image {cell['path']}: {problem}", cell["label"]


def scan_table(root: Path, ratios: SplitRatios = DEFAULT_SPLIT, columns: dict[str, str] | None = None,
               checks_for: ChecksFor = opening_every_file) -> Scan:
    """Every row of the label table at `root` (a CSV, or a folder holding one) as a record."""
    table = find_table(root)
    if table is None:
        raise DataError(f"{root}: no label table (a {TABLE_SUFFIX} file) found")
    with open(table, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        found = _header_columns(table, list(reader.fieldnames or []), columns or {})
        checks = checks_for(table)
        rows = [(reader.line_num, *_row(table, row, found, checks)) for row in reader]
    classes = sorted({name for *_, name in rows if name})
    if not classes:
        raise DataError(f"{table}: no row with an image and a class")
    records, unsplit = [], {name: [] for name in classes}
    for line, sample, problem, name in rows:
        if problem is not None:
            issue = DataIssue(table, f"row {line - 1}: {problem}", line)
            records.append(Record(replace(sample, split=sample.split or "train"), "malformed", (issue,)))
        elif sample.split:
            records.append(Record(Sample(sample.image_path, sample.split, classes.index(name),
                                         patient=sample.patient), "labelled"))
        else:
            unsplit[name].append(sample)
    rng = np.random.default_rng(ratios.seed)
    for name, samples in unsplit.items():
        for sample, split in zip(samples, ratios.assign(len(samples), rng), strict=True):
            records.append(Record(Sample(sample.image_path, split, classes.index(name), patient=sample.patient),
                                  "labelled"))
    ships_splits = "split" in found and not any(unsplit.values())
    return Scan(root=table, format="table", classes=classes, records=records, ships_splits=ships_splits)
