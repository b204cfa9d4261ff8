"""Search progress: the best score so far against the compute spent (trial-epochs), for the selected study
and any others overlaid, so a user sees which searcher and scheduler got there first. Epochs of trials that
the scheduler stopped are marked."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from study_data import Study, current_study, load_study, studies
from widgets import no_data, study_header

from raysearch.core.columns import PRUNED
from raysearch.core.layout import EPOCHS_FILE, TRIALS_FILE
from raysearch.dashboard.logic import search_progress
from raysearch.errors import RaysearchError


def progress_of(study: Study) -> pd.DataFrame | None:
    """The study's best-so-far curve, or None when it has no trials or epochs yet."""
    return _progress(str(study.directory), study.versions(TRIALS_FILE, EPOCHS_FILE), study.metric, study.mode,
                     study)


@st.cache_data(show_spinner=False, max_entries=1024)
def _progress(directory: str, versions: tuple, metric: str, mode: str, _study: Study) -> pd.DataFrame | None:
    """`progress_of`, computed once per version of the study's trials and epochs tables (`_study` is not hashed:
    the folder, the versions, the metric and the mode are the key)."""
    if _study.epochs is None or _study.trials.empty or metric not in _study.epochs:
        return None
    return search_progress(_study.trials, _study.epochs, metric, mode)


def label_of(study: Study) -> str:
    """A study's name with its searcher and scheduler (as study.yaml records them)."""
    searcher = study.spec.get("searcher", {}).get("name", "tpe")
    scheduler = study.spec.get("scheduler", {}).get("name", "asha")
    return f"{study.name} ({searcher} + {scheduler})"


def main() -> None:
    study = current_study()
    study_header(study, "Search progress")
    found, _ = studies(study.root)
    others = [s.name for s in found if s.name != study.name]
    overlaid = st.multiselect("Overlay other studies", others, key="progress-overlay")
    shown = [study]
    for name in overlaid:
        try:
            shown.append(load_study(study.root, found[[s.name for s in found].index(name)]))
        except RaysearchError as error:
            st.error(str(error))
    figure = go.Figure()
    for each in shown:
        curve = progress_of(each)
        if curve is None:
            continue
        name = label_of(each)
        figure.add_trace(go.Scatter(x=curve["trial_epochs"], y=curve["best_so_far"], mode="lines", name=name,
                                    line={"shape": "hv"}))
        stopped = curve[(curve["status"] == PRUNED) & ~curve["trial_id"].duplicated(keep="last")]
        figure.add_trace(go.Scatter(
            x=stopped["trial_epochs"], y=stopped["value"], mode="markers", name=f"{name}: pruned trials",
            text=stopped["trial_id"], hovertemplate="%{text} stopped by the scheduler<extra></extra>",
            marker={"symbol": "x", "size": 9}))
    if not figure.data:
        no_data("No epochs.parquet in this study yet.")
        return
    figure.update_layout(xaxis_title="compute spent (trial-epochs)", yaxis_title=f"best {study.metric} so far",
                         height=480, margin={"t": 20}, legend_title_text="")
    st.plotly_chart(figure, key="progress")
    st.caption("Each line steps up when a trial beats the best so far; trials are taken in the order the searcher "
               "sampled them. A ✕ marks the last epoch (and score) of a trial that the scheduler stopped.")


main()
