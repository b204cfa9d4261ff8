"""Study names are deterministic (nnU-Net style, never a timestamp): the same request gives the same name in any
process at any time, and anything that shapes the study gives another."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from typing import Any

import pytest

from raysearch.study.spec import RUNTIME_FIELDS, StudySpec

SPACE_TEXT = "task: multitask\nparameters:\n  lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
CHANGED = {"data": "other-data", "space": "search_spaces/other.yaml", "format": "yolo", "split_ratios": "0.7,0.2,0.1",
           "splits_policy": "grouped", "gpus_per_worker": 1.0, "trials_per_gpu": 2, "searcher": "random",
           "startup_trials": 4, "scheduler": "median", "time_budget": "1h", "epoch_budget": 10, "on_error": "error",
           "empty_labels": "background", "columns": "path=file,label=class",
           "keep_checkpoints": "all"}


def _changed(field: dataclasses.Field[Any], value: Any) -> Any:
    """Another valid value of a StudySpec field."""
    if field.name in CHANGED:
        return CHANGED[field.name]
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    return f"{value}-other"


def test_the_same_request_gets_the_same_name_in_another_process() -> None:
    spec = StudySpec(task="multitask", trials=4, seed=3)
    name = spec.study_name(SPACE_TEXT)
    assert re.fullmatch(r"multitask-[0-9a-f]{8}", name)
    assert StudySpec(task="multitask", trials=4, seed=3).study_name(SPACE_TEXT) == name
    code = ("from raysearch.study.spec import StudySpec; import sys; "
            "print(StudySpec(task='multitask', trials=4, seed=3).study_name(sys.stdin.read()))")
    other = subprocess.run([sys.executable, "-c", code], input=SPACE_TEXT, capture_output=True, text=True, check=True)
    assert other.stdout.strip() == name  # no timestamp, no per-process hash seed


def test_anything_that_shapes_the_study_changes_its_name() -> None:
    spec = StudySpec(task="multitask")
    name = spec.study_name(SPACE_TEXT)
    shaping = [f for f in dataclasses.fields(StudySpec) if f.name not in RUNTIME_FIELDS and f.name != "task"]
    assert len(shaping) >= 15
    names = {name}
    for field in shaping:
        changed = dataclasses.replace(spec, **{field.name: _changed(field, getattr(spec, field.name))})
        names.add(changed.study_name(SPACE_TEXT))
        assert changed.study_name(SPACE_TEXT) != name, field.name
    assert len(names) == len(shaping) + 1
    assert spec.study_name(SPACE_TEXT + "  width: {type: categorical, choices: [8, 16]}\n") != name
    assert StudySpec(task="classification").study_name(SPACE_TEXT).startswith("classification-")
    assert dataclasses.replace(spec, space="my-space.yaml").study_name(SPACE_TEXT).startswith("multitask-my-space-")


@pytest.mark.parametrize("field", [f for f in RUNTIME_FIELDS if f != "name"])
def test_where_and_how_wide_it_runs_does_not_change_the_name(field: str) -> None:
    spec = StudySpec(task="multitask")
    value = {"results": "/elsewhere", "address": "ray://head:10001", "concurrency": 3, "wait_for_nodes": 10.0,
             "log": ("mlflow",), "keep_checkpoints": "all"}[field]
    assert dataclasses.replace(spec, **{field: value}).study_name(SPACE_TEXT) == spec.study_name(SPACE_TEXT)


def test_a_given_name_is_used_as_is() -> None:
    assert StudySpec(task="multitask", name="fracture-run").study_name(SPACE_TEXT) == "fracture-run"
