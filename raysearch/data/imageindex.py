"""What decoding each image of a dataset tells, paid for once: a per-dataset index in Parquet.

Every `run`, `resume`, `evaluate` and `data audit` needs each image's content digest (the data fingerprint),
its perceptual hash (near-duplicates, source groups) and its decode facts (size, channels, a digest of the
decoded pixels). They are kept in `<results>/cache/images/<dataset key>.parquet`, one row per image keyed by
(absolute path, size, mtime_ns): an image whose file is unchanged is not read again, one that changed (or is
new) is decoded and hashed again, so its content digest, and with it the data fingerprint, follows the file.
The index also keeps what a dataset scan asks of each file (`records.image_problem`, the displayed size), so a
second scan of unchanged images opens none of them (`indexed_checks`).

New images are decoded in parallel threads (OpenCV's decoder, Pillow's resize, OpenCV's DCT and hashlib release
the GIL; measured in docs/performance.md), with a progress bar.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raysearch.core.files import write_table_atomic
from raysearch.core.layout import image_index_file
from raysearch.data.images import ImageError, read_image, to_grey8
from raysearch.data.records import ChecksFor, FileChecks, image_problem, image_size

INDEX_VERSION = 3  # bump when what a row means changes: older index files are then ignored
SCHEMA = pa.schema([("path", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()),
                    ("file_digest", pa.string()), ("decoded", pa.bool_()), ("width", pa.int32()),
                    ("height", pa.int32()), ("channels", pa.int32()), ("pixel_digest", pa.string()),
                    ("phash", pa.binary(32)), ("bits", pa.int32()), ("peak", pa.int64()), ("modality", pa.string()),
                    ("photometric", pa.string()), ("patient", pa.string()), ("problem", pa.string())],
                   metadata={"raysearch_image_index": str(INDEX_VERSION)})
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


Key = tuple[str, int, int]  # (absolute path, size, mtime_ns): an index row holds while a file's key is unchanged


def file_key(path: Path | str) -> Key:
    """The key of a file's row in the index (OSError when it cannot be stat'ed)."""
    found = os.stat(path)
    return os.path.abspath(path), found.st_size, found.st_mtime_ns


def _read_index(path: Path) -> dict[Key, ImageFacts]:
    """The rows of an index file by (path, size, mtime_ns); {} when absent or written by another index version.
    Read once per version of the file (a start reads it for the scan, the split policy and the fingerprint):
    the index is only ever replaced whole (a new inode), so inode, size and mtime name a version."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return {}
    return _read_index_version(str(path), found.st_ino, found.st_size, found.st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _read_index_version(path: str, inode: int, size: int, mtime_ns: int) -> dict[Key, ImageFacts]:
    """`_read_index` of one version of the file (the result is shared: never changed by a caller)."""
    table = pq.read_table(path)
    if table.schema.metadata is None or table.schema.metadata.get(b"raysearch_image_index") != str(
            INDEX_VERSION).encode():
        return {}
    rows = table.to_pydict()
    found = {}
    for i, key in enumerate(zip(rows["path"], rows["size"], rows["mtime_ns"], strict=True)):
        values = {name: rows[name][i] for name in PIXEL_FACTS}
        values["phash"] = np.frombuffer(values["phash"], dtype=np.uint64).copy() if values["phash"] else None
        pixels = Pixels(*values.values()) if rows["decoded"][i] else None
        found[key] = ImageFacts(rows["file_digest"][i], pixels, rows["problem"][i])
    return found


def _write_index(path: Path, entries: dict[Key, ImageFacts]) -> None:
    columns: dict[str, list] = {field.name: [] for field in SCHEMA}
    for (name, size, mtime), facts in entries.items():
        p = facts.pixels
        facts_of = ([None] * len(PIXEL_FACTS) if p is None else
                    [p.width, p.height, p.channels, p.content, p.phash.tobytes(), p.bits, p.peak, p.modality,
                     p.photometric, p.patient])
        row = (name, size, mtime, facts.file_digest, p is not None, *facts_of, facts.problem)
        for column, value in zip(columns, row, strict=True):
            columns[column].append(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_table_atomic(pa.table(columns, schema=SCHEMA), path)


def image_facts(paths: Sequence[Path | str], index_file: Path | None, *, progress: bool = True,
                desc: str = "decode and hash images") -> list[ImageFacts]:
    """The facts of every image, read from the dataset's index `index_file` (`layout.image_index_file`) where a
    file is unchanged, decoded (in parallel, with a progress bar) where it is new or changed; the index is then
    updated. `index_file` None: nothing is kept, every image is decoded."""
    from tqdm.auto import tqdm

    if not paths:
        return []
    keys = [file_key(p) for p in paths]
    known = {} if index_file is None else _read_index(index_file)
    missing = sorted({key for key in keys if key not in known})
    if missing:
        todo = [Path(name) for name, _, _ in missing]
        workers = 1 if len(todo) < PARALLEL_FROM else os.cpu_count() or 1
        with ThreadPoolExecutor(max_workers=workers) as pool:
            found = list(tqdm(pool.map(inspect_file, todo), total=len(todo), desc=desc, disable=not progress))
        current = {name for name, _, _ in keys}
        kept = {key: facts for key, facts in known.items() if key[0] not in current}  # other images of the set
        known = {**kept, **{key: known[key] for key in keys if key in known}, **dict(zip(missing, found, strict=True))}
        if index_file is not None:
            _write_index(index_file, known)
    return [known[key] for key in keys]


def indexed_checks(results: Path | str) -> ChecksFor:
    """The file checks of a dataset scan (`records.FileChecks`) answered from the dataset's image index in the
    results root `results` for every file it holds unchanged (same path, size and mtime); other files (new,
    changed, masks) are opened as without an index."""
    def checks(root: Path) -> FileChecks:
        known = _read_index(image_index_file(results, root))

        def facts(path: Path) -> ImageFacts | None:
            try:
                return known.get(file_key(path))
            except OSError:
                return None

        def problem(path: Path) -> str | None:
            found = facts(path)
            return image_problem(path) if found is None else found.problem

        def size(path: Path) -> tuple[int, int] | None:
            found = facts(path)
            if found is None or found.pixels is None:
                return image_size(path)
            return found.pixels.width, found.pixels.height

        return FileChecks(problem, size)

    return checks
