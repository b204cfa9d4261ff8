"""A dataset opened as `raysearch run` and `raysearch evaluate` open it: any format, or the built-in phantoms."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from raysearch.data.samples import DatasetIndex
from raysearch.errors import ConfigError


def load_dataset(data: str | None, *, format: str | None = None, on_error: str = "skip", empty_labels: str = "skip",
                 split_ratios: str | None = None, binarise_masks: bool = False, columns: str | None = None,
                 results: Path | str | None = None, check: Callable[[DatasetIndex], None] | None = None,
                 progress: bool = True, out: TextIO = sys.stdout) -> DatasetIndex:
    """The dataset at `data` (any format, see raysearch.data.formats), or the built-in phantom X-rays when None;
    its files are checked from the image index of the results root `results` where it knows them
    (`raysearch.data.imageindex.indexed_checks`; None: every file is opened, nothing is kept). `check` (a task's
    needs, `suitability.check_task_data`) refuses the dataset as read, before anything is written there.

    Prints what was read and what was left out or repaired: empty label files, problems, a validation split
    carved from train, binarised masks are never passed over silently (raysearch.data.suitability).
    """
    from raysearch.core.layout import image_index_file
    from raysearch.data import formats
    from raysearch.data.imageindex import indexed_checks
    from raysearch.data.phantom import PhantomSpec, ensure_phantom
    from raysearch.data.records import SplitRatios, describe_index, opening_every_file
    from raysearch.data.suitability import carve_validation, check_mask_levels

    root = ensure_phantom(PhantomSpec(), progress=progress) if data is None else Path(data)
    if not root.exists():
        raise ConfigError(f"--data: {root} does not exist")
    ratios = SplitRatios() if split_ratios is None else SplitRatios.parse(split_ratios)
    checks_for = opening_every_file if results is None else indexed_checks(results)
    index = formats.load_dataset(root, format, on_error=on_error, empty_labels=empty_labels, split_ratios=ratios,
                                 columns=columns, checks_for=checks_for)
    carved = carve_validation(index, ratios)
    if check is not None:
        check(index)
    index_file = None if results is None else image_index_file(results, index.root)
    binarised, first = check_mask_levels(index, binarise=binarise_masks, index_file=index_file)
    print(describe_index(index), file=out)
    if carved:
        print(f"  no validation split: {carved} train images carved as val (share {ratios.val} of --split-ratios, "
              f"seed {ratios.seed}, stratified by class)", file=out)
    if binarised:
        print(f"  {binarised} masks with values other than 0/1/255 binarised (nonzero = foreground; first: {first})",
              file=out)
    return index
