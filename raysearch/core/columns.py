"""The columns of trials.parquet and what they mean: trial statuses, metric names, which way is better, and the
one rule that ranks trials.

Only the standard library is imported at module level (pandas and numpy when ranking), so the dashboard and
`import raysearch` stay light.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


COMPLETED, EARLY_STOPPED, PRUNED, FAILED = STATUSES = ("COMPLETED", "EARLY_STOPPED", "PRUNED", "FAILED")
FINISHED = (COMPLETED, EARLY_STOPPED)  # trials that ran to their end (all epochs, or patience)
MODES = ("max", "min")  # a study's `mode`: higher or lower of its metric is better
LOWER_IS_BETTER = re.compile(r"(loss|apd|mse|mae|error|latency|params|time|epochs|\.std$"
                             r"|(^|_)(ece|hd95|assd)(_mm)?(\.|$))")
PER_CLASS = re.compile(r"_\d+(_\d+)?$")
# An epoch record (epochs.parquet's row, Tune's result): the training loop's own keys beside its `val_*` metrics,
# and those of them that describe the trial rather than measure the epoch (no `metric.*` column in trials.parquet).
# `trial_best` is the study's metric at the trial's best epoch so far, beside the epoch's own value, so that Ray's
# table, ResultGrid and TensorBoard can rank trials as raysearch does.
BEST_SO_FAR = "trial_best"
EPOCH_KEYS = ("epoch", "train_loss", "lr", "epoch_time_s", "params", "latency_ms", "stopped_early", "cache_hit",
              "precision", BEST_SO_FAR)
BOOKKEEPING = frozenset({"epoch", "trial_id", "stopped_early", "params", "latency_ms", BEST_SO_FAR})
VALIDATION_PREFIX = "val_"
TEST_PREFIXES = ("test.", "test_clean.")  # the whole test split, and its subset without a source in train
PAIRED_PREFIX = "paired."  # a runner-up against the best trial on the same test resamples
CI_SUFFIXES = (".ci_low", ".ci_high")  # the 95 % bootstrap interval beside a test metric


def _unprefixed(column: str) -> str:
    """A column's name without its `metric.`, `test.` or `test_clean.` prefix."""
    name = column.removeprefix("metric.")
    for prefix in TEST_PREFIXES:
        name = name.removeprefix(prefix)
    return name


def lower_is_better(column: str) -> bool:
    """Whether smaller values of a metric column are better (losses, errors, size, time, spread)."""
    return bool(LOWER_IS_BETTER.search(_unprefixed(column)))


def metric_name(column: str) -> str:
    """The metric a column holds: `metric.val_recall_2.best` → `val_recall_2`, `test.iou.mean` → `iou`,
    `test.auroc.ci_low` → `auroc`."""
    name = _unprefixed(column)
    for suffix in CI_SUFFIXES:
        name = name.removesuffix(suffix)
    for suffix in (".best", ".last", ".mean", ".std"):
        name = name.removesuffix(suffix)
    return name


def is_per_class(column: str) -> bool:
    """Whether a column holds one class's metric or one confusion-matrix cell (`precision_3`, `confusion_1_2`)."""
    return bool(PER_CLASS.search(metric_name(column)))


def is_count(column: str) -> bool:
    """Whether a test column counts something (`test.repeats`, `test_clean.images`) rather than measures."""
    return column == "test.repeats" or column.endswith(".images")


def headline_columns(columns: Iterable[str], prefix: str) -> list[str]:
    """The columns starting with `prefix` that summarise a model (no per-class ones, no counts), the score first."""
    chosen = [c for c in columns if c.startswith(prefix) and not is_per_class(c) and not is_count(c)
              and not c.endswith(CI_SUFFIXES)]
    return sorted(chosen, key=lambda c: metric_name(c).removeprefix("val_") != "score")


def score_column(metric: str) -> str:
    """The trials.parquet column that ranks trials by `metric` (its value at the trial's best epoch)."""
    return f"metric.{metric}.best"


def rank_trials(frame: pd.DataFrame, column: str, mode: str) -> pd.DataFrame:
    """Trials sorted best first by `column` ("max" or "min"), missing values last, with a 1-based `rank`.

    The one ranking rule: the summary, `Study.trials`, evaluate, export and the dashboard all rank with it."""
    import numpy as np

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    ranked = frame.sort_values(column, ascending=mode == "min", na_position="last", kind="stable") \
        if column in frame else frame  # no trial reported the metric (every one failed): nothing to sort by
    return ranked.assign(rank=np.arange(1, len(ranked) + 1)).reset_index(drop=True)


def no_trial_finished(frame: pd.DataFrame) -> str:
    """The one line said of a study none of whose trials (trials.parquet's rows) finished: how many failed and
    the commonest reason among their errors."""
    failed = frame[frame["status"] == FAILED] if "status" in frame else frame.iloc[:0]
    errors = failed["error"].dropna() if "error" in failed else failed.iloc[:0, :0]
    said = f"no trial finished ({len(failed)} of {len(frame)} failed"
    if len(errors):
        counts = errors.value_counts(sort=True)
        said += f"; commonest reason, {counts.iloc[0]} of them: {counts.index[0]}"
    return said + ")"


def is_epoch_metric(name: str) -> bool:
    """Whether a result key belongs to the epoch record (the loop's own keys and `val_*`), not to Ray's bookkeeping."""
    return name in EPOCH_KEYS or name.startswith(VALIDATION_PREFIX)
