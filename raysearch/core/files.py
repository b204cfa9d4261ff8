"""The one way raysearch writes a file or a folder: into a staging sibling, renamed into place only when complete.

A crash, a full disk or an error while writing leaves the earlier file or folder as it was and no staging left
behind; readers see either the old version or the new one, never half of one. A full disk, a quota, a read-only
file system or a missing permission becomes one `StorageError` line naming the path (and the space needed, where
known), raised after the staging is removed. `inside` keeps every path read or written within the folder it
belongs to (a study folder, a results folder), and `check_writable_folder` refuses a place that cannot hold a
folder before anything is created.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING

from raysearch.errors import ConfigError, DataError, StorageError

if TYPE_CHECKING:
    import pyarrow as pa

UNWRITABLE = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
NEARLY_FULL_BYTES = 1 << 20   # below this much free space, a short write without an errno (numpy's) means full


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.3g} MB"


def _free_bytes(path: Path) -> int | None:
    """The bytes free to this user on the file system holding `path` (or its nearest existing parent)."""
    for place in (path, *path.parents):
        if place.exists():
            return shutil.disk_usage(place).free
    return None


def require_space(path: Path, needed: int) -> None:
    """StorageError when the file system that will hold `path` has less than `needed` bytes free (checked before
    writing anything)."""
    free = _free_bytes(Path(path))
    if free is not None and free < needed:
        raise StorageError(f"{path}: needs {_megabytes(needed)} but {_megabytes(free)} is free on its file system; "
                           "free some space or choose another --results")


def storage_error(error: OSError, path: Path, needed: int | None = None) -> StorageError | None:
    """The one-line StorageError for an OSError that says `path` cannot be written (full, quota, read-only, no
    permission), None for any other OSError. A short write without an errno (numpy's `tofile`) counts as a
    full disk when the file system is nearly full."""
    reason = UNWRITABLE.get(error.errno) if error.errno is not None else None
    if reason is None and error.errno is None and (_free_bytes(Path(path)) or 0) < NEARLY_FULL_BYTES:
        reason = UNWRITABLE[errno.ENOSPC]
    if reason is None:
        return None
    size = f" ({_megabytes(needed)} needed)" if needed and error.errno in (None, errno.ENOSPC, errno.EDQUOT) else ""
    return StorageError(f"{path}: cannot write: {reason}{size}; nothing was half-written")


@contextmanager
def _writing(path: Path, needed: int | None = None) -> Iterator[None]:
    """Raise `storage_error` for the unwritable-place OSErrors the block raises while writing `path`."""
    try:
        yield
    except OSError as error:
        translated = storage_error(error, path, needed)
        if translated is None:
            raise
        raise translated from None


def inside(root: Path, candidate: str | Path) -> Path:
    """`candidate` (relative to `root`, or absolute) resolved, if it lies inside `root`; else a DataError.

    Symbolic links are resolved first, so a link pointing out of the folder is refused too. Every reader and
    writer of a study or results folder goes through it (the dashboard's reads, evaluate's PNGs, the study folder).
    """
    base = Path(root).resolve()
    path = Path(candidate)
    resolved = (path if path.is_absolute() else base / path).resolve()
    if not resolved.is_relative_to(base):
        raise DataError(f"{candidate}: refused, the path lies outside the folder {base}")
    return resolved


def check_writable_folder(path: Path, flag: str) -> None:
    """ConfigError (one line naming `flag`) unless `path` is a folder raysearch can write in, or one it can create:
    checked on the nearest existing folder above it with a probe file (removed at once), before anything is created.
    """
    path = Path(path).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists() or p.is_symlink())
    if not existing.is_dir():
        what = "is a file" if existing == path else f"lies under {existing}, which is a file"
        raise ConfigError(f"{flag} {path}: {what}, not a folder")
    try:
        descriptor, probe = tempfile.mkstemp(prefix=".raysearch-probe-", dir=existing)
    except OSError as error:
        raise ConfigError(f"{flag} {path}: {existing} cannot be written ({error.strerror})") from None
    os.close(descriptor)
    os.unlink(probe)


def staging_name(path: Path, kind: str = "tmp") -> Path:
    """The hidden sibling of `path` this process stages it in (`.NAME.tmp-PID`)."""
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}")


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A staging path to write `path`'s new content to; renamed over `path` when the block ends without error,
    removed when it raises. The parent folder is created."""
    path = Path(path)
    staging = staging_name(path)
    try:
        with _writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            yield staging
            os.replace(staging, path)
    finally:
        with suppress(OSError):   # absent, or on a file system that refused it
            staging.unlink()


def write_bytes_atomic(data: bytes, path: Path) -> None:
    """Write a file's bytes atomically (see atomic_file)."""
    with atomic_file(path) as staging:
        staging.write_bytes(data)


def write_text_atomic(text: str, path: Path) -> None:
    """Write a text file atomically (see atomic_file)."""
    with atomic_file(path) as staging:
        staging.write_text(text)


def write_table_atomic(table: pa.Table, path: Path) -> None:
    """Write a Parquet file atomically (see atomic_file)."""
    import pyarrow.parquet as pq

    with atomic_file(path) as staging:
        pq.write_table(table, staging)


@contextmanager
def atomic_folder(target: Path, *, keep_if: Callable[[Path], bool] | None = None,
                  size: int | None = None) -> Iterator[Path]:
    """An empty staging folder beside `target` to build its new content in; swapped in for `target` when the block
    ends without error (the old folder is removed only after the swap), removed when it raises.

    `keep_if`: for content that is the same whoever builds it (caches, phantom datasets), a test of a complete
    `target`; when another process put one there first, it is kept and the staging folder discarded (any other
    `target` is an OSError).
    `size`: the bytes the content will take, when known: refused up front (StorageError) when they do not fit.
    """
    target = Path(target)
    if size is not None:
        require_space(target.parent, size)
    staging, old = staging_name(target), staging_name(target, "old")
    try:
        with _writing(target, size):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            yield staging
            _swap(staging, target, old, keep_if=keep_if)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def _swap(staging: Path, target: Path, old: Path, *, keep_if: Callable[[Path], bool] | None) -> None:
    """Put the complete `staging` folder in `target`'s place (see atomic_folder)."""
    if keep_if is not None:
        _replace_unless_complete(staging, target, keep_if)
        return
    if not target.exists():
        os.replace(staging, target)
        return
    os.replace(target, old)
    try:
        os.replace(staging, target)
    except OSError:
        os.replace(old, target)
        raise


def _replace_unless_complete(staging: Path, target: Path, complete: Callable[[Path], bool]) -> None:
    """Rename `staging` to `target` unless another process put a complete `target` there first (that one is kept)."""
    try:
        os.replace(staging, target)
    except OSError:
        if not (target.is_dir() and complete(target)):
            raise
