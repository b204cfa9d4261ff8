"""`raysearch data audit`: what a dataset holds and what is wrong with it, before any training.

The audit scans the dataset like a run does (`formats.scan_dataset`), decodes every image once, and
reports in one tidy long-format table (`audit.parquet`: section, split, class, key, value, detail, path,
line): images and label files per split; labelled, empty, missing and malformed ones; instances and
images per class per split; classes absent from a split or nearly empty; every problem with file and
line; image sizes and channel counts; polygon point counts; exact duplicate images (hash of the decoded
pixels) within and across splits, and near-duplicates across splits (perceptual hash). Leakage between
train and test inflates every score, so duplicates are listed pair by pair.

Near-duplicates and source groups follow `raysearch.data.sources` (perceptual hash, Roboflow `.rf.` stems);
the summary states how many validation and test images have a source in train and recommends a split policy.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
import pyarrow as pa

from raysearch.core.files import write_table_atomic
from raysearch.core.layout import AUDIT_FILE, image_index_file, near_pairs_file
from raysearch.data.formats import scan_dataset
from raysearch.data.imageindex import HASH_SIZE, Pixels, image_facts, indexed_checks, mask_facts
from raysearch.data.masklevels import describe_levels
from raysearch.data.records import DEFAULT_SPLIT, Record, Scan, SplitRatios, opening_every_file
from raysearch.data.samples import SPLITS, DataIssue
from raysearch.data.sources import NEAR_DUPLICATE_BITS, group_sources, near_pairs
from raysearch.data.splits import EVALUATED, in_train_source, join_patients, recommend_policy

NEARLY_EMPTY = 5
SCHEMA = pa.schema([("section", pa.string()), ("split", pa.string()), ("class", pa.string()), ("key", pa.string()),
                    ("value", pa.int64()), ("detail", pa.string()), ("path", pa.string()), ("line", pa.int64())])


@dataclass(frozen=True)
class Finding:
    """One row of the audit table."""

    section: str
    key: str
    value: int
    split: str = ""
    class_name: str = ""
    detail: str = ""
    path: str = ""
    line: int | None = None


@dataclass
class Audit:
    """The findings about one dataset, and the problems (if any) that make training on it impossible."""

    name: str
    root: Path
    format: str
    classes: list[str]
    findings: list[Finding] = field(default_factory=list)
    fatal: list[str] = field(default_factory=list)

    def add(self, section: str, key: str, value: int, **where: object) -> None:
        """Append one finding."""
        self.findings.append(Finding(section, key, int(value), **where))

    def value(self, section: str, key: str, split: str = "", class_name: str = "") -> int:
        """The value of one finding (0 when absent)."""
        return sum(f.value for f in self.findings
                   if (f.section, f.key, f.split, f.class_name) == (section, key, split, class_name))

    def rows(self, section: str) -> list[Finding]:
        """Every finding of one section."""
        return [f for f in self.findings if f.section == section]

    def table(self) -> pa.Table:
        """The findings as the tidy table written to audit.parquet."""
        columns = {"section": [], "split": [], "class": [], "key": [], "value": [], "detail": [], "path": [],
                   "line": []}
        for f in self.findings:
            for column, value in zip(columns, (f.section, f.split, f.class_name, f.key, f.value, f.detail, f.path,
                                               f.line), strict=True):
                columns[column].append(value)
        return pa.table(columns, schema=SCHEMA)


def _instances(record: Record) -> list[int]:
    """The class of every labelled object of a record (a mask counts as one object of class 0)."""
    if record.status != "labelled":
        return []
    if record.sample.shapes:
        return [shape.class_id for shape in record.sample.shapes]
    if record.sample.class_id is not None:
        return [record.sample.class_id]
    return [0] if record.sample.mask_path is not None else []


def _count_files(audit: Audit, scan: Scan, pixels: list[Pixels | None]) -> None:
    for split in SPLITS:
        records = [(r, p) for r, p in zip(scan.records, pixels, strict=True) if r.sample.split == split]
        statuses = Counter(r.status for r, _ in records)
        audit.add("files", "images", len(records), split=split)
        if scan.format == "yolo":
            audit.add("files", "label_files", len(records) - statuses["missing"], split=split)
        for status in ("labelled", "empty", "missing", "malformed"):
            audit.add("files", status, statuses[status], split=split)
        audit.add("files", "undecodable", sum(p is None and r.status != "malformed" for r, p in records), split=split)
        audit.add("files", "multi_instance", sum(len(_instances(r)) > 1 for r, _ in records), split=split)
        audit.add("files", "mixed_classes", sum(len(set(_instances(r))) > 1 for r, _ in records), split=split)


def _count_classes(audit: Audit, scan: Scan) -> None:
    """Instances, images containing the class, and images whose class (the training target) it is."""
    has_targets = any(r.sample.class_id is not None for r in scan.records)  # masks have no image-level class
    for split in SPLITS:
        records = [r for r in scan.records if r.sample.split == split]
        instances = Counter(c for r in records for c in _instances(r))
        images = Counter(c for r in records for c in set(_instances(r)))
        targets = Counter(r.sample.class_id for r in records if r.status == "labelled")
        for class_id, name in enumerate(scan.classes):
            where = {"split": split, "class_name": name}
            audit.add("classes", "instances", instances[class_id], **where)
            audit.add("classes", "images", images[class_id], **where)
            audit.add("classes", "targets", targets[class_id], **where)
            if not records:
                continue
            count = images[class_id]
            if count == 0:
                audit.add("class_warnings", "absent", 0, **where, detail="absent: no image")
            elif count < NEARLY_EMPTY:
                audit.add("class_warnings", "nearly_empty", count, **where,
                          detail=f"nearly empty: {count} images (fewer than {NEARLY_EMPTY})")
            if has_targets and count and not targets[class_id]:
                audit.add("class_warnings", "never_target", count, **where,
                          detail=f"in {count} images, but never an image's class (its first polygon)")


def _count_issues(audit: Audit, scan: Scan, pixels: list[Pixels | None]) -> None:
    for record, found in zip(scan.records, pixels, strict=True):
        issues = list(record.issues)
        if found is None and record.status != "malformed":
            issues.append(DataIssue(record.sample.image_path, "image cannot be decoded"))
        for issue in issues:
            audit.add("issues", "malformed_line" if issue.line is not None else "problem", 1,
                      split=record.sample.split, detail=issue.message, path=str(issue.path), line=issue.line)


def _count_pixels(audit: Audit, scan: Scan, pixels: list[Pixels | None]) -> None:
    for split in SPLITS:
        found = [p for r, p in zip(scan.records, pixels, strict=True)
                 if r.sample.split == split and p is not None]
        for size, count in Counter(f"{p.width}x{p.height}" for p in found).most_common():
            audit.add("image_sizes", size, count, split=split)
        for channels, count in sorted(Counter(p.channels for p in found).items()):
            audit.add("channels", str(channels), count, split=split)
        for key, count in sorted(Counter(f"{p.bits}" for p in found).items()):
            audit.add("bits_stored", key, count, split=split)
        for key, count in sorted(Counter(_used_range(p.peak) for p in found if p.peak is not None).items()):
            audit.add("deep_ranges", key, count, split=split, detail="images over 8 bits by their highest value")
        for section, values in (("modality", [p.modality for p in found]),
                                ("photometric", [p.photometric for p in found])):
            for key, count in sorted(Counter(v for v in values if v).items()):
                audit.add(section, key, count, split=split)


def _used_range(peak: int) -> str:
    """The bit depth an image's highest value needs ('12-bit' for 0-4095)."""
    bits = max(int(peak), 1).bit_length()
    return f"{bits}-bit (0-{(1 << bits) - 1})"


def _patients(scan: Scan, pixels: list[Pixels | None]) -> list[str | None]:
    """Each record's patient: the DICOM file's PatientID, else the label table's."""
    return [(p.patient if p is not None else None) or r.sample.patient
            for r, p in zip(scan.records, pixels, strict=True)]


def _count_patients(audit: Audit, scan: Scan, pixels: list[Pixels | None]) -> None:
    """Patients per split, images per patient, and patients with images in more than one split."""
    patients = _patients(scan, pixels)
    splits_of: dict[str, set[str]] = {}
    for record, patient in zip(scan.records, patients, strict=True):
        if patient is not None:
            splits_of.setdefault(patient, set()).add(record.sample.split)
    if not splits_of:
        return
    for split in SPLITS:
        images = Counter(p for r, p in zip(scan.records, patients, strict=True) if r.sample.split == split and p)
        audit.add("patients", "patients", len(images), split=split)
        audit.add("patients", "images", sum(images.values()), split=split)
        audit.add("patients", "max_images", max(images.values(), default=0), split=split,
                  detail="most images of one patient")
        shared = sum(split in s and len(s) > 1 for s in splits_of.values())
        audit.add("patients", "shared", shared, split=split, detail="patients with images in another split too")


def _count_polygons(audit: Audit, scan: Scan) -> None:
    for split in SPLITS:
        labelled = [r for r in scan.records if r.sample.split == split and r.status == "labelled"]
        shapes = [s for r in labelled for s in r.sample.shapes]
        for points, count in sorted(Counter(len(s.points) for s in shapes).items()):
            audit.add("polygons", f"{points}_points", count, split=split)
        if shapes:
            closed = sum(len(s.points) > 3 and np.allclose(s.points[0], s.points[-1], atol=1e-6) for s in shapes)
            audit.add("polygons", "closed_rings", closed, split=split, detail="first point repeated at the end")


def _count_duplicates(audit: Audit, scan: Scan, pixels: list[Pixels | None]) -> None:
    decoded = [(r.sample.split, r.sample.image_path, p)
               for r, p in zip(scan.records, pixels, strict=True) if p is not None]
    by_split = {s: [(path, p) for split, path, p in decoded if split == s] for s in SPLITS}
    for split, items in by_split.items():
        copies = Counter(p.content for _, p in items)
        audit.add("duplicates", "exact_within", sum(n - 1 for n in copies.values()), split=split,
                  detail="images identical to an earlier one of the same split")
        seen: dict[str, Path] = {}
        for path, p in items:
            if p.content in seen:
                audit.add("duplicate_pairs", "exact", 0, split=split, path=str(seen[p.content]), detail=str(path))
            seen.setdefault(p.content, path)
    for first, second in combinations(SPLITS, 2):
        left, right, pair = by_split[first], by_split[second], f"{first}/{second}"
        if not left or not right:
            continue
        found = near_pairs(np.stack([p.phash for _, p in left]), np.stack([p.phash for _, p in right]))
        exact = [(i, j, d) for i, j, d in found if left[i][1].content == right[j][1].content]
        near = [(i, j, d) for i, j, d in found if left[i][1].content != right[j][1].content]
        audit.add("duplicates", "exact_across", len({j for _, j, _ in exact}), split=pair,
                  detail=f"{second} images identical to a {first} image")
        audit.add("duplicates", "near_across", len({j for _, j, _ in near}), split=pair,
                  detail=f"{second} images within {NEAR_DUPLICATE_BITS} of {HASH_SIZE ** 2} perceptual-hash bits "
                         f"of a {first} image")
        for kind, pairs in (("exact", exact), ("near", near)):
            for i, j, distance in pairs:
                audit.add("duplicate_pairs", kind, distance, split=pair, path=str(left[i][0]), detail=str(right[j][0]))


def _count_masks(audit: Audit, scan: Scan, index_file: Path | None) -> None:
    """Masks whose values are not 0/1/255 (e.g. class labels), which `raysearch run` refuses unless binarising;
    their values kept beside the image index `index_file` (`imageindex.mask_facts`)."""
    masked = [r for r in scan.records if r.sample.mask_path is not None]
    facts = mask_facts([r.sample.mask_path for r in masked], index_file)
    for record, found in zip(masked, (list(f.levels) for f in facts), strict=True):
        if found:
            audit.add("issues", "mask_values", 1, split=record.sample.split, path=str(record.sample.mask_path),
                      detail=f"mask values {describe_levels(found)} are not 0/1/255 (raysearch run needs "
                             "--binarise-masks)")


def _split_warnings(audit: Audit) -> None:
    if audit.value("files", "images", "train") and not audit.value("files", "labelled", "val"):
        audit.add("split_warnings", "no_validation", 0, split="val",
                  detail="no labelled validation images: raysearch run carves a seeded validation split from train")


def _count_sources(audit: Audit, scan: Scan, pixels: list[Pixels | None], pairs_file: Path | None) -> None:
    """Validation and test images with a source (Roboflow stem or near-duplicate) in train, and the split
    policy recommended for them (`raysearch.data.splits`); the near-duplicate pairs kept in `pairs_file`."""
    groups = group_sources([r.sample.image_path for r in scan.records], [p and p.phash for p in pixels], pairs_file)
    groups = join_patients(groups, _patients(scan, pixels))
    splits = [r.sample.split for r in scan.records]
    flags = in_train_source(splits, groups)
    for split in EVALUATED:
        audit.add("sources", "in_train", sum(f for f, s in zip(flags, splits, strict=True) if s == split),
                  split=split, detail=f"{split} images whose source or a near-duplicate is in train")
    leaked = sum(audit.value("sources", "in_train", s) for s in EVALUATED)
    evaluated = sum(s in EVALUATED for s in splits)
    audit.add("sources", "recommended_policy", leaked, detail=recommend_policy(leaked, evaluated))


def _fatal(audit: Audit) -> None:
    labelled = {s: audit.value("files", "labelled", s) for s in SPLITS}
    if not sum(audit.value("files", "images", s) for s in SPLITS):
        audit.fatal.append("no images found")
    elif not sum(labelled.values()):
        audit.fatal.append("no usable labelled images in any split")
    elif not labelled["train"]:
        audit.fatal.append("the train split has no labelled images")


def audit_dataset(root: Path, format: str | None = None, *, split_ratios: SplitRatios = DEFAULT_SPLIT,
                  columns: str | None = None, results: Path | None = None, progress: bool = True) -> Audit:
    """Audit the dataset at `root` (format detected unless given); every image's decode facts come from the
    dataset's image index in the results root `results` (`raysearch.data.imageindex`: images new or changed since
    are decoded; None: no index, every image is decoded)."""
    root = Path(root)
    checks_for = opening_every_file if results is None else indexed_checks(results)
    scan = scan_dataset(root, format, split_ratios=split_ratios, columns=columns, checks_for=checks_for)
    paths = [r.sample.image_path for r in scan.records]
    index_file = None if results is None else image_index_file(results, scan.root)
    pixels = [f.pixels for f in image_facts(paths, index_file, progress=progress, desc="audit: decode and hash")]
    name = (root.parent if root.is_file() else root).resolve().name
    audit = Audit(name=name, root=scan.root, format=scan.format, classes=scan.classes)
    _count_files(audit, scan, pixels)
    _count_classes(audit, scan)
    _count_issues(audit, scan, pixels)
    _count_pixels(audit, scan, pixels)
    _count_patients(audit, scan, pixels)
    _count_polygons(audit, scan)
    _count_duplicates(audit, scan, pixels)
    _count_masks(audit, scan, index_file)
    _split_warnings(audit)
    _count_sources(audit, scan, pixels, None if index_file is None else near_pairs_file(index_file))
    _fatal(audit)
    for problem in audit.fatal:
        audit.add("fatal", "training_impossible", 1, detail=problem)
    return audit


def write_audit(audit: Audit, out_dir: Path) -> Path:
    """Write `audit.parquet` into `out_dir` (atomically) and return its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / AUDIT_FILE
    write_table_atomic(audit.table(), path)
    return path


def _split_table(audit: Audit) -> list[str]:
    keys = ["images", *(["label_files"] if audit.format == "yolo" else []), "labelled", "empty", "missing",
            "malformed", "undecodable", "multi_instance"]
    lines = [f"  {'split':<6}" + "".join(f"{k:>{len(k) + 2}}" for k in keys)]
    for split in SPLITS:
        lines.append(f"  {split:<6}" + "".join(f"{audit.value('files', k, split):>{len(k) + 2}}" for k in keys))
    return lines


def _class_table(audit: Audit) -> list[str]:
    width = max(len(c) for c in audit.classes) + 2
    lines = [f"  {'class':<{width}}" + "".join(f"{s:>22}" for s in SPLITS) + "   (instances / images / as class)"]
    for name in audit.classes:
        cells = [f"{audit.value('classes', k, s, name)}" for s in SPLITS for k in ("instances", "images", "targets")]
        lines.append(f"  {name:<{width}}" + "".join(f"{' / '.join(cells[i:i + 3]):>22}" for i in range(0, 9, 3)))
    return lines


def _pixel_summary(audit: Audit) -> list[str]:
    lines = []
    for split in SPLITS:
        sizes = audit.rows("image_sizes")
        sizes = [f for f in sizes if f.split == split]
        if not sizes:
            continue
        channels = ", ".join(f"{f.key} channel(s) ×{f.value}" for f in audit.rows("channels") if f.split == split)
        top = ", ".join(f"{f.key} ×{f.value}" for f in sizes[:3])
        lines.append(f"  {split}: {len(sizes)} distinct sizes (most common {top}); {channels}")
    return lines


def _patient_summary(audit: Audit) -> list[str]:
    """Patients per split and the DICOM / bit-depth facts, when the dataset has any (nothing for 8-bit files)."""
    lines = []
    for split in SPLITS:
        sections = {"bits_stored": "bits stored", "deep_ranges": "over 8 bits by range", "modality": "modality",
                    "photometric": "photometric"}
        if all(f.key == "8" for f in audit.rows("bits_stored")):
            del sections["bits_stored"]
        facts = [f"{label} " + ", ".join(f"{f.key} ×{f.value}" for f in audit.rows(section) if f.split == split)
                 for section, label in sections.items() if any(f.split == split for f in audit.rows(section))]
        if audit.value("patients", "images", split):
            patients = audit.value("patients", "patients", split)
            facts.insert(0, f"{patients} patients, {audit.value('patients', 'images', split) / patients:.1f} images "
                            f"per patient (at most {audit.value('patients', 'max_images', split)}), "
                            f"{audit.value('patients', 'shared', split)} shared with another split")
        if facts:
            lines.append(f"  {split}: " + "; ".join(facts))
    return lines


def _leak_summary(audit: Audit) -> str:
    """How many validation and test images have a source in train, and the split policy to use."""
    counts = ", ".join(f"{audit.value('sources', 'in_train', s)} of {audit.value('files', 'images', s)} {s}"
                       for s in EVALUATED)
    policy = next(f.detail for f in audit.rows("sources") if f.key == "recommended_policy")
    advice = {"published": "the published splits are leak-free",
              "deduplicated": "drop them from val and test",
              "grouped": "too many to drop: re-split the images by source"}[policy]
    return f"Sources shared with train: {counts} images have a source or near-duplicate in train; " \
           f"recommended: --splits {policy} ({advice})"


def format_audit(audit: Audit) -> str:
    """The audit as a readable terminal report."""
    lines = [f"Audit of {audit.name} ({audit.format}, {audit.root})", "Files per split:", *_split_table(audit),
             "Classes per split:", *_class_table(audit), "Class warnings:"]
    warnings = audit.rows("class_warnings")
    lines += [f"  {f.class_name} in {f.split}: {f.detail}" for f in warnings]
    lines += ["  none"] if not warnings else []
    lines += ["Image sizes and channels:", *_pixel_summary(audit)]
    patients = _patient_summary(audit)
    lines += ["Patients, DICOM attributes and bit depth:", *patients] if patients else []
    points = Counter()
    for f in audit.rows("polygons"):
        points[f.key] += f.value
    if points:
        lines.append("Polygons: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(points.items())))
    duplicates = {k: sum(f.value for f in audit.rows("duplicates") if f.key == k)
                  for k in ("exact_within", "exact_across", "near_across")}
    lines.append(f"Duplicates: exact within splits {duplicates['exact_within']}, exact across splits "
                 f"{duplicates['exact_across']}, near-duplicates across splits {duplicates['near_across']} "
                 f"(perceptual hash within {NEAR_DUPLICATE_BITS}/{HASH_SIZE ** 2} bits)")
    lines.append(_leak_summary(audit))
    issues = audit.rows("issues")
    lines.append(f"Problems: {len(issues)} ({sum(f.key == 'malformed_line' for f in issues)} malformed label lines)")
    lines += [f"  {f.path}{f':{f.line}' if f.line is not None else ''}: {f.detail}" for f in issues[:10]]
    lines += [f"  ... and {len(issues) - 10} more in {AUDIT_FILE}"] if len(issues) > 10 else []
    lines += [f"Split warning: {f.detail}" for f in audit.rows("split_warnings")]
    lines += [f"Training impossible: {problem}" for problem in audit.fatal]
    return "\n".join(lines)
