"""Which hyperparameters mattered: Optuna's importance evaluators, and parameters against the score."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st
from study_data import Study, current_study
from widgets import label, no_data, study_header

from raysearch.dashboard.logic import (
    IMPORTANCE_EVALUATORS,
    importance_notice,
    importance_range,
    parallel_dimensions,
    param_importances,
    study_distributions,
    top_parameters,
    unranked_parameters,
)

AXES = 6  # parameters drawn in parallel coordinates unless the user adds more


@st.cache_data(show_spinner="Computing importances…")
def importances(trials: pd.DataFrame, spec: dict, score: str, mode: str, evaluator: str,
                include_pruned: bool) -> dict[str, float]:
    """Optuna's importances (cached per study and choice)."""
    return param_importances(trials, study_distributions(spec), score, mode, evaluator=evaluator,
                             include_pruned=include_pruned)


def importance_chart(study: Study) -> dict[str, float]:
    """Optuna's importances as bars on an axis scaled to them, the parameters left out explained; returns them."""
    left, right = st.columns([1, 1])
    evaluator = left.radio("Evaluator", IMPORTANCE_EVALUATORS, horizontal=True, key="evaluator",
                           help="fANOVA (Hutter et al.) or a random forest's mean decrease in impurity, from Optuna")
    include_pruned = right.toggle("Count trials ASHA stopped (with their best score)", value=True, key="pruned")
    possible, notice = importance_notice(study.trials, study.score_column, include_pruned=include_pruned)
    if not possible:
        no_data(notice)
        return {}
    if notice:
        st.warning(notice, icon=":material/warning:")
    found = importances(study.trials, study.spec, study.score_column, study.mode, evaluator, include_pruned)
    frame = pd.DataFrame({"parameter": list(found), "importance": list(found.values())}).sort_values("importance")
    figure = px.bar(frame, x="importance", y="parameter", orientation="h", text_auto=".2f")
    figure.update_layout(height=max(240, 32 * len(frame)), margin={"t": 10}, yaxis_title="",
                         xaxis_range=importance_range(found))
    st.plotly_chart(figure, key="importance")
    unranked = unranked_parameters(study.spec, found)
    if unranked:
        st.caption("Not in this chart: " + "; ".join(f"**{name}**: {why}" for name, why in unranked.items()) + ".")
    return found


def parallel_chart(study: Study, found: dict[str, float]) -> None:
    trials = study.trials.dropna(subset=[study.score_column]) if study.score_column in study.trials else study.trials
    varying = [c for c in trials.columns if c.startswith("param.") and trials[c].nunique(dropna=True) > 1]
    if trials.empty or not varying:
        no_data("No varying hyperparameters among the scored trials.")
        return
    if study.score_column in trials and trials[study.score_column].nunique() == 1:
        no_data(f"All {len(trials)} scored trials have the same {study.metric}: the parameters cannot be told apart "
                "by it.")
        return
    params = st.multiselect(f"Axes (the {AXES} most important first; add more)", varying,
                            default=top_parameters(found, varying, AXES), format_func=label,
                            key=f"parallel-axes:{study.name}")
    if not params:
        no_data("Pick at least one parameter.")
        return
    score = trials[study.score_column].astype(float)
    dimensions = [*parallel_dimensions(trials, params), {"label": label(study.score_column), "values": score.tolist()}]
    figure = go.Figure(go.Parcoords(line={"color": score, "colorscale": "Viridis", "showscale": True,
                                          "colorbar": {"title": {"text": label(study.score_column)}}},
                                    dimensions=dimensions))
    figure.update_layout(height=460, margin={"l": 110, "r": 60, "t": 60})
    st.plotly_chart(figure, key="parallel")


def main() -> None:
    study = current_study()
    study_header(study, "Which hyperparameters mattered")
    st.subheader(f"Importance for {study.metric}")
    found = importance_chart(study)
    st.subheader("Parameters against the score")
    parallel_chart(study, found)


main()
