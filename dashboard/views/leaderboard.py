"""Leaderboard: trials ranked by any metric, filtered by task, status and hyperparameter values."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
import streamlit as st
from study_data import Study, current_study, every_study_trials
from widgets import label, numeric_format, study_header

from raysearch.core.columns import (
    COMPLETED,
    EARLY_STOPPED,
    FAILED,
    MODES,
    PRUNED,
    STATUSES,
    headline_columns,
    lower_is_better,
    rank_trials,
)
from raysearch.dashboard.logic import (
    distinct_labels,
    filter_scope,
    filter_trials,
    hidden_notice,
    log_grid,
    log_parameters,
    metric_columns,
    paired_comparisons,
    study_distributions,
    with_intervals,
)

FILTERS = "leaderboard-filters"  # session state: filter scope → widget key → value


def trials_of(study: Study, everything: bool) -> pd.DataFrame:
    """The study's trials, or every study's in the results folder, with `study` and `task` columns."""
    frame = every_study_trials(study.root) if everything else study.trials.assign(study=study.name, task=study.task)
    return study.trials if frame.empty else frame


def remembered(scope: str) -> dict[str, Any]:
    """The filter values chosen in one scope (a study, or all studies): kept in the session when the page
    shows another study, since Streamlit forgets the state of widgets it did not draw."""
    return st.session_state.setdefault(FILTERS, {}).setdefault(scope, {})


def reset_filters(scope: str) -> None:
    """Forget every filter of one scope, so that its next run shows every trial."""
    st.session_state.get(FILTERS, {}).pop(scope, None)
    for key in [k for k in st.session_state if str(k).startswith(f"{scope}:")]:
        del st.session_state[key]


def kept_widget(scope: str, name: str, default: Any, draw: Callable[[str, Any], Any]) -> Any:
    """Draw a filter widget keyed by scope, starting from the value this scope kept; remember its new value."""
    key, store = f"{scope}:{name}", remembered(scope)
    value = draw(key, store.get(key, default))
    store[key] = value
    return value


def _range_slider(scope: str, column: str, values: pd.Series, log: bool) -> tuple[float, float]:
    """A range slider over a numeric parameter; log-spaced stops for a parameter sampled on a log scale."""
    low, high = float(values.min()), float(values.max())
    if log and 0 < low < high:
        grid = log_grid(low, high)
        names = dict(zip(grid, distinct_labels(grid), strict=True))
        return kept_widget(scope, f"range:{column}", (grid[0], grid[-1]), lambda key, value: st.select_slider(
            f"{label(column)} (log scale)", grid, value=value if set(value) <= set(grid) else (grid[0], grid[-1]),
            format_func=names.__getitem__, key=key))
    return kept_widget(scope, f"range:{column}", (low, high), lambda key, value: st.slider(
        label(column), low, high, (max(low, min(value)), min(high, max(value))), key=key))


def parameter_filters(frame: pd.DataFrame, scope: str, log: set[str], expanded: bool
                      ) -> tuple[dict[str, list], dict[str, tuple[float, float]]]:
    """Widgets for every varying parameter: multiselect for categories, range slider for numbers (log-spaced
    for log-scale parameters)."""
    choices: dict[str, list] = {}
    ranges: dict[str, tuple[float, float]] = {}
    columns = [c for c in frame.columns if c.startswith("param.") and frame[c].nunique(dropna=True) > 1]
    if not columns:
        return choices, ranges
    with st.expander("Filter by hyperparameter values", expanded=expanded):
        grid = st.columns(3)
        for i, column in enumerate(columns):
            values = frame[column].dropna()
            with grid[i % 3]:
                if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
                    ranges[column] = _range_slider(scope, column, values, column.removeprefix("param.") in log)
                else:
                    options = sorted(values.unique().tolist(), key=str)
                    choices[column] = kept_widget(scope, f"pick:{column}", options, lambda key, value, o=options,
                                                  c=column: st.multiselect(label(c), o,
                                                                           default=[v for v in value if v in o],
                                                                           key=key))
    return choices, ranges


def _parameter_values(scope: str) -> dict[str, dict]:
    """The parameter filters this scope kept (to open their panel when they hide a trial)."""
    kept = remembered(scope)
    found: dict[str, dict] = {"choices": {}, "ranges": {}}
    for kind, name in (("pick", "choices"), ("range", "ranges")):
        prefix = f"{scope}:{kind}:"
        found[name] = {k.removeprefix(prefix): v for k, v in kept.items() if k.startswith(prefix)}
    return found


def headline(study: Study) -> None:
    """Cards: trials by status, the best trial by the study's metric, and its test score if evaluated."""
    trials = study.trials
    counts = trials["status"].value_counts() if "status" in trials else pd.Series(dtype=int)
    cards = st.columns(4)
    cards[0].metric("Trials", len(trials), border=True,
                    help=" · ".join(f"{counts.get(s, 0)} {s.lower().replace('_', ' ')}" for s in STATUSES))
    cards[1].metric("Completed · stopped · failed",
                    f"{counts.get(COMPLETED, 0)} / {counts.get(PRUNED, 0) + counts.get(EARLY_STOPPED, 0)} / "
                    f"{counts.get(FAILED, 0)}", border=True)
    if study.score_column not in trials or trials[study.score_column].isna().all():
        return
    best = rank_trials(trials, study.score_column, study.mode).iloc[0]
    cards[2].metric(f"Best {study.metric} · trial {best['trial_id']}", f"{best[study.score_column]:.4g}", border=True)
    test = f"test.{study.metric.removeprefix('val_')}"
    clean = test.replace("test.", "test_clean.", 1)
    if pd.notna(best.get(test)) and pd.notna(best.get(clean)):
        cards[3].metric(f"Its {test} · on the clean subset", f"{best[test]:.4g} · {best[clean]:.4g}", border=True,
                        help=f"whole test split ({best.get('test.images', '?')} images) · the "
                             f"{best.get('test_clean.images', '?')} test images without a source in train")
    elif pd.notna(best.get(test)):
        cards[3].metric(f"Its {test}", f"{best[test]:.4g}", border=True)
    elif pd.notna(best.get(f"{test}.mean")):
        cards[3].metric(f"Its {test} ({int(best['test.repeats'])} seeds)",
                        f"{best[f'{test}.mean']:.4g} ± {best[f'{test}.std']:.2g}", border=True)


def comparisons(study: Study) -> None:
    """The paired bootstrap of each evaluated runner-up (and ensemble) against the best trial, and the ensembles'
    test figures with their intervals."""
    paired = paired_comparisons(study.trials, study.metric)
    if study.ensembles is not None:
        paired = pd.concat([paired, paired_comparisons(study.ensembles.rename(columns={"ensemble": "trial_id"}),
                                                       study.metric)], ignore_index=True)
    if not paired.empty:
        metric = study.metric.removeprefix("val_")
        st.subheader(f"Does the best trial really win? Paired bootstrap of test {metric}")
        st.dataframe(paired, hide_index=True, key="paired", column_config={
            "difference": st.column_config.NumberColumn(f"{metric} − best's", format="%+.4f"),
            "ci_low": st.column_config.NumberColumn("95 % interval from", format="%+.4f"),
            "ci_high": st.column_config.NumberColumn("to", format="%+.4f"),
            "share_better": st.column_config.NumberColumn("resamples where it is better", format="percent")})
        st.caption("The same bootstrap resamples of the test images for both models: an interval that contains 0 "
                   "means the test split cannot tell the two apart.")
    if study.ensembles is not None and not study.ensembles.empty:
        st.subheader("Ensembles of the best trials")
        columns = with_intervals(headline_columns(study.ensembles.columns, "test."), study.ensembles.columns)
        st.dataframe(study.ensembles[["ensemble", "members", "tta", *columns]], hide_index=True, key="ensembles")


def main() -> None:
    study = current_study()
    study_header(study, "Leaderboard", needs_scores=False)
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
    mode = middle.radio("Best is", MODES, index=MODES.index(best_first), horizontal=True,
                        key=f"mode-{column}")
    scope = filter_scope(study.name, everything)
    present = [s for s in STATUSES if s in set(frame["status"])]
    with right:
        statuses = kept_widget(scope, "status", present, lambda key, value: st.multiselect(
            "Status", STATUSES, default=value, key=key))
    tasks = None
    if everything:
        task_names = sorted(frame["task"].unique())
        tasks = kept_widget(scope, "tasks", task_names, lambda key, value: st.multiselect(
            "Task", task_names, default=[t for t in value if t in task_names], key=key))
    kept = {kind: {c: v for c, v in values.items() if c in frame} for kind, values in _parameter_values(scope).items()}
    parameters_hidden = len(filter_trials(frame, **kept)) < len(frame)
    choices, ranges = parameter_filters(frame, scope, log_parameters(study_distributions(study.spec)),
                                        expanded=parameters_hidden)
    kept_trials = filter_trials(frame, statuses=statuses, tasks=tasks, choices=choices, ranges=ranges)
    notice = hidden_notice(len(kept_trials), len(frame))
    if notice:
        warning, reset = st.columns([4, 1], vertical_alignment="center")
        warning.warning(notice, icon=":material/filter_alt:")
        reset.button("Show every trial", on_click=reset_filters, args=(scope,), key=f"reset:{scope}",
                     help="Reset the status, task and parameter filters of this view")
    tests = [c for name in ("test.", "test_clean.") for c in headline_columns(frame.columns, name) if c != column][:8]
    tests = with_intervals(tests, frame.columns)
    vals = [c for c in headline_columns(frame.columns, "metric.val_") if c.endswith(".best") and c != column][:6]
    params = [c for c in frame.columns if c.startswith("param.") and kept_trials[c].nunique(dropna=True) > 1]
    order = ["rank", *(["study", "task"] if everything else []), "trial_id", "status", column, *tests, *vals,
             "epochs", "params", "latency_ms", *params]
    shown = rank_trials(kept_trials[[c for c in dict.fromkeys(order) if c in frame]], column, mode)  # not every column
    st.subheader(f"{len(shown)} of {len(frame)} trials, ranked by {label(column)}")
    st.dataframe(shown[[c for c in dict.fromkeys(order) if c in shown]], hide_index=True,
                 column_config={**{c: st.column_config.Column(label(c)) for c in params},
                                **numeric_format(shown[[c for c in order if c in shown]]),
                                "rank": st.column_config.NumberColumn("#", width="small")})
    comparisons(study)
    failed = frame[frame["status"] == FAILED]
    if not failed.empty and "error" in failed:
        with st.expander(f"{len(failed)} failed trials"):
            st.dataframe(failed[["trial_id", "error"]], hide_index=True)


main()
