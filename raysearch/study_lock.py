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

from raysearch.errors import ConfigError
from raysearch.layout import LOCK_FILE


def _holder(text: str) -> str:
    """The recorded holder as `PID N on HOST (since ...)`, or what the file holds when it is no record."""
    try:
        record = json.loads(text)
        return f"PID {record['pid']} on {record['host']} (since {record['since']})"
    except (ValueError, KeyError, TypeError):
        return f"an unknown process ({text.strip()[:60]!r})"


@contextmanager
def study_lock(study_dir: Path, *, out: TextIO = sys.stderr) -> Iterator[None]:
    """Hold the study's driver lock for the block (creating `study_dir` if needed); ConfigError if held."""
    study_dir.mkdir(parents=True, exist_ok=True)
    path = study_dir / LOCK_FILE
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(path.read_text(errors="replace"))
            raise ConfigError(f"{study_dir}: another raysearch driver runs this study: {holder}; wait for it "
                              f"or stop it") from None
        previous = os.pread(descriptor, 4096, 0).decode(errors="replace")
        if previous.strip():
            print(f"raysearch: {study_dir}: took over the lock of {_holder(previous)}, which ended without "
                  "releasing it", file=out)
        record = {"host": socket.gethostname(), "pid": os.getpid(),
                  "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, json.dumps(record).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(descriptor, 0)
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)
