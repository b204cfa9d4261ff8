"""What a finished study keeps on disk (`--keep-checkpoints`), one copy of each weights file, and its size.

While a trial runs, its folder holds its resumable state (`state.pt`: weights, optimizer, scheduler, RNG) and
its best weights (`best_model.pt`). A finished trial clearly outside the top K gives up its resumable state as
soon as it ends (`raysearch.search.thinning`); once the study has its results, every trial outside the top K by
the study's ranking (`StudyFolder.ranked_trials`) keeps only its best weights and its epoch history:

- `all`: everything is kept;
- `top-K` (the default, `top-3`): the K best trials keep everything, the others their best weights;
- `best`: every trial keeps only its best weights.

Whatever the policy, a weights file that exists twice with the same bytes (the trial's `best_model.pt`, Tune's
copy of it under `ray/`, the exported `model/weights.pt`, MLflow's artifact) is made one file with several
names (hard links), so the study folder holds each set of weights once.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

from raysearch.core.layout import StudyFolder
from raysearch.errors import ConfigError
from raysearch.search.thinning import thin_trial

ALL, BEST, TOP = "all", "best", "top"
DEFAULT_KEEP = "top-3"
WEIGHT_SUFFIXES = (".pt", ".pth", ".safetensors", ".ckpt")  # files worth keeping once


def parse_keep(text: str) -> int | None:
    """`--keep-checkpoints` as the number of trials that keep everything (None: all of them); ConfigError
    naming the flag when malformed."""
    if text == ALL:
        return None
    if text == BEST:
        return 0
    match = re.fullmatch(rf"{TOP}-(\d+)", text)
    if not match:
        raise ConfigError(f"--keep-checkpoints: expected best, top-K (K a whole number) or all, got {text!r}")
    return int(match.group(1))


def keep_checkpoints(study_dir: Path, keep: str) -> list[Path]:
    """Thin the checkpoints of a study whose trials are ranked (trials.parquet written) as `keep` says, then make
    identical weights files one; returns the files removed."""
    folder = StudyFolder(study_dir)
    top = parse_keep(keep)
    removed: list[Path] = []
    if top is not None:
        ranked = folder.ranked_trials()
        keep_all = set(ranked["trial_id"].head(top)) if top else set()
        for trial in sorted(folder.train_dir.iterdir()) if folder.train_dir.is_dir() else ():
            if trial.name not in keep_all:
                removed += thin_trial(trial)
    link_identical(study_dir)
    return removed


def _weight_files(directory: Path) -> Iterator[Path]:
    for path in directory.rglob("*"):
        if path.suffix in WEIGHT_SUFFIXES and path.is_file() and not path.is_symlink():
            yield path


def _digest(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "blake2b").hexdigest()


def link_identical(directory: Path) -> int:
    """Replace every weights file under `directory` whose bytes another one already holds by a hard link to that
    one (atomically: a link beside it, renamed over it); returns the bytes freed. Files already linked, and
    file systems that refuse hard links, are left as they are."""
    by_size: dict[int, list[Path]] = {}
    for path in _weight_files(directory):
        by_size.setdefault(path.stat().st_size, []).append(path)
    freed = 0
    for size, paths in by_size.items():
        if len(paths) < 2:
            continue
        owners: dict[str, Path] = {}
        for path in sorted(paths):
            owner = owners.setdefault(_digest(path), path)
            if owner == path or os.path.samefile(owner, path):
                continue
            link = path.with_name(f".{path.name}.link-{os.getpid()}")
            try:
                os.link(owner, link)
            except OSError:
                continue
            os.replace(link, path)
            freed += size
    return freed


def folder_size(directory: Path) -> int:
    """The bytes a folder takes, each file counted once however many names (hard links) it has."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for path in Path(directory).rglob("*"):
        if path.is_symlink() or not path.is_file():
            continue
        found = path.stat()
        if (found.st_dev, found.st_ino) not in seen:
            seen.add((found.st_dev, found.st_ino))
            total += found.st_size
    return total


def describe_size(size: int) -> str:
    """A byte count as a short human-readable size (1.2 GB, 340 MB, 12 kB)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size} B"
