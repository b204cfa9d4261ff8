"""The data audit: what the reader found in the study's dataset, and the audit's findings if one was run."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st
from study_data import Study, current_study, read_table
from widgets import no_data, study_header

from raysearch.dashboard_logic import AUDIT_FILE

GROUPING_COLUMNS = ("check", "kind", "category", "section", "finding", "severity", "level")


def reader_findings(study: Study) -> None:
    data = study.spec.get("data", {})
    samples = data.get("samples", {})
    if samples:
        frame = pd.DataFrame({"split": list(samples), "images": list(samples.values())})
        figure = px.bar(frame, x="split", y="images", text_auto=True, color="split")
        figure.update_layout(height=300, showlegend=False, margin={"t": 10})
        st.plotly_chart(figure, key="splits")
    left, right = st.columns(2)
    left.metric("Images skipped for empty label files", data.get("skipped_empty_labels", 0))
    issues = data.get("issues", [])
    right.metric("Files the reader could not use", len(issues))
    if issues:
        st.dataframe(pd.DataFrame({"problem": issues}), hide_index=True)


def audit_findings(audit: pd.DataFrame) -> None:
    grouping = next((c for c in GROUPING_COLUMNS if c in audit.columns), None)
    if grouping is not None:
        counts = audit[grouping].astype(str).value_counts().rename_axis(grouping).reset_index(name="findings")
        figure = px.bar(counts, x="findings", y=grouping, orientation="h", text_auto=True)
        figure.update_layout(height=max(220, 30 * len(counts)), margin={"t": 10}, yaxis_title="")
        st.plotly_chart(figure, key="audit-groups")
    st.dataframe(audit, hide_index=True)


def main() -> None:
    study = current_study()
    study_header(study, "Data audit")
    st.subheader("What the reader found")
    reader_findings(study)
    st.subheader("Audit findings")
    audit = study.audit
    if audit is None:
        audit = read_table(study.root, study.root, AUDIT_FILE)
    if audit is None or audit.empty:
        no_data(f"No {AUDIT_FILE} in this study or results folder: `raysearch data audit DATA` writes one.")
        return
    audit_findings(audit)


main()
