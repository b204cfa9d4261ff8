"""What Ray Tune's console shows of a trial: its result boxes hold the score, the losses and the task's
headline metrics; per-class metrics and confusion-matrix cells stay in the files (epochs.parquet, history.json).

Ray Tune's reporter prints, in each trial's result box, the result keys in the trainable's `_progress_metrics`
(the attribute Ray's own Trainers set); `CONSOLE_METRICS` is that collection for raysearch's trials."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import Any

from raysearch.core.columns import BEST_SO_FAR, is_per_class

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
