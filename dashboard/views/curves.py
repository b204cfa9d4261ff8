"""Learning curves: every epoch of the selected trials, with the epoch where ASHA (or patience) stopped them."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st
from study_data import current_study
from widgets import no_data, study_header, trial_order

from raysearch.core.columns import EARLY_STOPPED, PRUNED, is_per_class
from raysearch.dashboard.logic import curve_selection, stop_points

CURVE_SELECTIONS, LAST_SELECTION = "curve-selections", ""  # session state: study → trials drawn ("" the last)
STOP_SYMBOLS = {PRUNED: ("x", "stopped by ASHA"), EARLY_STOPPED: ("square", "stopped by patience")}


def main() -> None:
    study = current_study()
    study_header(study, "Learning curves")
    epochs = study.epochs
    if epochs is None or epochs.empty:
        no_data("No epochs.parquet in this study yet.")
        return
    ranked = trial_order(study)
    metrics = [c for c in epochs.columns if c not in ("trial_id", "epoch") and not is_per_class(c)
               and pd.api.types.is_numeric_dtype(epochs[c])]  # not the text columns (precision)
    left, right = st.columns([3, 1])
    selections = st.session_state.setdefault(CURVE_SELECTIONS, {})
    previous = selections.get(study.name, selections.get(LAST_SELECTION))
    chosen = left.multiselect("Trials (best first)", ranked, default=curve_selection(previous, ranked),
                              key=f"curve-trials:{study.name}")
    selections[study.name] = selections[LAST_SELECTION] = chosen
    metric = right.selectbox("Metric", metrics, index=metrics.index(study.metric) if study.metric in metrics else 0,
                             key="curve-metric")
    shown = epochs[epochs["trial_id"].isin(chosen)].sort_values(["trial_id", "epoch"])
    if shown.empty:
        no_data("Pick at least one trial.")
        return
    figure = px.line(shown, x="epoch", y=metric, color="trial_id", markers=True,
                     category_orders={"trial_id": chosen}, labels={"trial_id": "trial"})
    stops = stop_points(study.trials, shown, metric)
    for status, (symbol, name) in STOP_SYMBOLS.items():
        points = stops[stops["status"] == status]
        if not points.empty:
            figure.add_trace(go.Scatter(x=points["epoch"], y=points[metric], mode="markers", name=name,
                                        text=points["trial_id"], hovertemplate="%{text} " + name + "<extra></extra>",
                                        marker={"symbol": symbol, "size": 14, "color": "black",
                                                "line": {"width": 2}}))
    figure.update_layout(xaxis={"dtick": 1}, legend_title_text="", height=480, margin={"t": 20})
    st.plotly_chart(figure, key="curves")
    st.caption("A black ✕ marks the last epoch of a trial that ASHA stopped; a black ■ one that stopped "
               "itself (no improvement for `patience` epochs).")


main()
