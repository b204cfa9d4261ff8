"""A study's dataset: the data its spec names, under the spec's split policy."""

from __future__ import annotations

import sys
from typing import TextIO

from raysearch.core.layout import image_index_file
from raysearch.data.loading import load_dataset
from raysearch.data.records import SplitRatios
from raysearch.data.splits import SplitOutcome, apply_split_policy
from raysearch.data.suitability import check_task_data
from raysearch.study.spec import StudySpec
from raysearch.tasks import create_task


def study_dataset(spec: StudySpec, *, progress: bool = True, out: TextIO | None = None) -> SplitOutcome:
    """The study's dataset (`load_dataset`) under its split policy (`--splits`, `--no-test-split`), said on `out`
    (default: the standard output of the moment); the images' hashes come from the image index of the spec's
    results root (`raysearch.data.imageindex`). Data the task cannot train on is refused (`check_task_data`)
    before that index, or anything else, is written."""
    out = out or sys.stdout
    index = load_dataset(spec.data, format=spec.format, on_error=spec.on_error, empty_labels=spec.empty_labels,
                         split_ratios=spec.split_ratios, binarise_masks=spec.binarise_masks, columns=spec.columns,
                         results=spec.results, progress=progress, out=out,
                         check=lambda read: check_task_data(read, spec.task, create_task(spec.task).needs))
    outcome = apply_split_policy(index, spec.splits_policy, ratios=SplitRatios.parse(spec.split_ratios),
                                 seed=spec.seed, test_split=spec.test_split,
                                 index_file=image_index_file(spec.results, index.root),
                                 progress=progress)
    print(outcome.describe(), file=out)
    return outcome
