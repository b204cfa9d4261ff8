"""The one way raysearch writes a file or a folder: into a staging sibling, renamed into place only when complete.

A crash, a full disk or an error while writing leaves the earlier file or folder as it was and no staging left
behind; readers see either the old version or the new one, never half of one. `inside` keeps every path read or
written within the folder it belongs to (a study folder, a results folder), and `check_writable_folder` refuses a
place that cannot hold a folder before anything is created.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from raysearch.errors import ConfigError, DataError

if TYPE_CHECKING:
    import pyarrow as pa


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
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_name(path)
    try:
        yield staging
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)


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
def atomic_folder(target: Path, *, keep_if: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """An empty staging folder beside `target` to build its new content in; swapped in for `target` when the block
    ends without error (the old folder is removed only after the swap), removed when it raises.

    `keep_if`: for content that is the same whoever builds it (caches, phantom datasets), a test of a complete
    `target`; when another process put one there first, it is kept and the staging folder discarded (any other
    `target` is an OSError).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging, old = staging_name(target), staging_name(target, "old")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
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
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def _replace_unless_complete(staging: Path, target: Path, complete: Callable[[Path], bool]) -> None:
    """Rename `staging` to `target` unless another process put a complete `target` there first (that one is kept)."""
    try:
        os.replace(staging, target)
    except OSError:
        if not (target.is_dir() and complete(target)):
            raise
