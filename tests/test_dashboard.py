"""The Streamlit dashboard under Streamlit's own test runner (AppTest), on a real tiny results folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from streamlit.testing.v1 import AppTest

from raysearch.cli import main
from raysearch.dashboard.logic import log_grid
from raysearch.data.audit import audit_dataset, write_audit

DASHBOARD = Path(__file__).resolve().parents[1] / "dashboard"
PAGES = {
    "views/leaderboard.py": "Leaderboard",
    "views/curves.py": "Learning curves",
    "views/importance.py": "Which hyperparameters mattered",
    "views/tradeoffs.py": "Accuracy against size and latency",
    "views/models.py": "Models on test images",
    "views/audit.py": "Data audit",
}


@pytest.fixture
def dashboard(monkeypatch: pytest.MonkeyPatch):
    """A function opening the dashboard on a results folder, as `raysearch dashboard DIR` would."""
    monkeypatch.syspath_prepend(str(DASHBOARD))

    def open_on(results: Path) -> AppTest:
        monkeypatch.setenv("RAYSEARCH_RESULTS", str(results))
        app = AppTest.from_file(str(DASHBOARD / "app.py"), default_timeout=120)
        app.run()
        assert not app.exception, app.exception
        return app

    return open_on


def page(app: AppTest, path: str) -> AppTest:
    app.switch_page(path).run()
    assert not app.exception, (path, app.exception)
    assert [t.value for t in app.title] == [PAGES[path]]
    return app


def chart_text(app: AppTest) -> str:
    return " ".join(chart.proto.spec for chart in app.get("plotly_chart"))


def trial_ids(tiny_study) -> set[str]:
    return set(pd.read_parquet(tiny_study.study / "trials.parquet")["trial_id"])


@pytest.mark.slow
def test_every_page_renders_the_study(dashboard, tiny_study) -> None:
    app = dashboard(tiny_study.results)
    ids = trial_ids(tiny_study)
    assert app.selectbox(key="study").value == "tiny"

    page(app, "views/leaderboard.py")
    assert set(app.dataframe[0].value["trial_id"]) == ids
    assert any(f"trial {i}" in m.label for m in app.metric for i in ids)

    page(app, "views/curves.py")
    assert all(i in chart_text(app) for i in ids)

    page(app, "views/importance.py")
    assert app.get("plotly_chart") or app.info

    page(app, "views/tradeoffs.py")
    assert len(app.get("plotly_chart")) == 2 and all(i in chart_text(app) for i in ids)

    page(app, "views/models.py")
    predictions = pd.read_parquet(tiny_study.study / "predictions.parquet")
    assert app.selectbox(key="model").value[0] == predictions["trial_id"].iloc[0]
    assert len(app.get("image")) == 12 and not app.error
    assert "predicted" in chart_text(app)  # the confusion matrix

    page(app, "views/audit.py")
    assert "raysearch data audit" in app.info[0].value  # none was run for this study's data
    assert app.metric[0].value == "48 / 16 / 16"


@pytest.mark.slow
def test_models_page_errors_filter_and_grad_cam(dashboard, tiny_study) -> None:
    app = page(dashboard(tiny_study.results), "views/models.py")
    predictions = pd.read_parquet(tiny_study.study / "predictions.parquet")
    wrong = (predictions["true_class"] != predictions["pred_class"]) | (predictions["apd"] > 0.15)
    app.toggle(key="errors-only").set_value(True).run()
    assert not app.exception
    assert len(app.get("image")) == min(int(wrong.sum()), 12)
    app.toggle(key="errors-only").set_value(False).run()
    app.toggle(key="gradcam").set_value(True).run()
    assert not app.exception and not app.error
    assert len(app.get("image")) == 12 + 4  # the gallery, then four heat maps

    from gradcam import heat_map, trial_model  # the page's own functions, to look at the pixels

    row = predictions.iloc[0]
    spec = yaml.safe_load((tiny_study.study / "study.yaml").read_text())
    trial = pd.read_parquet(tiny_study.study / "trials.parquet").set_index("trial_id").loc[row["trial_id"]]
    network, hp = trial_model(str(tiny_study.results), str(tiny_study.study), row["trial_id"], spec, trial)
    view = cv2.imread(str(tiny_study.study / row["view"]), cv2.IMREAD_GRAYSCALE)
    heat = heat_map(network, hp, view, int(row["pred_class"]))
    assert heat.shape == (*view.shape, 3) and heat.std() > 10  # a map, not a uniform tint


@pytest.mark.slow
def test_leaderboard_ranks_and_filters_across_studies(dashboard, tiny_study_copy) -> None:
    other = tiny_study_copy.results / "other"
    other.mkdir()
    for name in ("trials.parquet", "epochs.parquet"):
        (other / name).write_bytes((tiny_study_copy.study / name).read_bytes())
    spec = yaml.safe_load((tiny_study_copy.study / "study.yaml").read_text()) | {"task": "classification"}
    (other / "study.yaml").write_text(yaml.safe_dump(spec))

    app = page(dashboard(tiny_study_copy.results), "views/leaderboard.py")
    app.selectbox(key="rank-by").set_value("params").run()
    shown = app.dataframe[0].value
    assert app.radio(key="mode-params").value == "min"
    assert shown["params"].is_monotonic_increasing and shown["rank"].tolist() == [1, 2]

    status = app.multiselect(key="filters:study:other:status")  # "other" sorts first: the study shown
    status.set_value(["COMPLETED"]).run()
    assert set(app.dataframe[0].value["status"]) == {"COMPLETED"}
    app.multiselect(key="filters:study:other:status").set_value(["COMPLETED", "PRUNED", "EARLY_STOPPED"]).run()

    app.toggle(key="all-studies").set_value(True).run()
    assert not app.exception
    both = app.dataframe[0].value
    assert len(both) == 4 and set(both["study"]) == {"tiny", "other"}
    app.multiselect(key="filters:all-studies:tasks").set_value(["classification"]).run()
    assert set(app.dataframe[0].value["study"]) == {"other"}


@pytest.mark.slow
def test_crafted_prediction_path_is_refused(dashboard, tiny_study_copy) -> None:
    outside = tiny_study_copy.results.parent / "outside.png"
    cv2.imwrite(str(outside), np.full((8, 8), 255, np.uint8))
    path = tiny_study_copy.study / "predictions.parquet"
    table = pq.read_table(path)
    views = table.column("view").to_pylist()
    views[0] = "../../outside.png"
    assert (tiny_study_copy.study / views[0]).resolve() == outside.resolve()
    pq.write_table(table.set_column(table.schema.get_field_index("view"), "view", pa.array(views)), path)

    elsewhere = tiny_study_copy.results.parent / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "trials.parquet").write_bytes(path.read_bytes())
    (tiny_study_copy.results / "linked").symlink_to(elsewhere, target_is_directory=True)

    app = dashboard(tiny_study_copy.results)
    assert app.selectbox(key="study").options == ["tiny"]
    assert any("linked: refused" in e.value for e in app.sidebar.error)
    page(app, "views/models.py")
    errors = app.main.error
    assert len(errors) == 1 and "refused, the path lies outside the folder" in errors[0].value
    assert len(app.get("image")) == 11


@pytest.mark.slow
def test_audit_page_shows_the_datasets_audit(dashboard, tiny_study_copy) -> None:
    write_audit(audit_dataset(tiny_study_copy.data, progress=False), tiny_study_copy.results / "audit" / "phantom")
    app = page(dashboard(tiny_study_copy.results), "views/audit.py")
    assert any("audit/phantom/audit.parquet" in c.value for c in app.caption)
    assert [m.value for m in app.metric][:5] == ["81", "80", "0", "1", "0"]  # the tiny data plants one malformed label
    assert all(name in chart_text(app) for name in ("finger", "shoulder"))  # images per class and split
    assert "Class warnings" in [h.value for h in app.subheader]  # val and test are nearly empty per class


@pytest.mark.slow
def test_main_page_does_not_import_torch(tiny_study) -> None:
    script = (f"import sys; sys.path.insert(0, {str(DASHBOARD)!r})\n"
              "from streamlit.testing.v1 import AppTest\n"
              f"app = AppTest.from_file({str(DASHBOARD / 'app.py')!r}, default_timeout=120).run()\n"
              "import json; print(json.dumps([bool(app.exception), 'torch' in sys.modules, 'ray' in sys.modules]))")
    environment = os.environ | {"RAYSEARCH_RESULTS": str(tiny_study.results)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=environment)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [False, False, False]


def test_dashboard_command_refuses_a_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["dashboard", str(tmp_path / "missing")]) == 2
    assert "no such results folder" in capsys.readouterr().err


def shown_ids(app: AppTest) -> set[str]:
    return set(app.dataframe[0].value["trial_id"])


@pytest.mark.slow
def test_switching_studies_never_hides_a_trial_silently(dashboard, two_studies) -> None:
    """A filter set in one study stays with that study, says what it hides and resets; another study shows
    every trial; the learning curves follow the study."""
    results, tiny = two_studies.results, two_studies.study
    trials = pd.read_parquet(tiny / "trials.parquet")
    ids = set(trials["trial_id"])
    app = dashboard(results)
    app.selectbox(key="study").set_value("tiny").run()
    page(app, "views/leaderboard.py")
    assert shown_ids(app) == ids and not app.warning

    grid = log_grid(float(trials["param.lr"].min()), float(trials["param.lr"].max()))
    slider = app.select_slider(key="filters:study:tiny:range:param.lr")
    assert "log scale" in slider.label
    slider.set_value((grid[1], grid[-1])).run()
    kept = {trials.loc[trials["param.lr"].idxmax(), "trial_id"]}
    assert shown_ids(app) == kept
    assert [w.value for w in app.warning] == [f"1 of {len(ids)} trials shown — {len(ids) - 1} hidden by filters"]

    app.selectbox(key="study").set_value("other").run()
    assert shown_ids(app) == {f"o-{i}" for i in ids} and not app.warning  # the other study: nothing carried over

    app.selectbox(key="study").set_value("tiny").run()
    assert shown_ids(app) == kept and len(app.warning) == 1  # the study keeps its own filter, and says so
    app.button(key="reset:filters:study:tiny").click().run()
    assert shown_ids(app) == ids and not app.warning

    page(app, "views/curves.py")
    assert all(i in chart_text(app) for i in ids)
    app.selectbox(key="study").set_value("other").run()
    assert not app.exception
    assert all(f"o-{i}" in chart_text(app) for i in ids)  # the other study's best trials, not an empty chart


@pytest.mark.slow
def test_missing_images_one_notice_test_clean_beside_test_and_model_names(dashboard, tiny_study_copy) -> None:
    study = tiny_study_copy.study
    for view in (study / "predictions" / "images").rglob("*.png"):
        view.unlink()
    app = page(dashboard(tiny_study_copy.results), "views/models.py")
    assert not app.main.error and not app.get("image")
    assert len(app.warning) == 1 and "12 of the 12 test radiographs to show are missing" in app.warning[0].value
    best = pd.read_parquet(study / "trials.parquet").dropna(subset=["test.accuracy"]).iloc[0]
    side_by_side = app.dataframe[0].value.set_index("metric")
    images = (int(best["test.images"]), int(best["test_clean.images"]))
    assert list(side_by_side.columns) == [f"whole test split ({images[0]} images)",
                                          f"clean subset ({images[1]} images)"]
    assert side_by_side.loc["accuracy"].tolist() == pytest.approx([best["test.accuracy"], best["test_clean.accuracy"]])

    page(app, "views/tradeoffs.py")
    pareto = app.dataframe[0].value
    assert "model" in pareto.columns and set(pareto["model"]) == {"vgg"}


@pytest.mark.slow
def test_broken_studies_are_one_line_each_and_the_good_one_stays_usable(dashboard, tiny_study_copy) -> None:
    """A truncated trials.parquet and a study.yaml whose search_space is a list, beside a good study: one sidebar
    line each naming the file and the field, every page of the good study and "Compare every study" work; the
    notebook API and evaluate give the same one-line DataError."""
    from raysearch.errors import DataError
    from raysearch.study.notebook import load_study

    good = tiny_study_copy.study
    truncated, malformed = tiny_study_copy.results / "truncated", tiny_study_copy.results / "malformed"
    for broken in (truncated, malformed):
        broken.mkdir()
        for name in ("study.yaml", "trials.parquet", "epochs.parquet"):
            (broken / name).write_bytes((good / name).read_bytes())
    (truncated / "trials.parquet").write_bytes((good / "trials.parquet").read_bytes()[:200])
    spec = yaml.safe_load((good / "study.yaml").read_text()) | {"search_space": ["lr", "width"]}
    (malformed / "study.yaml").write_text(yaml.safe_dump(spec))

    app = dashboard(tiny_study_copy.results)
    notices = [e.value for e in app.sidebar.error]
    assert notices == [
        f"unreadable study malformed: {malformed / 'study.yaml'}: search_space: expected a mapping, got list "
        "\"['lr', 'width']\"",
        f"unreadable study truncated: {truncated / 'trials.parquet'}: not a readable Parquet file "
        f"({notices[1].split('(', 1)[1]}"]
    assert all("\n" not in notice for notice in notices)
    assert app.selectbox(key="study").options == ["tiny"]
    for path in PAGES:
        page(app, path)
    app = page(app, "views/leaderboard.py")
    app.toggle(key="all-studies").set_value(True).run()
    assert not app.exception and set(app.dataframe[0].value["study"]) == {"tiny"}

    with pytest.raises(DataError, match=rf"^{truncated / 'trials.parquet'}: not a readable Parquet file"):
        load_study(truncated)
    with pytest.raises(DataError, match=rf"^{malformed / 'study.yaml'}: search_space: expected a mapping"):
        load_study(malformed)


def small_study(directory: Path, trials: int, seed: int) -> None:
    """A study folder as `raysearch run` leaves it, as far as the dashboard's study list reads it: study.yaml,
    trials.parquet and epochs.parquet of `trials` trials."""
    from raysearch.core.layout import STUDY_KEYS

    directory.mkdir(parents=True)
    spec = dict.fromkeys(STUDY_KEYS, {}) | {"name": directory.name, "task": "classification", "seed": seed,
                                             "scheduler": {"metric": "val_score", "mode": "max"}}
    (directory / "study.yaml").write_text(yaml.safe_dump(spec))
    rng = np.random.default_rng(seed)
    ids = [f"{directory.name}-{i}" for i in range(trials)]
    pd.DataFrame({"trial_id": ids, "number": range(trials), "status": "COMPLETED", "epochs": 2,
                  "param.lr": rng.uniform(1e-3, 1e-2, trials),
                  "metric.val_score.best": rng.uniform(0, 1, trials)}).to_parquet(directory / "trials.parquet")
    pd.DataFrame({"trial_id": np.repeat(ids, 2), "epoch": np.tile([1, 2], trials),
                  "val_score": rng.uniform(0, 1, 2 * trials)}).to_parquet(directory / "epochs.parquet")


def test_comparing_every_study_reads_each_table_once_until_it_changes(dashboard, monkeypatch, tmp_path: Path) -> None:
    """The leaderboard over every study reads each trials.parquet once over reruns, never another study's epochs,
    and reads a trials.parquet again once it changed (its mtime and size)."""
    import streamlit as st

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from dashboard_scale import ParquetReads

    results = tmp_path / "results"
    for i, name in enumerate(("alpha", "beta", "gamma")):
        small_study(results / name, 4, i)
    st.cache_data.clear()
    with ParquetReads().counting() as reads:
        app = dashboard(results)
        app.toggle(key="all-studies").set_value(True).run()
        app.run()
        assert not app.exception and len(app.dataframe[0].value) == 12
        expected = {str(results / name / "trials.parquet"): 1 for name in ("alpha", "beta", "gamma")}
        assert reads.tables == expected  # and no epochs.parquet: the leaderboard does not show epochs

        reads.reset()
        small_study(tmp_path / "grown", 5, 7)
        (results / "gamma" / "trials.parquet").write_bytes((tmp_path / "grown" / "trials.parquet").read_bytes())
        app.run()
        assert not app.exception and len(app.dataframe[0].value) == 13
        assert reads.tables == {str(results / "gamma" / "trials.parquet"): 1}
        assert reads.footers == {str(results / "gamma" / name): 1 for name in ("trials.parquet", "epochs.parquet")}
