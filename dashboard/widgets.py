"""Pieces several dashboard pages show: the study header, the dataset attribution, column labels."""

from __future__ import annotations

import pandas as pd
import streamlit as st
from study_data import Study

from raysearch.core.columns import rank_trials
from raysearch.dashboard.logic import dataset_attribution


def label(column: str) -> str:
    """A column name as people read it: `metric.val_score.best` → `val_score`, `param.lr` → `lr`."""
    return column.removeprefix("metric.").removesuffix(".best").removeprefix("param.")


def study_header(study: Study, title: str, *, needs_scores: bool = True) -> None:
    """The page title, the study's task and dataset in one line, and the dataset's attribution. A study none of whose
    trials finished gets one line saying so (and why, most often), and a page that shows scores stops there."""
    st.title(title)
    data = study.spec.get("data", {})
    samples = data.get("samples", {})
    split = " / ".join(str(samples.get(s, "?")) for s in ("train", "val", "test"))
    st.caption(f"Study **{study.name}** · task **{study.task}** · {len(study.trials)} trials · "
               f"optimising {study.metric} ({study.mode}) · data {data.get('format', '?')} "
               f"({split} train/val/test images)")
    attribution(study)
    if study.nothing_finished:
        st.warning(f"Study {study.name}: {study.nothing_finished}.", icon=":material/error:")
        if needs_scores:
            st.stop()


def attribution(study: Study) -> None:
    """The dataset's license attribution, where the study ran on real (licensed) radiographs."""
    text = dataset_attribution(study.spec)
    if text:
        st.caption(text)


def no_data(message: str) -> None:
    """An explanation instead of a chart, when a study has nothing to show for a page."""
    st.info(message, icon=":material/info:")


def trial_order(study: Study) -> list[str]:
    """Trial ids, best first by the study's metric."""
    frame = rank_trials(study.trials, study.score_column, study.mode) if study.score_column in study.trials \
        else study.trials
    return frame["trial_id"].tolist() if "trial_id" in frame else []


def numeric_format(frame: pd.DataFrame) -> dict[str, st.column_config.NumberColumn]:
    """Column configs showing floats with four significant digits."""
    return {c: st.column_config.NumberColumn(label(c), format="%.4g") for c in frame.columns
            if pd.api.types.is_float_dtype(frame[c])}
