"""The dashboard's only way to read files: a study's Parquet tables, study.yaml and prediction PNGs, each
path checked to lie inside the results folder the dashboard was given."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from raysearch.core.columns import FAILED, no_trial_finished, score_column
from raysearch.core.files import inside
from raysearch.core.layout import (
    DEFAULT_RESULTS,
    ENSEMBLES_FILE,
    EPOCHS_FILE,
    PREDICTIONS_FILE,
    STUDY_FILE,
    TRIALS_FILE,
    StudyFolder,
    find_studies,
    parse_yaml,
)
from raysearch.dashboard.logic import audit_locations
from raysearch.data.images import ImageError, read_grey
from raysearch.errors import RaysearchError


def _app_arguments() -> argparse.Namespace:
    """The app's own arguments, given after `--` in `streamlit run app.py -- --results DIR ...`."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--results")
    parser.add_argument("--ray-dashboard")
    return parser.parse_known_args(sys.argv[1:])[0]


def results_root() -> Path:
    """The results folder: `-- --results DIR` after `streamlit run app.py`, else $RAYSEARCH_RESULTS."""
    return Path(_app_arguments().results or os.environ.get("RAYSEARCH_RESULTS", DEFAULT_RESULTS)).resolve()


def ray_dashboard_url() -> str | None:
    """The Ray dashboard address the user passed (`-- --ray-dashboard URL`), if any."""
    return _app_arguments().ray_dashboard


def version(path: Path) -> tuple[int, int]:
    """A file's version as the caches below key it: its modification time (ns) and size."""
    found = path.stat()
    return found.st_mtime_ns, found.st_size


@st.cache_data(show_spinner=False, max_entries=1024)  # every table of a few hundred studies ("Compare every study")
def _parquet(path: str, version: tuple[int, int]) -> pd.DataFrame:
    """A Parquet file, read once per version."""
    return pd.read_parquet(path)


@st.cache_data(show_spinner=False, max_entries=1024)
def _yaml(path: str, version: tuple[int, int]) -> dict[str, Any]:
    return parse_yaml(Path(path).read_text()) or {}


@dataclass(frozen=True)
class Study:
    """One study's results, read from its folder inside the results root: study.yaml and trials.parquet at once,
    the other tables when a page first asks for them (every path checked by `load_study`)."""

    root: Path
    directory: Path
    spec: dict[str, Any]
    trials: pd.DataFrame

    @cached_property
    def epochs(self) -> pd.DataFrame | None:
        return read_table(self.root, self.directory, EPOCHS_FILE)

    @cached_property
    def predictions(self) -> pd.DataFrame | None:
        return read_table(self.root, self.directory, PREDICTIONS_FILE)

    @cached_property
    def ensembles(self) -> pd.DataFrame | None:
        """`evaluate --ensemble K`: one row per ensemble, test columns."""
        return read_table(self.root, self.directory, ENSEMBLES_FILE)

    @cached_property
    def _audit(self) -> tuple[pd.DataFrame | None, Path | None]:
        """The study's data audit (see dashboard_logic.audit_locations) and where it was found."""
        for candidate in audit_locations(self.directory, self.root, self.spec):
            found = read_table(self.root, candidate.parent, candidate.name)
            if found is not None:
                return found, candidate
        return None, None

    @property
    def audit(self) -> pd.DataFrame | None:
        return self._audit[0]

    @property
    def audit_source(self) -> Path | None:
        return self._audit[1]

    @property
    def name(self) -> str:
        return self.directory.name

    def versions(self, *names: str) -> tuple[tuple[int, int] | None, ...]:
        """The versions of the study's files `names` (None where absent): a cache key that changes with them."""
        return tuple(version(p) if (p := self.directory / name).is_file() else None for name in names)

    @property
    def task(self) -> str:
        return task_of(self.spec)

    @property
    def metric(self) -> str:
        return str(self.spec.get("scheduler", {}).get("metric", "val_score"))

    @property
    def mode(self) -> str:
        return str(self.spec.get("scheduler", {}).get("mode", "max"))

    @property
    def score_column(self) -> str:
        return score_column(self.metric)

    @property
    def nothing_finished(self) -> str | None:
        """The one line said of a study whose every trial failed (how many, the commonest reason), else None."""
        trials = self.trials
        if trials.empty or "status" not in trials or (trials["status"] != FAILED).any():
            return None
        return no_trial_finished(trials)

    @property
    def classes(self) -> list[str]:
        return list(self.spec.get("data", {}).get("classes", []))

    def path(self, relative: str | Path) -> Path:
        """A file named in the study's tables, relative to the study folder; refused outside the root."""
        return inside(self.root, self.directory / relative)

    def test_row(self, model: str) -> pd.Series | None:
        """The test columns of a trial, or of an ensemble (ensembles.parquet), by its id; None if unknown."""
        for table, key in ((self.trials, "trial_id"), (self.ensembles, "ensemble")):
            if table is not None and key in table and (table[key] == model).any():
                return table[table[key] == model].iloc[0]
        return None

    def grey_image(self, relative: str) -> np.ndarray | None:
        """A PNG named in the study's tables as a grey uint8 array (None if it is not there or unreadable)."""
        try:
            return read_grey(self.path(relative))[0]
        except ImageError:
            return None


def task_of(spec: dict[str, Any]) -> str:
    """The task a study.yaml names ("?" if none)."""
    return str(spec.get("task", "?"))


def read_table(root: Path, directory: Path, name: str) -> pd.DataFrame | None:
    """A Parquet file in a folder inside the results root (cached until it changes), or None if absent."""
    path = inside(root, directory / name)
    return _parquet(str(path), version(path)) if path.is_file() else None


def _spec(root: Path, directory: Path) -> tuple[str, tuple[int, int] | None]:
    """Where a study's study.yaml is, checked to lie inside the root, and its version (None when absent)."""
    path = inside(root, directory / STUDY_FILE)
    return str(path), version(path) if path.is_file() else None


def _read_spec(path: str, found: tuple[int, int] | None) -> dict[str, Any]:
    return _yaml(path, found) if found else {}


def load_study(root: Path, directory: Path) -> Study:
    """One study folder: study.yaml and trials.parquet read (cached until they change), and every path of its
    other tables checked to lie inside the root, for the pages that read them."""
    for name in (EPOCHS_FILE, PREDICTIONS_FILE, ENSEMBLES_FILE):
        inside(root, directory / name)
    spec = _read_spec(*_spec(root, directory))
    for candidate in audit_locations(directory, root, spec):
        inside(root, candidate)
    trials = read_table(root, directory, TRIALS_FILE)
    return Study(root, inside(root, directory), spec, trials if trials is not None else pd.DataFrame())


def every_study_trials(root: Path) -> pd.DataFrame:
    """The trials of every readable study in the results root, with `study` and `task` columns. Only their
    trials.parquet and study.yaml are read; the table is kept until one of these files changes."""
    found = []
    for directory in studies(root)[0]:
        trials = inside(root, directory / TRIALS_FILE)
        found.append((directory.name, str(trials), version(trials), *_spec(root, directory)))
    return _every_study_trials(tuple(found))


@st.cache_data(show_spinner=False, max_entries=16)
def _every_study_trials(found: tuple[tuple[str, str, tuple[int, int], str, tuple[int, int] | None], ...]
                        ) -> pd.DataFrame:
    frames = [_parquet(trials, trials_version).assign(study=name, task=task_of(_read_spec(spec, spec_version)))
              for name, trials, trials_version, spec, spec_version in found]
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


@st.cache_data(show_spinner=False, max_entries=4096)
def _problem(directory: str, versions: tuple[tuple[int, int] | None, ...]) -> str | None:
    """Why a study folder cannot be read (one line naming the file and the field), None when it can."""
    try:
        StudyFolder(Path(directory)).check_readable()
    except RaysearchError as error:
        return str(error)
    return None


def _versions(directory: Path) -> tuple[tuple[int, int] | None, ...]:
    """The versions of the files `_problem` reads (None where absent), so its answer is cached until they
    change."""
    paths = (directory / STUDY_FILE, directory / TRIALS_FILE, directory / EPOCHS_FILE)
    return tuple(version(p) if p.is_file() else None for p in paths)


def studies(root: Path) -> tuple[list[Path], list[str]]:
    """The readable study folders in the results root, and one line for each folder refused: a link pointing out
    of it, or a study whose study.yaml or Parquet tables are malformed (every other study stays usable)."""
    found, refused = [], []
    for study in find_studies(root):
        try:
            directory = inside(root, study)
        except RaysearchError as error:
            refused.append(str(error))
            continue
        problem = _problem(str(directory), _versions(directory))
        if problem is None:
            found.append(directory)
        else:
            refused.append(f"unreadable study {directory.name}: {problem}")
    return found, refused


def current_study() -> Study:
    """The study picked in the sidebar (app.py puts it in the session state before any page runs)."""
    return st.session_state["study_data"]
