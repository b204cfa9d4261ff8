"""raysearch dashboard: `streamlit run dashboard/app.py -- --results DIR` (or `raysearch dashboard DIR`).

Reads only the results folder it is given (Parquet tables, study.yaml, prediction PNGs), so it works on a
folder copied from a cluster to a laptop. This page picks the study; the pages in views/ show it.
"""

from __future__ import annotations

import os
import urllib.request

import streamlit as st
from study_data import load_study, ray_dashboard_url, results_root, studies

from raysearch.dashboard.logic import ray_dashboard_candidates
from raysearch.errors import RaysearchError

PAGES = [
    st.Page("views/leaderboard.py", title="Leaderboard", icon=":material/leaderboard:", default=True),
    st.Page("views/curves.py", title="Learning curves", icon=":material/show_chart:"),
    st.Page("views/progress.py", title="Search progress", icon=":material/trending_up:"),
    st.Page("views/importance.py", title="Hyperparameters", icon=":material/tune:"),
    st.Page("views/tradeoffs.py", title="Size and latency", icon=":material/speed:"),
    st.Page("views/models.py", title="Models on test images", icon=":material/radiology:"),
    st.Page("views/audit.py", title="Data audit", icon=":material/fact_check:"),
]


@st.cache_data(ttl=30, show_spinner=False)
def live_ray_dashboard(candidates: tuple[str, ...]) -> str | None:
    """The first address that answers like a Ray dashboard, checked with a short timeout."""
    for url in candidates:
        try:
            with urllib.request.urlopen(f"{url}/api/version", timeout=0.3) as response:  # noqa: S310 (http only)
                if response.status == 200:
                    return url
        except (OSError, ValueError):
            continue
    return None


def sidebar_ray() -> None:
    """The Ray dashboard's address when a cluster is live, else where one would be. Only addresses the user
    gave are probed: a results folder may come from someone else, and its study.yaml is never an address."""
    candidates = tuple(ray_dashboard_candidates(os.environ, ray_dashboard_url()))
    live = live_ray_dashboard(candidates)
    if live:
        st.sidebar.success(f"Ray cluster live: [Ray dashboard]({live})", icon=":material/hub:")
    else:
        st.sidebar.caption("No live Ray cluster found (looked at " + ", ".join(candidates) + ").")


def main() -> None:
    st.set_page_config(page_title="raysearch", page_icon=":material/radiology:", layout="wide")
    root = results_root()
    st.sidebar.markdown(f"**Results** `{root}`")
    found, refused = studies(root) if root.is_dir() else ([], [])
    for message in refused:
        st.sidebar.error(message, icon=":material/block:")
    if not found:
        st.title("raysearch")
        st.error(f"No study in {root}: run `raysearch run TASK --results {root}` first.")
        return
    names = [s.name for s in found]
    requested = st.query_params.get("study")
    chosen = st.sidebar.selectbox("Study", names, index=names.index(requested) if requested in names else 0,
                                  key="study")
    st.query_params["study"] = chosen  # a link to this page opens this study
    try:
        st.session_state["study_data"] = load_study(root, found[names.index(chosen)])
    except RaysearchError as error:
        st.error(str(error))
        return
    sidebar_ray()
    st.navigation(PAGES).run()


main()
