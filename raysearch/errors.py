"""User-facing errors: one line, naming the file, line or field at fault."""

from __future__ import annotations


class RaysearchError(Exception):
    """An error caused by user input; the CLI prints it on one line and exits with `exit_code`."""

    exit_code = 2


class ConfigError(RaysearchError):
    """A search-space or study configuration is invalid."""


class DataError(RaysearchError):
    """A dataset file is missing, unreadable or malformed."""


class StudyInterrupted(RaysearchError):
    """The search stopped before every trial finished; its state is saved for `raysearch resume`."""


class NoTrialFinished(RaysearchError):
    """Every trial of a study failed: the study folder keeps their errors, nothing was evaluated or exported."""

    exit_code = 1
