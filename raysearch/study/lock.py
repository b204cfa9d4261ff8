"""One driver per study: `raysearch run` and `raysearch resume` hold an exclusive lock on the study folder.

The lock is a kernel advisory lock (`fcntl.flock`) on `<study>/driver.lock`, so it cannot outlive its
holder: the kernel drops it when the process ends however it ends (exit, exception, Ctrl-C, kill -9).
The file records the holder's host, PID and start time while held and is emptied on a clean release, so a
driver that finds the lock free but the record filled knows its predecessor died holding it, says so in
one line, and takes over. A driver that finds the lock held gets a ConfigError naming the holder.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from raysearch.core.layout import LOCK_FILE
from raysearch.errors import ConfigError

ATTEMPTS = 5
_HELD: set[Path] = set()  # the lock files this process holds


def _holder(text: str) -> str:
    """The recorded holder as `PID N on HOST (since ...)`, or what the file holds when it is no record."""
    try:
        record = json.loads(text)
        return f"PID {record['pid']} on {record['host']} (since {record['since']})"
    except (ValueError, KeyError, TypeError):
        return f"an unknown process ({text.strip()[:60]!r})"


def _busy(study_dir: Path, holder: str) -> ConfigError:
    return ConfigError(f"{study_dir}: another raysearch driver runs this study: {holder}; wait for it or stop it")


def refuse_if_held(study_dir: Path) -> None:
    """ConfigError naming the holder when a driver holds the study's lock now (checked without creating
    anything, so that a study being run is not mistaken for an interrupted one)."""
    path = study_dir / LOCK_FILE
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        if path.resolve() not in _HELD:
            raise _busy(study_dir, _holder(path.read_text(errors="replace"))) from None
    finally:
        os.close(descriptor)


def _acquire(study_dir: Path) -> int:
    """A descriptor of `study_dir`/driver.lock holding its exclusive lock; ConfigError naming the holder if held.

    A releasing driver that created the folder removes it when nothing else was written (a run refused after
    taking the lock leaves nothing behind), so the lock is only ours if the path still names the file locked."""
    path = study_dir / LOCK_FILE
    for _ in range(ATTEMPTS):
        study_dir.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise _busy(study_dir, _holder(path.read_text(errors="replace"))) from None
        try:
            if os.stat(path).st_ino == os.fstat(descriptor).st_ino:
                return descriptor
        except FileNotFoundError:
            pass
        os.close(descriptor)
    raise ConfigError(f"{study_dir}: could not take the driver lock ({path} kept changing); try again")


@contextmanager
def study_lock(study_dir: Path, *, out: TextIO = sys.stderr) -> Iterator[None]:
    """Hold the study's driver lock for the block (creating `study_dir` if needed); ConfigError if held.

    A folder this call created and nothing but the lock was written to is removed again on release."""
    created = not study_dir.exists()
    descriptor = _acquire(study_dir)
    try:
        previous = os.pread(descriptor, 4096, 0).decode(errors="replace")
        if previous.strip():
            print(f"raysearch: {study_dir}: took over the lock of {_holder(previous)}, which ended without "
                  "releasing it", file=out)
        record = json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                             "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, record.encode(), 0)
        _HELD.add((study_dir / LOCK_FILE).resolve())
        try:
            yield
        finally:
            _HELD.discard((study_dir / LOCK_FILE).resolve())
            os.ftruncate(descriptor, 0)
            if created and [p.name for p in study_dir.iterdir()] == [LOCK_FILE]:
                (study_dir / LOCK_FILE).unlink()
                study_dir.rmdir()
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)
