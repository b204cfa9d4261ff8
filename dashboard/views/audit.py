"""The data audit of the study's dataset (`raysearch data audit`: files, classes, problems, duplicates
across splits), and what the reader reported when the study loaded the data."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st
from study_data import Study, current_study
from widgets import no_data, study_header

AUDIT_COLUMNS = {"section", "split", "class", "key", "value", "detail", "path", "line"}


def section(audit: pd.DataFrame, name: str) -> pd.DataFrame:
    return audit[audit["section"] == name]


def headline(audit: pd.DataFrame) -> None:
    """Cards: images, labelled, empty label files, problems, and train images repeated in val or test."""
    files = section(audit, "files")
    across = section(audit, "duplicates")
    leaked = int(across.loc[across["key"].isin(["exact_across", "near_across"]), "value"].sum())
    cards = st.columns(5)
    for card, (label, value) in zip(cards, [
        ("Images", files.loc[files["key"] == "images", "value"].sum()),
        ("Labelled", files.loc[files["key"] == "labelled", "value"].sum()),
        ("Empty label files", files.loc[files["key"] == "empty", "value"].sum()),
        ("Problems (file, line)", len(section(audit, "issues"))),
        ("Duplicates across splits", leaked),
    ], strict=True):
        card.metric(label, int(value), border=True)
    if leaked:
        st.warning(f"{leaked} validation/test images repeat (exactly or nearly) an image of an earlier split: "
                   "leakage inflates every score. The pairs are listed below.", icon=":material/warning:")


def classes_chart(audit: pd.DataFrame) -> None:
    images = section(audit, "classes")
    images = images[images["key"] == "images"]
    if images.empty:
        return
    st.subheader("Images per class and split")
    figure = px.bar(images, x="class", y="value", color="split", barmode="group", text_auto=True,
                    category_orders={"split": ["train", "val", "test"]}, labels={"value": "images", "class": ""})
    figure.update_layout(height=380, margin={"t": 10})
    st.plotly_chart(figure, key="audit-classes")


def tables(audit: pd.DataFrame) -> None:
    files = section(audit, "files").pivot_table(index="split", columns="key", values="value", sort=False)
    if not files.empty:
        st.subheader("Files per split")
        st.dataframe(files.astype(int))
    shown = {
        "Class warnings": (section(audit, "class_warnings"), ["split", "class", "detail"]),
        "Problems": (section(audit, "issues"), ["split", "key", "detail", "path", "line"]),
        "Duplicate pairs": (section(audit, "duplicate_pairs").rename(columns={"path": "first", "detail": "second",
                                                                             "value": "distance (bits)"}),
                            ["split", "key", "distance (bits)", "first", "second"]),
        "Duplicates": (section(audit, "duplicates"), ["split", "key", "value", "detail"]),
        "Image sizes": (section(audit, "image_sizes").rename(columns={"key": "size"}), ["split", "size", "value"]),
        "Channels": (section(audit, "channels").rename(columns={"key": "channels"}), ["split", "channels", "value"]),
    }
    for title, (rows, columns) in shown.items():
        if not rows.empty:
            st.subheader(title)
            st.dataframe(rows[columns], hide_index=True)


def reader_findings(study: Study) -> None:
    """What the study's run reported while reading the data (study.yaml)."""
    data = study.spec.get("data", {})
    samples = data.get("samples", {})
    left, middle, right = st.columns(3)
    left.metric("Images used (train / val / test)", " / ".join(str(samples.get(s, "?")) for s in ("train", "val",
                                                                                                 "test")))
    middle.metric("Skipped: empty label files", data.get("skipped_empty_labels", 0))
    issues = data.get("issues", [])
    right.metric("Skipped: unusable files", len(issues))
    if issues:
        st.dataframe(pd.DataFrame({"problem": [str(i) for i in issues]}), hide_index=True)


def main() -> None:
    study = current_study()
    study_header(study, "Data audit", needs_scores=False)
    audit = study.audit
    if audit is None or audit.empty:
        no_data("No audit of this dataset in the results folder: `raysearch data audit DATA` writes one "
                "(into RESULTS/audit/DATASET/).")
    elif not AUDIT_COLUMNS <= set(audit.columns):
        st.caption(f"From {study.audit_source.relative_to(study.root)}")
        st.dataframe(audit, hide_index=True)
    else:
        st.caption(f"From `{study.audit_source.relative_to(study.root)}`")
        for problem in section(audit, "fatal")["detail"]:
            st.error(f"Training is impossible: {problem}")
        headline(audit)
        classes_chart(audit)
        tables(audit)
    st.subheader("When the study read the data")
    reader_findings(study)


main()
