"""The dataset a study runs on, as `raysearch run` and `raysearch evaluate` open it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from raysearch.data.samples import DatasetIndex
from raysearch.errors import ConfigError


def load_dataset(data: str | None, *, format: str | None = None, on_error: str = "skip", empty_labels: str = "skip",
                 split_ratios: str = "0.8,0.1,0.1", progress: bool = True, out: TextIO = sys.stdout) -> DatasetIndex:
    """The dataset at `data` (any format, see raysearch.data.formats), or the built-in phantom X-rays when None.

    Prints what was read and what was left out: empty label files and problems are never dropped silently.
    """
    from raysearch.data import formats
    from raysearch.data.phantom import PhantomSpec, ensure_phantom
    from raysearch.data.records import SplitRatios, describe_index

    root = ensure_phantom(PhantomSpec(), progress=progress) if data is None else Path(data)
    if not root.exists():
        raise ConfigError(f"--data: {root} does not exist")
    index = formats.load_dataset(root, format, on_error=on_error, empty_labels=empty_labels,
                                 split_ratios=SplitRatios.parse(split_ratios))
    print(describe_index(index), file=out)
    return index
