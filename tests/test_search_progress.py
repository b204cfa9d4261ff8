"""Search progress: best-so-far score against cumulative trial-epochs (raysearch.dashboard.logic) and the
dashboard page that draws it for one study or several overlaid (Streamlit's AppTest on a real study)."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from streamlit.testing.v1 import AppTest

from raysearch.dashboard.logic import compute_to_reach, search_progress

DASHBOARD = Path(__file__).resolve().parents[1] / "dashboard"
TRIALS = pd.DataFrame({"trial_id": ["b", "a", "c"], "number": [0, 1, 2],
                       "status": ["COMPLETED", "PRUNED", "COMPLETED"]})
EPOCHS = pd.DataFrame({"trial_id": ["a", "b", "b", "c", "c", "c"], "epoch": [1, 1, 2, 1, 2, 3],
                       "val_score": [0.9, 0.5, 0.6, 0.4, float("nan"), 0.7]})


def test_progress_follows_sampling_order_and_keeps_the_best() -> None:
    progress = search_progress(TRIALS, EPOCHS, "val_score", "max")
    assert progress["trial_id"].tolist() == ["b", "b", "a", "c", "c", "c"], "sampling order, not trial id"
    assert progress["trial_epochs"].tolist() == [1, 2, 3, 4, 5, 6]
    assert progress["best_so_far"].tolist() == [0.5, 0.6, 0.9, 0.9, 0.9, 0.9]
    assert progress.loc[progress["trial_id"] == "a", "status"].tolist() == ["PRUNED"]
    lowest = search_progress(TRIALS, EPOCHS, "val_score", "min")
    assert lowest["best_so_far"].tolist() == [0.5, 0.5, 0.5, 0.4, 0.4, 0.4]


def test_compute_to_reach_a_target() -> None:
    progress = search_progress(TRIALS, EPOCHS, "val_score", "max")
    assert compute_to_reach(progress, 0.6, "max") == 2
    assert compute_to_reach(progress, 0.85, "max") == 3
    assert compute_to_reach(progress, 0.95, "max") is None
    assert compute_to_reach(search_progress(TRIALS, EPOCHS, "val_score", "min"), 0.45, "min") == 4


def plotted(values: list | dict) -> list:
    """A figure's data array as a list: Plotly writes numeric arrays as a list or as a typed binary array."""
    if isinstance(values, dict):
        return np.frombuffer(base64.b64decode(values["bdata"]), dtype=values["dtype"]).tolist()
    return list(values)


@pytest.mark.slow
def test_progress_page_overlays_studies(tiny_study_copy, monkeypatch: pytest.MonkeyPatch) -> None:
    results = tiny_study_copy.results
    other = results / "random-study"
    shutil.copytree(tiny_study_copy.study, other)
    spec = yaml.safe_load((other / "study.yaml").read_text())
    spec["searcher"] = {"name": "random"}
    (other / "study.yaml").write_text(yaml.safe_dump(spec))
    monkeypatch.syspath_prepend(str(DASHBOARD))
    monkeypatch.setenv("RAYSEARCH_RESULTS", str(results))
    app = AppTest.from_file(str(DASHBOARD / "app.py"), default_timeout=120)
    app.run()
    app.selectbox(key="study").set_value("tiny").run()
    app.switch_page("views/progress.py").run()
    assert not app.exception and [t.value for t in app.title] == ["Search progress"]
    trials = pd.read_parquet(tiny_study_copy.study / "trials.parquet")
    figure = app.get("plotly_chart")[0].proto.spec
    assert "tiny (tpe + asha)" in figure and "random-study" not in figure
    assert plotted(json.loads(figure)["data"][0]["x"]) == list(range(1, int(trials["epochs"].sum()) + 1))
    app.multiselect(key="progress-overlay").set_value(["random-study"]).run()
    assert not app.exception
    assert "random-study (random + asha)" in app.get("plotly_chart")[0].proto.spec
