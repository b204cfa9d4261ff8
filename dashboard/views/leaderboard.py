"""Leaderboard: trials ranked by any metric, filtered by task, status and hyperparameter values."""

from __future__ import annotations

import pandas as pd
import streamlit as st
from study_data import Study, current_study, load_study, studies
from widgets import label, numeric_format, study_header

from raysearch.dashboard_logic import (
    STATUSES,
    filter_trials,
    headline_columns,
    lower_is_better,
    metric_columns,
)
from raysearch.layout import rank_trials


def trials_of(study: Study, everything: bool) -> pd.DataFrame:
    """The study's trials, or every study's in the results folder, with `study` and `task` columns."""
    chosen = [load_study(study.root, s) for s in studies(study.root)[0]] if everything else [study]
    frames = [s.trials.assign(study=s.name, task=s.task) for s in chosen if not s.trials.empty]
    return pd.concat(frames, ignore_index=True) if frames else study.trials


def parameter_filters(frame: pd.DataFrame) -> tuple[dict[str, list], dict[str, tuple[float, float]]]:
    """Widgets for every varying parameter: multiselect for categories, range slider for numbers."""
    choices: dict[str, list] = {}
    ranges: dict[str, tuple[float, float]] = {}
    columns = [c for c in frame.columns if c.startswith("param.") and frame[c].nunique(dropna=True) > 1]
    if not columns:
        return choices, ranges
    with st.expander("Filter by hyperparameter values"):
        grid = st.columns(3)
        for i, column in enumerate(columns):
            values = frame[column].dropna()
            with grid[i % 3]:
                if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
                    low, high = float(values.min()), float(values.max())
                    ranges[column] = st.slider(label(column), low, high, (low, high), key=f"range-{column}")
                else:
                    options = sorted(values.unique().tolist(), key=str)
                    choices[column] = st.multiselect(label(column), options, default=options, key=f"pick-{column}")
    return choices, ranges


def headline(study: Study) -> None:
    """Cards: trials by status, the best trial by the study's metric, and its test score if evaluated."""
    trials = study.trials
    counts = trials["status"].value_counts() if "status" in trials else pd.Series(dtype=int)
    cards = st.columns(4)
    cards[0].metric("Trials", len(trials), border=True,
                    help=" · ".join(f"{counts.get(s, 0)} {s.lower().replace('_', ' ')}" for s in STATUSES))
    cards[1].metric("Completed · stopped · failed",
                    f"{counts.get('COMPLETED', 0)} / {counts.get('PRUNED', 0) + counts.get('EARLY_STOPPED', 0)} / "
                    f"{counts.get('FAILED', 0)}", border=True)
    if study.score_column not in trials or trials[study.score_column].isna().all():
        return
    best = rank_trials(trials, study.score_column, study.mode).iloc[0]
    cards[2].metric(f"Best {study.metric} · trial {best['trial_id']}", f"{best[study.score_column]:.4g}", border=True)
    test = f"test.{study.metric.removeprefix('val_')}"
    if pd.notna(best.get(test)):
        cards[3].metric(f"Its {test}", f"{best[test]:.4g}", border=True)
    elif pd.notna(best.get(f"{test}.mean")):
        cards[3].metric(f"Its {test} ({int(best['test.repeats'])} seeds)",
                        f"{best[f'{test}.mean']:.4g} ± {best[f'{test}.std']:.2g}", border=True)


def main() -> None:
    study = current_study()
    study_header(study, "Leaderboard")
    headline(study)
    everything = st.toggle("Compare every study in this results folder", key="all-studies")
    frame = trials_of(study, everything)
    if frame.empty:
        st.warning("This study has no trials yet.")
        return
    metrics = metric_columns(frame)
    left, middle, right = st.columns([2, 1, 2])
    default = study.score_column if study.score_column in metrics else metrics[0]
    column = left.selectbox("Rank by", metrics, index=metrics.index(default), format_func=label, key="rank-by")
    best_first = study.mode if column == study.score_column else ("min" if lower_is_better(column) else "max")
    mode = middle.radio("Best is", ["max", "min"], index=["max", "min"].index(best_first), horizontal=True,
                        key=f"mode-{column}")
    statuses = right.multiselect("Status", STATUSES, default=[s for s in STATUSES if s in set(frame["status"])],
                                 key="status")
    tasks = None
    if everything:
        task_names = sorted(frame["task"].unique())
        tasks = st.multiselect("Task", task_names, default=task_names, key="tasks")
    choices, ranges = parameter_filters(frame)
    shown = rank_trials(filter_trials(frame, statuses=statuses, tasks=tasks, choices=choices, ranges=ranges),
                        column, mode)
    tests = [c for c in headline_columns(shown.columns, "test.") if c != column][:6]
    vals = [c for c in headline_columns(shown.columns, "metric.val_") if c.endswith(".best") and c != column][:6]
    params = [c for c in shown.columns if c.startswith("param.") and shown[c].nunique(dropna=True) > 1]
    order = ["rank", *(["study", "task"] if everything else []), "trial_id", "status", column, *tests, *vals,
             "epochs", "params", "latency_ms", *params]
    st.subheader(f"{len(shown)} of {len(frame)} trials, ranked by {label(column)}")
    st.dataframe(shown[[c for c in dict.fromkeys(order) if c in shown]], hide_index=True,
                 column_config={**{c: st.column_config.Column(label(c)) for c in params},
                                **numeric_format(shown[[c for c in order if c in shown]]),
                                "rank": st.column_config.NumberColumn("#", width="small")})
    failed = frame[frame["status"] == "FAILED"]
    if not failed.empty and "error" in failed:
        with st.expander(f"{len(failed)} failed trials"):
            st.dataframe(failed[["trial_id", "error"]], hide_index=True)


main()
