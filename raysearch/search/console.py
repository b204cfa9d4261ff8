"""What a search shows on the driver's console, in its three modes (`QUIET`, `DEFAULT`, `VERBOSE`: `raysearch run
--quiet`, plain, `--verbose`).

VERBOSE is Ray Tune's own console: its trial status tables, a config box when a trial starts and a result box after
every epoch of every trial, the workers' output and every Ray, Tune and Optuna log line. Its result boxes hold the
score, the losses and the task's headline metrics; per-class metrics and confusion-matrix cells stay in the files
(epochs.parquet, history.json): Ray Tune's reporter prints, in each box, the result keys in the trainable's
`_progress_metrics` (the attribute Ray's own Trainers set), and `CONSOLE_METRICS` is that collection for
raysearch's trials.

DEFAULT replaces Tune's console with raysearch's own lines, one per trial result and one when a trial ends
(raysearch.search.progress); QUIET shows neither. Both leave out what Ray, Tune and Optuna print on their own
(`quiet_libraries`, `connection_levels`, and `connected` in raysearch.search.connection)."""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from raysearch.core.columns import BEST_SO_FAR, is_per_class

QUIET, DEFAULT, VERBOSE = 0, 1, 2
# What keeps Ray Tune's own console quiet below VERBOSE (Tune reads both as a search starts): its previous output
# engine, which at verbosity 0 prints nothing (the current one prints its experiment box, the results folder and a
# TensorBoard line pointing into Ray's temporary folder even then), and no "Experiment state snapshotting has been
# triggered multiple times" warning (every checkpoint a trial reports forces a snapshot by design: raysearch keeps
# one Tune checkpoint per trial, and resumes from the latest snapshot).
QUIET_TUNE_ENVIRONMENT = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}
# The notice a new local Ray instance logs that it has token authentication on (Ray 2.60 turns it on by default).
TOKEN_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"

SHOWN_ALWAYS = ("epoch", "time_total_s", BEST_SO_FAR)
METRIC_PREFIXES = ("val_", "train_")


class ConsoleMetrics(Collection[str]):
    """The result keys a trial's console box shows: `SHOWN_ALWAYS`, and every train/validation metric that
    is not one class's (or one confusion-matrix cell)."""

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and (key in SHOWN_ALWAYS
                                         or key.startswith(METRIC_PREFIXES) and not is_per_class(key))

    def __iter__(self) -> Iterator[str]:
        return iter(SHOWN_ALWAYS)

    def __len__(self) -> int:
        return len(SHOWN_ALWAYS)

    def shown(self, result: dict[str, Any]) -> dict[str, Any]:
        """The part of a result the console shows."""
        return {key: value for key, value in result.items() if key in self}


CONSOLE_METRICS = ConsoleMetrics()


def tune_verbosity(console: int) -> int:
    """The `verbose` of Ray Tune's RunConfig for a console mode: its full output in VERBOSE, nothing otherwise."""
    return 2 if console == VERBOSE else 0


@contextmanager
def scoped_environment(values: Mapping[str, str]) -> Iterator[None]:
    """The environment variables `values` set inside the block, as they were afterwards."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def logger_levels(levels: Mapping[str, int]) -> Iterator[None]:
    """The loggers named in `levels` at those levels inside the block, at their own levels afterwards."""
    loggers = {logging.getLogger(name): level for name, level in levels.items()}
    previous = {logger: logger.level for logger in loggers}
    for logger, level in loggers.items():
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, level in previous.items():
            logger.setLevel(level)


def connection_levels(console: int) -> dict[str, int]:
    """The Ray loggers quieter while the driver is connected: all of Ray's below errors in QUIET, the token
    authentication notice in DEFAULT, none in VERBOSE."""
    return {QUIET: {"ray": logging.ERROR}, DEFAULT: {TOKEN_NOTICE_LOGGER: logging.ERROR}}.get(console, {})


@contextmanager
def quiet_libraries(console: int) -> Iterator[None]:
    """Around building and running a Ray Tune search: below VERBOSE, Tune's own console off (see
    QUIET_TUNE_ENVIRONMENT) and Optuna's log lines below warnings ("A new study created in RDB") not shown."""
    if console == VERBOSE:
        yield
        return
    import optuna

    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with scoped_environment(QUIET_TUNE_ENVIRONMENT):
            yield
    finally:
        optuna.logging.set_verbosity(previous)


def plain_value(value: Any) -> Any:
    """A numpy scalar as the Python value it holds (any other value as it is)."""
    return value.item() if hasattr(value, "item") else value


def number_text(value: Any) -> str:
    """A value as the console prints it: whole numbers without a decimal point, other floats to 4 significant
    digits (numpy scalars as the Python values they hold)."""
    value = plain_value(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.4g}"
    return str(value)
