"""User-facing errors: one line, naming the file, line or field at fault."""

from __future__ import annotations


class RaysearchError(Exception):
    """An error caused by user input; the CLI prints it on one line and exits with `exit_code`."""

    exit_code = 2


class ConfigError(RaysearchError):
    """A search-space or study configuration is invalid."""


class DataError(RaysearchError):
    """A dataset file is missing, unreadable or malformed."""


class StorageError(RaysearchError):
    """A place raysearch writes to is full, over quota, read-only or not writable by this user."""


class ClusterError(RaysearchError):
    """The Ray cluster at --address could not be reached, or refused the connection."""


class StudyInterrupted(RaysearchError):
    """The search stopped before every trial finished; its state is saved for `raysearch resume`. A study that a
    signal stopped exits with 128 + the signal's number (143 for SIGTERM), as a process killed by it would."""

    def __init__(self, message: str, *, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class NoTrialFinished(RaysearchError):
    """Every trial of a study failed: the study folder keeps their errors, nothing was evaluated or exported."""

    exit_code = 1
