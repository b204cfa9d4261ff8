"""The study's results as Parquet tables: one row per trial (`trials.parquet`), one per epoch (`epochs.parquet`).

Every file is written to a temporary sibling and renamed into place, so a crash never leaves a
half-written file for the dashboard or a resume to trip over.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from raysearch.core.columns import BOOKKEEPING, COMPLETED, EARLY_STOPPED, FAILED, PRUNED
from raysearch.search.space import SearchSpace


@dataclass
class TrialRecord:
    """Everything known about one finished (or failed, or stopped) trial."""

    trial_id: str
    config: Mapping[str, Any]
    epochs: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    wall_time_s: float = 0.0
    checkpoint: str | None = None
    number: int | None = None   # the order in which the searcher sampled it (its Optuna trial number)


ERROR_CHARACTERS = 500  # of the line kept of a failed trial's error


def trial_status(record: TrialRecord, max_epochs: int) -> str:
    """COMPLETED (all epochs), EARLY_STOPPED (patience), PRUNED (stopped by ASHA) or FAILED."""
    if record.error or not record.epochs:
        return FAILED
    return epoch_status(record.epochs[-1], max_epochs)


def epoch_status(last: Mapping[str, Any], max_epochs: int) -> str:
    """How a trial whose last epoch record (or Tune result) is `last` ended: COMPLETED, EARLY_STOPPED or PRUNED."""
    if last.get("stopped_early"):
        return EARLY_STOPPED
    return COMPLETED if last["epoch"] >= max_epochs else PRUNED


def error_summary(text: str) -> str | None:
    """The line of an error's text (a traceback, Ray's error file) that says what went wrong: its last one (the
    exception and its message), at most ERROR_CHARACTERS long; None for an empty text."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:ERROR_CHARACTERS] if lines else None


def best_epoch(epochs: Sequence[dict[str, Any]], score: str, mode: str) -> dict[str, Any] | None:
    """The epoch with the best `score` (max or min by `mode`), None when no epoch has a number for it."""
    scored = [e for e in epochs if isinstance(e.get(score), (int, float)) and not math.isnan(e[score])]
    if not scored:
        return None
    return (max if mode == "max" else min)(scored, key=lambda e: e[score])


def _metric_names(records: Iterable[TrialRecord]) -> list[str]:
    names: dict[str, None] = {}
    for record in records:
        for epoch in record.epochs:
            names.update((k, None) for k, v in epoch.items() if isinstance(v, (int, float)) and k not in BOOKKEEPING)
    return list(names)


def _param_type(values: list[Any]) -> pa.DataType:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pa.bool_()
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pa.int64()
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pa.float64()
    return pa.string()


def _typed_column(values: list[Any]) -> pa.Array:
    kind = _param_type(values)
    if kind == pa.string():
        values = [None if v is None else str(v) for v in values]
    if kind == pa.float64():
        values = [None if v is None else float(v) for v in values]
    return pa.array(values, type=kind)


def trials_table(
    records: Sequence[TrialRecord], space: SearchSpace, *, score: str, mode: str, max_epochs: int
) -> pa.Table:
    """One row per trial: id, sampling order (`number`), status, `param.<name>`, `metric.<name>.best` (at the
    best-scoring epoch) and `metric.<name>.last`, epochs run, best epoch, wall time, checkpoint, error."""
    metrics = _metric_names(records)
    best = [best_epoch(r.epochs, score, mode) or {} for r in records]
    columns: dict[str, pa.Array] = {
        "trial_id": pa.array([r.trial_id for r in records], pa.string()),
        "number": pa.array([r.number for r in records], pa.int64()),
        "status": pa.array([trial_status(r, max_epochs) for r in records], pa.string()),
        "epochs": pa.array([len(r.epochs) for r in records], pa.int64()),
        "best_epoch": pa.array([b.get("epoch") for b in best], pa.int64()),
        "wall_time_s": pa.array([r.wall_time_s for r in records], pa.float64()),
        "params": pa.array([r.epochs[-1].get("params") if r.epochs else None for r in records], pa.int64()),
        "latency_ms": pa.array([r.epochs[-1].get("latency_ms") if r.epochs else None for r in records], pa.float64()),
        "checkpoint": pa.array([r.checkpoint for r in records], pa.string()),
        "error": pa.array([r.error for r in records], pa.string()),
    }
    for name in space.names:
        columns[f"param.{name}"] = _typed_column([r.config.get(name) for r in records])
    for name in metrics:
        columns[f"metric.{name}.best"] = pa.array([_float(b.get(name)) for b in best], pa.float64())
        last = [_float(r.epochs[-1].get(name)) if r.epochs else None for r in records]
        columns[f"metric.{name}.last"] = pa.array(last, pa.float64())
    return pa.table(columns)


def epochs_table(records: Sequence[TrialRecord]) -> pa.Table:
    """One row per trial per epoch: every metric reported that epoch, learning rate and epoch wall time, and the
    text facts of the epoch (the `precision` it trained in)."""
    metrics = _metric_names(records)
    rows = [(r.trial_id, e) for r in records for e in r.epochs]
    columns: dict[str, pa.Array] = {
        "trial_id": pa.array([t for t, _ in rows], pa.string()),
        "epoch": pa.array([e["epoch"] for _, e in rows], pa.int64()),
    }
    for name in metrics:
        columns[name] = pa.array([_float(e.get(name)) for _, e in rows], pa.float64())
    texts = dict.fromkeys(k for _, e in rows for k, v in e.items() if isinstance(v, str))
    for name in texts:
        columns[name] = pa.array([e.get(name) if isinstance(e.get(name), str) else None for _, e in rows], pa.string())
    return pa.table(columns)


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None
