"""Accuracy against model size and latency, with the Pareto front of the trade-off marked."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st
from study_data import current_study
from widgets import label, no_data, study_header

from raysearch.core.columns import lower_is_better
from raysearch.dashboard.logic import metric_columns, model_names, pareto_front

COSTS = {"params": "parameters", "latency_ms": "latency (ms per image)"}


def tradeoff_chart(frame: pd.DataFrame, objective: str, mode: str, cost: str) -> None:
    """Objective against one cost; the trials no other beats on both are the front, joined by a line."""
    data = frame.dropna(subset=[objective, cost]).assign(
        front=lambda f: pareto_front(f, objective, mode, [cost]).map({True: "Pareto front", False: "dominated"}))
    if data.empty:
        no_data(f"No trial has both {label(objective)} and {cost}.")
        return
    figure = px.scatter(data, x=cost, y=objective, color="front", hover_name="trial_id", hover_data=["model"],
                        log_x=cost == "params",
                        color_discrete_map={"Pareto front": "#d62728", "dominated": "#9aa5b1"},
                        category_orders={"front": ["Pareto front", "dominated"]},
                        labels={cost: COSTS[cost], objective: label(objective), "front": ""})
    front = data[data["front"] == "Pareto front"].sort_values(cost)
    figure.add_scatter(x=front[cost], y=front[objective], mode="lines", line={"color": "#d62728", "dash": "dot"},
                       showlegend=False, hoverinfo="skip")
    figure.update_traces(marker={"size": 11})
    figure.update_layout(height=420, margin={"t": 10},
                         legend={"orientation": "h", "yanchor": "top", "y": -0.22, "xanchor": "left", "x": 0})
    st.plotly_chart(figure, key=f"tradeoff-{cost}")


def main() -> None:
    study = current_study()
    study_header(study, "Accuracy against size and latency")
    trials = study.trials.assign(model=model_names(study.trials, study.spec))
    objectives = [c for c in metric_columns(trials) if c not in COSTS and c not in ("wall_time_s", "epochs")]
    if not objectives:
        no_data("No scored trials yet.")
        return
    preferred = study.score_column if study.score_column in objectives else objectives[0]
    objective = st.selectbox("Quality", objectives, index=objectives.index(preferred), format_func=label,
                             key="objective")
    mode = "min" if lower_is_better(objective) else "max"
    columns = st.columns(2)
    for column, cost in zip(columns, COSTS, strict=True):
        with column:
            st.subheader(f"{label(objective)} vs {COSTS[cost]}")
            tradeoff_chart(trials, objective, mode, cost)
    both = trials.dropna(subset=[objective, *COSTS])
    best = both[pareto_front(both, objective, mode, list(COSTS))]
    st.subheader("Pareto-optimal trials (quality, size and latency together)")
    st.dataframe(best[["trial_id", "model", "status", objective, *COSTS]], hide_index=True,
                 column_config={objective: st.column_config.NumberColumn(label(objective), format="%.4g"),
                                "latency_ms": st.column_config.NumberColumn("latency (ms)", format="%.3f")})


main()
