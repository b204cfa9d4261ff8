"""Per model: test metrics with their bootstrap intervals, ROC curves and the reliability diagram, confusion
matrix, a gallery of test radiographs (true polygon red, predicted
green, masks overlaid), and Grad-CAM heat maps for models with a class head."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st
from study_data import Study, current_study
from widgets import no_data, study_header, trial_order

from raysearch.core.columns import headline_columns, metric_name
from raysearch.dashboard.logic import (
    confusion_from_metrics,
    confusion_from_predictions,
    interval_text,
    prediction_errors,
    reliability,
    roc_curves,
)
from raysearch.errors import RaysearchError
from raysearch.inference.overlay import draw_overlay

GALLERY_COLUMNS = 4


def pick_model(study: Study, predictions: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    """A selectbox over the evaluated models (trial × seed), best trial first."""
    order = {t: i for i, t in enumerate(trial_order(study))}
    models = predictions[["trial_id", "repeat", "seed"]].drop_duplicates()
    models = models.assign(position=models["trial_id"].map(order)).sort_values(["position", "repeat"],
                                                                                 na_position="last")
    keys = list(zip(models["trial_id"], models["repeat"], models["seed"], strict=True))
    trial_id, repeat, _ = st.selectbox("Model", keys, key="model", format_func=lambda k: (
        f"trial {k[0]} · seed {k[2]}" if k[0] in order else f"{k[0]} (ensemble)"))
    return trial_id, predictions[(predictions["trial_id"] == trial_id) & (predictions["repeat"] == repeat)]


def test_metrics(study: Study, trial_id: str) -> None:
    """Cards of the model's test metrics; under the published split policy, a table of the whole test split
    beside its clean subset (the test images without a source in train)."""
    row = study.test_row(trial_id)
    if row is None:
        return
    values = {c: row[c] for c in headline_columns(row.index, "test.") if not c.endswith(".std") and pd.notna(row[c])}
    if not values:
        return
    intervals(row, values)
    clean = {c: row.get(c.replace("test.", "test_clean.", 1)) for c in values}
    if any(pd.notna(v) for v in clean.values()):
        sizes = (row.get("test.images"), row.get("test_clean.images"))
        st.dataframe(pd.DataFrame({"metric": [metric_name(c) for c in values],
                                   f"whole test split ({sizes[0]:.0f} images)": list(values.values()),
                                   f"clean subset ({sizes[1]:.0f} images)": list(clean.values())}),
                     hide_index=True, key="test-clean")
        st.caption("The clean subset leaves out the test images whose source radiograph (Roboflow name or "
                   "perceptual near-duplicate) is also in train; `--splits deduplicated` or `grouped` selects on "
                   "leak-free data too.")
        return
    cards = st.columns(min(len(values), 6))
    for card, (column, value) in zip(cards, list(values.items())[:6], strict=False):
        spread = row.get(column.replace(".mean", ".std")) if column.endswith(".mean") else None
        ci = interval_text(row, column)
        card.metric(column.removeprefix("test.").removesuffix(".mean"), f"{value:.3f}",
                    help="test split" + (f", ± {spread:.3f} (std over {int(row['test.repeats'])} seeds)"
                                         if spread is not None and pd.notna(spread) else "")
                    + (f", 95 % bootstrap interval {ci}" if ci else ""))


def intervals(row: pd.Series, values: dict[str, float]) -> None:
    """The test figures in [0, 1] as points with their 95 % bootstrap intervals as error bars."""
    shown = {c: v for c, v in values.items() if interval_text(row, c) and 0 <= v <= 1}
    if not shown:
        return
    bases = [c.removesuffix(".mean") for c in shown]
    frame = pd.DataFrame({"figure": [metric_name(c) for c in shown], "value": list(shown.values()),
                          "above": [row[f"{b}.ci_high"] - v for b, v in zip(bases, shown.values(), strict=True)],
                          "below": [v - row[f"{b}.ci_low"] for b, v in zip(bases, shown.values(), strict=True)]})
    figure = px.scatter(frame, x="figure", y="value", error_y="above", error_y_minus="below",
                        labels={"value": "test value (95 % bootstrap interval)", "figure": ""})
    figure.update_layout(height=280, margin={"t": 10})
    st.plotly_chart(figure, key="test-intervals")


def curves(study: Study, rows: pd.DataFrame) -> None:
    """ROC curves one-vs-rest per class and the reliability diagram of the model's test predictions."""
    roc, calibration = roc_curves(rows, study.classes), reliability(rows)
    left, right = st.columns(2)
    left.subheader("ROC curves (test split)")
    if roc.empty:
        left.caption("No class has both positive and negative test images.")
    else:
        figure = px.line(roc, x="fpr", y="tpr", color="class",
                         labels={"fpr": "1 − specificity", "tpr": "sensitivity"})
        figure.add_shape(type="line", x0=0, y0=0, x1=1, y1=1, line={"dash": "dot", "color": "grey"})
        figure.update_layout(height=360, margin={"t": 10})
        left.plotly_chart(figure, key="roc")
    right.subheader("Reliability diagram")
    figure = px.scatter(calibration, x="confidence", y="accuracy", size="images", range_x=[0, 1], range_y=[0, 1],
                        labels={"confidence": "mean confidence of the bin", "accuracy": "accuracy of the bin"})
    figure.add_shape(type="line", x0=0, y0=0, x1=1, y1=1, line={"dash": "dot", "color": "grey"})
    figure.update_layout(height=360, margin={"t": 10})
    right.plotly_chart(figure, key="reliability")
    right.caption("15 equal-width confidence bins of the top class (those of the ECE); on the diagonal a model is "
                  "as often right as it is confident.")


def confusion(study: Study, trial_id: str, rows: pd.DataFrame) -> None:
    """The test split's confusion matrix of this model, and the validation one the trial reported."""
    classes = study.classes
    matrices = {"Test split (this model)": confusion_from_predictions(rows, len(classes))}
    row = study.test_row(trial_id)
    validation = None if row is None else confusion_from_metrics(row.to_dict(), len(classes))
    if validation is not None:
        matrices["Validation split (best epoch)"] = validation
    st.subheader("Confusion matrix")
    for tab, (name, matrix) in zip(st.tabs(list(matrices)), matrices.items(), strict=True):
        figure = px.imshow(matrix, x=classes, y=classes, text_auto=True, color_continuous_scale="Blues",
                           labels={"x": "predicted", "y": "true", "color": "images"}, aspect="auto")
        figure.update_layout(height=160 + 36 * len(classes), margin={"t": 10})
        tab.plotly_chart(figure, key=f"confusion-{name}")


def caption(row: pd.Series) -> str:
    parts = []
    if pd.notna(row.get("pred_class_name")):
        mark = "✓" if row["pred_class_name"] == row["true_class_name"] else "✗"
        confidence = max(row["probabilities"]) if row["probabilities"] is not None else float("nan")
        parts.append(f"{mark} true {row['true_class_name']} · predicted {row['pred_class_name']} ({confidence:.0%})")
    if pd.notna(row.get("apd")):
        parts.append(f"APD {row['apd']:.3f}")
    if pd.notna(row.get("iou")):
        parts.append(f"IoU {row['iou']:.2f}")
    if pd.notna(row.get("hd95")):
        parts.append(f"HD95 {row['hd95']:.1f} px")
    return " · ".join(parts)


def _polygon(value: object) -> list[float] | None:
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else list(value)


def overlay(study: Study, row: pd.Series) -> np.ndarray:
    """The test radiograph with the true polygon red, the predicted green and the masks, as RGB."""
    view = study.grey_image(row["view"])
    if view is None:
        raise FileNotFoundError(f"{row['view']} is missing from the study folder")
    mask = study.grey_image(row["mask"]) if pd.notna(row.get("mask")) else None
    truth = study.grey_image(row["true_mask"]) if pd.notna(row.get("true_mask")) else None
    predicted = _polygon(row.get("pred_polygon"))
    true = _polygon(row.get("true_polygon")) if predicted is not None else None  # no polygon head, no polygons
    drawn = draw_overlay(view, true_polygon=true, predicted_polygon=predicted, mask=mask, true_mask=truth)
    return cv2.cvtColor(drawn, cv2.COLOR_BGR2RGB)


def gallery(study: Study, rows: pd.DataFrame) -> pd.DataFrame:
    """Filter controls and a grid of overlays; returns the rows shown."""
    st.subheader("Test radiographs")
    st.caption("True polygon in red, predicted in green; a predicted mask is tinted green, the true mask outlined "
               "in red.")
    controls = st.columns(4)
    errors_only = controls[0].toggle("Errors only", key="errors-only")
    apd_limit = controls[1].slider("Polygon error above (APD)", 0.0, 0.5, 0.15, 0.01, key="apd-limit",
                                   disabled=rows["apd"].isna().all())
    iou_limit = controls[2].slider("Mask error below (IoU)", 0.0, 1.0, 0.5, 0.05, key="iou-limit",
                                   disabled=rows["iou"].isna().all())
    count = controls[3].slider("Images", 4, 48, 12, 4, key="count")
    shown = rows[prediction_errors(rows, apd_limit=apd_limit, iou_limit=iou_limit)] if errors_only else rows
    if shown.empty:
        no_data("No test image matches these filters.")
        return shown
    shown = shown.head(count)
    missing = [view for view in shown["view"] if _absent(study, view)]
    if missing:
        st.warning(f"{len(missing)} of the {len(shown)} test radiographs to show are missing from the study folder "
                   f"(first: {missing[0]}); `raysearch evaluate {study.directory}` writes them again.",
                   icon=":material/hide_image:")
    grid = st.columns(GALLERY_COLUMNS)
    drawn = shown[~shown["view"].isin(missing)]
    for i, (_, row) in enumerate(drawn.iterrows()):
        with grid[i % GALLERY_COLUMNS]:
            try:
                st.image(overlay(study, row), caption=caption(row), width="stretch")
            except (RaysearchError, FileNotFoundError) as error:
                st.error(str(error), icon=":material/block:")
    return drawn


def _absent(study: Study, view: str) -> bool:
    """Whether a radiograph named in predictions.parquet is absent (a path refused as outside is not absent:
    its own error says why)."""
    try:
        return not study.path(view).is_file()
    except RaysearchError:
        return False


def grad_cam(study: Study, trial_id: str, shown: pd.DataFrame) -> None:
    st.subheader("Grad-CAM")
    if not st.toggle("Show where the class head looks (Grad-CAM on the trial's search checkpoint)", key="gradcam"):
        return
    from gradcam import heat_map, trial_model

    names = shown["view"].tolist()
    chosen = st.multiselect("Images", names, default=names[:GALLERY_COLUMNS], key="gradcam-images",
                            format_func=lambda v: v.rsplit("/", 1)[-1])
    try:
        row = study.trials.set_index("trial_id").loc[trial_id]
        network, hp = trial_model(str(study.root), str(study.directory), trial_id, study.spec, row)
    except RaysearchError as error:
        st.error(str(error))
        return
    grid = st.columns(GALLERY_COLUMNS)
    for i, (_, item) in enumerate(shown[shown["view"].isin(chosen)].iterrows()):
        view = study.grey_image(item["view"])
        with grid[i % GALLERY_COLUMNS]:
            st.image(heat_map(network, hp, view, int(item["pred_class"])), width="stretch",
                     caption=f"predicted {item['pred_class_name']}")


def main() -> None:
    study = current_study()
    study_header(study, "Models on test images")
    predictions = study.predictions
    if predictions is None or predictions.empty:
        no_data(f"No predictions yet: run `raysearch evaluate {study.directory}`.")
        return
    trial_id, rows = pick_model(study, predictions)
    test_metrics(study, trial_id)
    has_classes = rows["pred_class"].notna().any()
    if has_classes:
        curves(study, rows)
        confusion(study, trial_id, rows)
    shown = gallery(study, rows)
    if has_classes and not shown.empty and trial_id in set(study.trials["trial_id"]):  # an ensemble has no Grad-CAM
        grad_cam(study, trial_id, shown)


main()
