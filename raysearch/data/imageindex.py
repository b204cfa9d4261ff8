"""What decoding each image of a dataset tells, paid for once: a per-dataset index in Parquet.

Every `run`, `resume`, `evaluate` and `data audit` needs each image's content digest (the data fingerprint),
its perceptual hash (near-duplicates, source groups) and its decode facts (size, channels, a digest of the
decoded pixels). They are kept in `<results>/cache/images/<dataset key>.parquet`, one row per image keyed by
(absolute path, size, mtime_ns): an image whose file is unchanged is not read again, one that changed (or is
new) is decoded and hashed again, so its content digest, and with it the data fingerprint, follows the file.
The index also keeps what a dataset scan asks of each file (`records.image_problem`, the displayed size), so a
second scan of unchanged images opens none of them (`indexed_checks`); masks have an index of their own beside it
(`<dataset key>.masks.parquet`: problem, size, non-binary values; `mask_facts`).

New images are decoded in parallel threads (OpenCV's decoder, Pillow's resize, OpenCV's DCT and hashlib release
the GIL; measured in docs/performance.md), with a progress bar.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raysearch.core.files import write_table_atomic
from raysearch.core.layout import image_index_file, mask_index_file
from raysearch.data.images import ImageError, read_image, to_grey8
from raysearch.data.masklevels import other_levels
from raysearch.data.records import ChecksFor, FileChecks, image_problem, image_size

INDEX_VERSION = 3  # bump when what a row means changes: older index files are then ignored
KEY_FIELDS = [("path", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64())]
SCHEMA = pa.schema([*KEY_FIELDS, ("file_digest", pa.string()), ("decoded", pa.bool_()), ("width", pa.int32()),
                    ("height", pa.int32()), ("channels", pa.int32()), ("pixel_digest", pa.string()),
                    ("phash", pa.binary(32)), ("bits", pa.int32()), ("peak", pa.int64()), ("modality", pa.string()),
                    ("photometric", pa.string()), ("patient", pa.string()), ("problem", pa.string())],
                   metadata={"raysearch_image_index": str(INDEX_VERSION)})
MASK_SCHEMA = pa.schema([*KEY_FIELDS, ("problem", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
                         ("levels", pa.list_(pa.int32()))], metadata={"raysearch_mask_index": str(INDEX_VERSION)})
PIXEL_FACTS = ("width", "height", "channels", "pixel_digest", "phash", "bits", "peak", "modality", "photometric",
               "patient")  # the columns of a decoded image, in Pixels' order
HASH_SIZE = 16  # perceptual hashes have HASH_SIZE ** 2 bits
HIGH_FREQUENCY_FACTOR = 4  # taken from a (HASH_SIZE * 4)-pixel square, as imagehash does
PARALLEL_FROM = 32  # fewer images to decode than this are decoded in the calling thread


@dataclass(frozen=True)
class Pixels:
    """What decoding one image tells: its size, channel count, content hash and perceptual hash (packed bits), its
    bits (stored, for DICOM) and, above 8 bits, the highest value; DICOM modality, photometric interpretation
    and PatientID."""

    width: int
    height: int
    channels: int
    content: str
    phash: np.ndarray
    bits: int = 8
    peak: int | None = None
    modality: str | None = None
    photometric: str | None = None
    patient: str | None = None


@dataclass(frozen=True)
class ImageFacts:
    """One image file: the digest of its bytes, what decoding it told (None: it cannot be decoded) and why it
    cannot be trained on (`records.image_problem`; None: it can)."""

    file_digest: str
    pixels: Pixels | None
    problem: str | None = None


@dataclass(frozen=True)
class MaskFacts:
    """One mask file: why it cannot be trained on (`records.image_problem`; None: it can), its displayed size
    (None: unreadable) and its values when they are not binary (`masklevels.other_levels`; () when they are)."""

    problem: str | None
    size: tuple[int, int] | None
    levels: tuple[int, ...]


def _dct_scale(size: int) -> np.ndarray:
    """Per-coefficient factors turning OpenCV's orthonormal DCT-II into the unnormalised one (scipy's default)."""
    scale = np.full(size, np.sqrt(2.0 * size))
    scale[0] = 2.0 * np.sqrt(size)
    return scale


def perceptual_hash(raw: np.ndarray) -> np.ndarray:
    """The perceptual hash (packed into uint64 words) of a decoded image of any depth and channel count.

    imagehash.phash(hash_size=16) bit for bit (tests/test_sources.py checks it on the real set): Pillow's
    Lanczos resize to 64 x 64, a 2-D DCT-II (OpenCV's, rescaled to scipy's unnormalised one, so that the search
    needs no scipy), its 16 x 16 lowest frequencies against their median."""
    from PIL import Image

    eight_bit = raw if raw.dtype == np.uint8 else cv2.convertScaleAbs(raw, alpha=255.0 / max(float(raw.max()), 1.0))
    grey = eight_bit if eight_bit.ndim == 2 else cv2.cvtColor(eight_bit[..., :3], cv2.COLOR_BGR2GRAY)
    side = HASH_SIZE * HIGH_FREQUENCY_FACTOR
    small = np.asarray(Image.fromarray(grey).resize((side, side), Image.Resampling.LANCZOS), dtype=np.float64)
    scale = _dct_scale(side)
    low = (cv2.dct(small) * scale[:, None] * scale[None, :])[:HASH_SIZE, :HASH_SIZE]
    return np.packbits(low > np.median(low)).view(np.uint64)


def file_digest(path: Path) -> str:
    """The digest of a file's bytes (what the data fingerprint is made of)."""
    return hashlib.blake2b(Path(path).read_bytes(), digest_size=16).hexdigest()


def decode_facts(path: Path) -> Pixels | None:
    """Decode one image (any format, depth and channel count: `raysearch.data.images`) and describe it; None when
    it cannot be decoded. The perceptual hash is taken of the 8-bit grey the cache holds."""
    try:
        decoded = read_image(path)
    except ImageError:
        return None
    raw, header = decoded.pixels, decoded.header
    digest = hashlib.blake2b(f"{raw.shape}{raw.dtype}".encode() + raw.tobytes(), digest_size=16).hexdigest()
    peak = None if decoded.eight_bit else int(np.nanmax(raw))
    return Pixels(header.width, header.height, header.channels, digest, perceptual_hash(to_grey8(decoded)[0]),
                  header.bits, peak, header.modality, header.photometric, header.patient)


def inspect_file(path: Path) -> ImageFacts:
    """Everything the index keeps about one image file."""
    return ImageFacts(file_digest(path), decode_facts(path), image_problem(path))


def inspect_mask(path: Path) -> MaskFacts:
    """Everything the mask index keeps about one mask file."""
    problem = image_problem(path)
    return MaskFacts(problem, image_size(path), () if problem is not None else tuple(other_levels(path)))


Key = tuple[str, int, int]  # (absolute path, size, mtime_ns): an index row holds while a file's key is unchanged


def file_key(path: Path | str) -> Key:
    """The key of a file's row in the index (OSError when it cannot be stat'ed)."""
    found = os.stat(path)
    return os.path.abspath(path), found.st_size, found.st_mtime_ns


def _image_of_row(row: dict[str, Any]) -> ImageFacts:
    values = {name: row[name] for name in PIXEL_FACTS}
    values["phash"] = np.frombuffer(values["phash"], dtype=np.uint64).copy() if values["phash"] else None
    return ImageFacts(row["file_digest"], Pixels(*values.values()) if row["decoded"] else None, row["problem"])


def _row_of_image(facts: ImageFacts) -> dict[str, Any]:
    p = facts.pixels
    pixels = ([None] * len(PIXEL_FACTS) if p is None else
              [p.width, p.height, p.channels, p.content, p.phash.tobytes(), p.bits, p.peak, p.modality,
               p.photometric, p.patient])
    return {"file_digest": facts.file_digest, "decoded": p is not None, **dict(zip(PIXEL_FACTS, pixels, strict=True)),
            "problem": facts.problem}


def _mask_of_row(row: dict[str, Any]) -> MaskFacts:
    size = None if row["width"] is None else (row["width"], row["height"])
    return MaskFacts(row["problem"], size, tuple(row["levels"]))


def _row_of_mask(facts: MaskFacts) -> dict[str, Any]:
    width, height = facts.size or (None, None)
    return {"problem": facts.problem, "width": width, "height": height, "levels": list(facts.levels)}


@dataclass(frozen=True, eq=False)
class _Kind:
    """One kind of index file: its schema, how a file is inspected, and how its facts become a row and back."""

    schema: pa.Schema
    inspect: Callable[[Path], Any]
    of_row: Callable[[dict[str, Any]], Any]
    row_of: Callable[[Any], dict[str, Any]]


IMAGES = _Kind(SCHEMA, inspect_file, _image_of_row, _row_of_image)
MASKS = _Kind(MASK_SCHEMA, inspect_mask, _mask_of_row, _row_of_mask)


def _read_index(path: Path, kind: _Kind = IMAGES) -> dict[Key, Any]:
    """The facts in an index file by (path, size, mtime_ns); {} when absent or written by another index version.
    Read once per version of the file (a start reads it for the scan, the split policy and the fingerprint):
    an index is only ever replaced whole (a new inode), so inode, size and mtime name a version."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return {}
    return _read_index_version(str(path), found.st_ino, found.st_size, found.st_mtime_ns, kind)


@functools.lru_cache(maxsize=4)
def _read_index_version(path: str, inode: int, size: int, mtime_ns: int, kind: _Kind) -> dict[Key, Any]:
    """`_read_index` of one version of the file (the result is shared: never changed by a caller)."""
    table = pq.read_table(path)
    marker = table.schema.metadata or {}
    if any(marker.get(k) != v for k, v in kind.schema.metadata.items()) or table.schema.names != kind.schema.names:
        return {}
    return {(row["path"], row["size"], row["mtime_ns"]): kind.of_row(row) for row in table.to_pylist()}


def _write_index(path: Path, entries: dict[Key, Any], kind: _Kind) -> None:
    rows = [{"path": name, "size": size, "mtime_ns": mtime, **kind.row_of(facts)}
            for (name, size, mtime), facts in entries.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_table_atomic(pa.Table.from_pylist(rows, schema=kind.schema), path)


def _keep(index_file: Path, kind: _Kind, known: dict[Key, Any], facts: dict[Key, Any]) -> None:
    """Write `facts` into the index whose rows were `known`: rows of other files stay, older rows of these go."""
    current = {name for name, _, _ in facts}
    _write_index(index_file, {**{k: f for k, f in known.items() if k[0] not in current}, **facts}, kind)


def _indexed(paths: Sequence[Path | str], index_file: Path | None, kind: _Kind, *, progress: bool,
             desc: str, keep: bool = True) -> list[Any]:
    """The facts of every file, read from `index_file` where a file is unchanged, inspected (in parallel, with a
    progress bar) where it is new or changed; the index is then updated (None, or `keep` False: nothing is
    written)."""
    from tqdm.auto import tqdm

    if not paths:
        return []
    keys = [file_key(p) for p in paths]
    known = {} if index_file is None else _read_index(index_file, kind)
    missing = sorted({key for key in keys if key not in known})
    if not missing:
        return [known[key] for key in keys]
    todo = [Path(name) for name, _, _ in missing]
    workers = 1 if len(todo) < PARALLEL_FROM else os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        found = list(tqdm(pool.map(kind.inspect, todo), total=len(todo), desc=desc, disable=not progress))
    facts = {**{key: known[key] for key in keys if key in known}, **dict(zip(missing, found, strict=True))}
    if index_file is not None and keep:
        _keep(index_file, kind, known, facts)
    return [facts[key] for key in keys]


def image_facts(paths: Sequence[Path | str], index_file: Path | None, *, progress: bool = True,
                desc: str = "decode and hash images") -> list[ImageFacts]:
    """The facts of every image, read from the dataset's index `index_file` (`layout.image_index_file`) where a
    file is unchanged, decoded (in parallel, with a progress bar) where it is new or changed; the index is then
    updated. `index_file` None: nothing is kept, every image is decoded."""
    return _indexed(paths, index_file, IMAGES, progress=progress, desc=desc)


def mask_facts(paths: Sequence[Path | str], index_file: Path | None, *, keep: bool = True) -> list[MaskFacts]:
    """The facts of every mask (`MaskFacts`), kept beside the image index `index_file` (`layout.mask_index_file`)
    as `image_facts` keeps the images': a mask is decoded again only when it changed. `keep` False: looked up
    and inspected, but nothing written."""
    masks = None if index_file is None else mask_index_file(index_file)
    return _indexed(paths, masks, MASKS, progress=False, desc="read masks", keep=keep)


def keep_mask_facts(paths: Sequence[Path | str], facts: Sequence[MaskFacts], index_file: Path) -> None:
    """Write what `mask_facts(paths, index_file, keep=False)` found into the mask index (when it found anything
    the index did not hold)."""
    masks = mask_index_file(index_file)
    known, keys = _read_index(masks, MASKS), [file_key(p) for p in paths]
    if any(key not in known for key in keys):
        _keep(masks, MASKS, known, dict(zip(keys, facts, strict=True)))


def indexed_checks(results: Path | str) -> ChecksFor:
    """The file checks of a dataset scan (`records.FileChecks`) answered from the dataset's image and mask indexes
    in the results root `results` for every file they hold unchanged (same path, size and mtime); other files
    (new or changed) are opened as without an index."""
    def checks(root: Path) -> FileChecks:
        index_file = image_index_file(results, root)
        images, masks = _read_index(index_file, IMAGES), _read_index(mask_index_file(index_file), MASKS)

        def key(path: Path) -> Key | None:
            try:
                return file_key(path)
            except OSError:
                return None

        def problem(path: Path) -> str | None:
            found = key(path)
            if found in images:
                return images[found].problem
            return masks[found].problem if found in masks else image_problem(path)

        def size(path: Path) -> tuple[int, int] | None:
            found = key(path)
            if found in images and images[found].pixels is not None:
                return images[found].pixels.width, images[found].pixels.height
            return masks[found].size if found in masks else image_size(path)

        return FileChecks(problem, size)

    return checks
