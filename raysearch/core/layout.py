"""The layout of a results folder: every file and folder name of a study, the `study.yaml` schema, where a
trial's checkpoints are, and how trials rank. Every other module asks this one.

```
RESULTS/                      results root (`--results`)
  cache/                      preprocessed arrays shared by the studies of this root
  cache/images/KEY.parquet    per dataset: each image's digests, perceptual hash, size (raysearch.data.imageindex)
  audit/DATASET/audit.parquet `raysearch data audit` output
  STUDY/
    study.yaml                the resolved study (STUDY_KEYS)
    trials.parquet            one row per trial (written when the search ends)
    epochs.parquet            one row per trial per epoch
    predictions.parquet       test-split predictions of the evaluated trials; PNGs under predictions/
    ensembles.parquet         test figures of `evaluate --ensemble K`
    data_issues.parquet       images and labels left out, and why
    driver.lock               the lock of the driver running the study (raysearch.study.lock)
    splits.parquet            each image's published split, its split under --splits, its source group
    optuna.db                 the Optuna study (SQLite)
    model/                    the best model exported (config.yaml, weights.pt, model.onnx, model.ts)
    train/TRIAL/checkpoint_NNNNNN/   a trial's latest checkpoint (state.pt, best_model.pt, history.json)
    train/TRIAL/stopped_by_scheduler a marker: the scheduler stopped the trial (it finished, pruned)
    ray/STUDY/                Ray Tune's experiment state (what `raysearch resume` restores); per trial its logs
                              (result.json, progress.csv, TensorBoard events) and checkpoint_N/best_model.pt,
                              the trial's best weights as a Tune checkpoint
    mlflow/, wandb/           `--log mlflow` (mlflow.db, artifacts/) and `--log wandb` runs
```

Only the standard library and PyYAML are imported here (pandas when ranking), so the dashboard and
`import raysearch` stay light.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from raysearch.core.columns import FAILED, no_trial_finished, rank_trials, score_column
from raysearch.core.files import inside
from raysearch.errors import ConfigError, DataError

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

DEFAULT_RESULTS = "raysearch-results"
CACHE_DIR, AUDIT_DIR, IMAGE_INDEX_DIR = "cache", "audit", "images"
STUDY_FILE, TRIALS_FILE, EPOCHS_FILE = "study.yaml", "trials.parquet", "epochs.parquet"
PREDICTIONS_FILE, PREDICTIONS_DIR = "predictions.parquet", "predictions"
ENSEMBLES_FILE = "ensembles.parquet"  # the test figures of `evaluate --ensemble K`, one row per ensemble
DATA_ISSUES_FILE, AUDIT_FILE, OPTUNA_FILE = "data_issues.parquet", "audit.parquet", "optuna.db"
LOCK_FILE = "driver.lock"
SPLITS_FILE = "splits.parquet"
MODEL_DIR, CONFIG_FILE, WEIGHTS_FILE = "model", "config.yaml", "weights.pt"
ONNX_FILE, TORCHSCRIPT_FILE = "model.onnx", "model.torchscript.pt"
TRAIN_DIR, RAY_DIR, SIGNED_DIR = "train", "ray", "signed"
MLFLOW_DIR, MLFLOW_DB, MLFLOW_ARTIFACTS, WANDB_DIR = "mlflow", "mlflow.db", "artifacts", "wandb"
STATE_FILE, BEST_FILE, HISTORY_FILE = "state.pt", "best_model.pt", "history.json"
WEIGHTS_KEY = "model"  # best_model.pt, weights.pt and state.pt hold the network's state dict under this key
STOPPED_MARKER = "stopped_by_scheduler"   # in train/TRIAL/ once the scheduler stopped the trial
EPOCH_STAGING_PREFIX = ".epoch-"  # in train/TRIAL/: an epoch's checkpoint being written (gone once reported)
CHECKPOINT_PREFIX = "checkpoint_"
CHECKPOINT_GLOB = CHECKPOINT_PREFIX + "[0-9]" * 6
_CHECKPOINT_NUMBER = re.compile(rf"{CHECKPOINT_PREFIX}(\d+)$")

MAX_NAME = 100
STUDY_NAME = re.compile(rf"[A-Za-z0-9_-][A-Za-z0-9._-]{{0,{MAX_NAME - 1}}}")  # one portable folder name, not hidden
STUDY_KEYS = ("name", "task", "spec", "data", "search_space", "defaults", "scheduler", "searcher", "budget",
              "resources", "tracking", "seed", "versions")
# The type of each study.yaml key that readers use, and of the fields inside the mappings they read.
STUDY_TYPES: dict[str, type] = {"name": str, "task": str, "spec": dict, "data": dict, "search_space": dict,
                                "defaults": dict, "scheduler": dict, "searcher": dict, "budget": dict}
SCHEDULER_FIELDS: dict[str, type] = {"metric": str, "mode": str}
# The columns each table's readers need (trials.parquet, epochs.parquet).
TABLE_COLUMNS = {TRIALS_FILE: ("trial_id", "status"), EPOCHS_FILE: ("trial_id", "epoch")}


YAML_LOADER = yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader  # libyaml's parser: ~20x faster


def parse_yaml(text: str) -> Any:
    """YAML text as plain Python values, read safely (no tag builds an object), with libyaml's parser where
    PyYAML has it: a dashboard reads a study.yaml of hundreds of lines per study."""
    return yaml.load(text, Loader=YAML_LOADER)


def check_study(study: Any, path: Path) -> dict[str, Any]:
    """`study` (study.yaml as parsed) when it has every key, each of its type; else a DataError naming `path` and
    the field."""
    missing = [key for key in STUDY_KEYS if not isinstance(study, dict) or key not in study]
    if missing:
        raise DataError(f"{path}: missing {', '.join(missing)} (not written by this raysearch)")
    fields = [(key, study[key], kind) for key, kind in STUDY_TYPES.items()]
    if isinstance(study["scheduler"], dict):
        fields += [(f"scheduler.{key}", study["scheduler"].get(key), kind) for key, kind in SCHEDULER_FIELDS.items()]
    for field, value, kind in fields:
        if not isinstance(value, kind):
            raise DataError(f"{path}: {field}: expected a {'mapping' if kind is dict else kind.__name__}, got "
                            f"{type(value).__name__} {str(value)[:40]!r}")
    return study


def _unreadable(path: Path, error: Exception) -> DataError:
    return DataError(f"{path}: not a readable Parquet file ({str(error).splitlines()[0][:120]})")


def _require_columns(path: Path, names: Iterable[str]) -> None:
    absent = [c for c in TABLE_COLUMNS.get(Path(path).name, ()) if c not in names]
    if absent:
        raise DataError(f"{path}: column {absent[0]}: missing (not written by this raysearch)")


def read_parquet(path: Path) -> pa.Table:
    """A study's Parquet file; DataError naming the file when it is not readable Parquet, or the column when one
    its readers need (TABLE_COLUMNS) is missing."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as error:
        raise _unreadable(path, error) from None
    _require_columns(path, table.column_names)
    return table


def check_table(path: Path) -> None:
    """DataError as `read_parquet` gives, reading the file's footer only."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
    except (pa.ArrowException, OSError) as error:
        raise _unreadable(path, error) from None
    _require_columns(path, names)


def check_study_name(name: str, where: str) -> str:
    """`name` if it is one portable folder name (STUDY_NAME: no separator, no `..`, not hidden, at most MAX_NAME
    characters), else a one-line ConfigError naming `where` (the flag or file field it came from)."""
    if not isinstance(name, str) or not STUDY_NAME.fullmatch(name):
        shown = repr(name) if len(str(name)) <= 60 else f"{str(name)[:40]!r}... ({len(str(name))} characters)"
        raise ConfigError(f"{where}: {shown} is not a study name: one folder name of at most {MAX_NAME} characters "
                          "from A-Z a-z 0-9 . _ -, not starting with '.'")
    return name


def image_index_file(results: Path | str, dataset_root: Path | str) -> Path:
    """The image index (`raysearch.data.imageindex`) of the dataset at `dataset_root`, in a results root."""
    key = hashlib.blake2b(str(Path(dataset_root).resolve()).encode(), digest_size=8).hexdigest()
    return Path(results) / CACHE_DIR / IMAGE_INDEX_DIR / f"{key}.parquet"


def mask_index_file(index_file: Path) -> Path:
    """Where the facts of a dataset's masks are kept, beside its image index (`raysearch.data.imageindex`)."""
    return Path(index_file).with_suffix(".masks.parquet")


def near_pairs_file(index_file: Path) -> Path:
    """Where the near-duplicate pairs of an image index's hashes are kept (`raysearch.data.sources`)."""
    return Path(index_file).with_suffix(".pairs.npz")


def experiment_dir(study_dir: Path, name: str) -> Path:
    """Where Ray Tune keeps a study's experiment state, searcher state and trial folders."""
    return Path(study_dir) / RAY_DIR / name


def study_dir_of(experiment: Path) -> Path:
    """The study folder of an experiment folder (the inverse of `experiment_dir`)."""
    return Path(experiment).parent.parent


def checkpoint_name(epoch: int) -> str:
    """The folder name of the checkpoint taken after `epoch` (1-based): checkpoint_000000 for the first."""
    return f"{CHECKPOINT_PREFIX}{epoch - 1:06d}"


def latest_checkpoint(directory: Path) -> Path | None:
    """The newest complete checkpoint folder in `directory` (a `.checkpoint_*` folder is one being written)."""
    found = sorted(directory.glob(CHECKPOINT_GLOB)) if directory.is_dir() else []
    return found[-1] if found else None


def read_history(folder: Path | None) -> list[dict[str, Any]]:
    """The metrics of every epoch up to the checkpoint in `folder` ([] for none)."""
    path = None if folder is None else folder / HISTORY_FILE
    return json.loads(path.read_text()) if path is not None and path.is_file() else []


def describe_study(**fields: Any) -> dict[str, Any]:
    """The `study.yaml` mapping, its keys in STUDY_KEYS order (a missing or unknown key is a bug: ValueError)."""
    if set(fields) != set(STUDY_KEYS):
        raise ValueError(f"study.yaml needs exactly {STUDY_KEYS}, got {sorted(fields)}")
    return {key: fields[key] for key in STUDY_KEYS}


def is_study(directory: Path) -> bool:
    """Whether `directory` holds a finished study (its trials.parquet)."""
    return (Path(directory) / TRIALS_FILE).is_file()


def find_studies(results: Path) -> list[Path]:
    """The finished study folders in a results folder, or the folder itself if it is one."""
    results = Path(results)
    if is_study(results):
        return [results]
    return sorted(p for p in results.iterdir() if is_study(p)) if results.is_dir() else []


@dataclass(frozen=True)
class StudyFolder:
    """One study's folder: where each of its files is, its description, its ranked trials."""

    directory: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "directory", Path(self.directory))

    @property
    def name(self) -> str:
        return self.directory.name

    @property
    def results(self) -> Path:
        """The results root the study lies in."""
        return self.directory.parent

    @property
    def cache_root(self) -> Path:
        """The preprocessed-array caches, shared by the studies of one results root."""
        return self.results / CACHE_DIR

    def image_index_file(self, dataset_root: Path | str) -> Path:
        """The image index of a dataset in this study's results root."""
        return image_index_file(self.results, dataset_root)

    @property
    def study_file(self) -> Path:
        return self.directory / STUDY_FILE

    @property
    def trials_file(self) -> Path:
        return self.directory / TRIALS_FILE

    @property
    def epochs_file(self) -> Path:
        return self.directory / EPOCHS_FILE

    @property
    def predictions_file(self) -> Path:
        return self.directory / PREDICTIONS_FILE

    @property
    def ensembles_file(self) -> Path:
        return self.directory / ENSEMBLES_FILE

    @property
    def predictions_dir(self) -> Path:
        return self.directory / PREDICTIONS_DIR

    @property
    def data_issues_file(self) -> Path:
        return self.directory / DATA_ISSUES_FILE

    @property
    def splits_file(self) -> Path:
        return self.directory / SPLITS_FILE

    @property
    def optuna_file(self) -> Path:
        return self.directory / OPTUNA_FILE

    @property
    def model_dir(self) -> Path:
        return self.directory / MODEL_DIR

    @property
    def train_dir(self) -> Path:
        """Where each trial keeps its checkpoints, one folder per trial id."""
        return self.directory / TRAIN_DIR

    @property
    def signed_dir(self) -> Path:
        """Signed copies of Ray Tune's state (see raysearch.search.signing)."""
        return self.directory / SIGNED_DIR


    def inside(self, relative: str | Path) -> Path:
        """A path named relative to the study folder, resolved; DataError when it would lie outside it (a crafted
        trial id or file name in a received study): every writer of the folder asks this."""
        path = self.directory / relative
        inside(self.directory, path)
        return path

    def trial_dir(self, trial_id: str) -> Path:
        return self.inside(Path(TRAIN_DIR) / trial_id)

    def best_checkpoint(self, trial_id: str) -> Path | None:
        """`best_model.pt` in a trial's newest checkpoint (Train run folder, or a Tune trial folder), or None."""
        found = [*self.directory.glob(f"{RAY_DIR}/*/{trial_id}/{CHECKPOINT_GLOB}/{BEST_FILE}"),
                 *self.trial_dir(trial_id).glob(f"{CHECKPOINT_GLOB}/{BEST_FILE}")]
        numbered = [(int(m.group(1)), p) for p in found if (m := _CHECKPOINT_NUMBER.search(p.parent.name))]
        return max(numbered)[1] if numbered else None

    def read_study(self) -> dict[str, Any]:
        """The study's resolved description (study.yaml); DataError if absent or missing a key."""
        if not self.study_file.is_file():
            raise DataError(f"{self.directory}: not a study folder (no {STUDY_FILE})")
        try:
            study = parse_yaml(self.study_file.read_text())
        except yaml.YAMLError as error:
            raise DataError(f"{self.study_file}: not valid YAML ({str(error).splitlines()[0]})") from None
        except (OSError, UnicodeDecodeError) as error:
            raise DataError(f"{self.study_file}: cannot read ({error})") from None
        return check_study(study, self.study_file)

    def check_readable(self) -> None:
        """DataError naming the file and the field when study.yaml or one of the study's Parquet tables is malformed
        (the tables' footers only are read)."""
        self.read_study()
        for path in (self.trials_file, self.epochs_file):
            if path.is_file():
                check_table(path)

    def trial_row(self, trial_id: str) -> dict[str, Any]:
        """One trial's trials.parquet row, as Python values (None where a conditional parameter was unused)."""
        if not self.trials_file.is_file():
            raise DataError(f"{self.directory}: the study has no {TRIALS_FILE} yet (still running or interrupted)")
        rows = {row["trial_id"]: row for row in read_parquet(self.trials_file).to_pylist()}
        if trial_id not in rows:
            raise DataError(f"{self.directory}: no trial {trial_id} (trials: {', '.join(sorted(rows))})")
        return rows[trial_id]

    def ranked_trials(self, study: Mapping[str, Any] | None = None) -> pd.DataFrame:
        """The trials that did not fail, best first by the study's metric (a `rank` column added)."""
        study = self.read_study() if study is None else study
        if not self.trials_file.is_file():
            raise DataError(f"{self.directory}: the study has no {TRIALS_FILE} yet (still running or interrupted)")
        frame = read_parquet(self.trials_file).to_pandas()
        metric, mode = study["scheduler"]["metric"], study["scheduler"]["mode"]
        return rank_trials(frame[frame["status"] != FAILED], score_column(metric), mode)

    def require_finished_trial(self, doing: str, study: Mapping[str, Any] | None = None) -> None:
        """DataError in one line (no trial finished, the commonest failure reason) when the study has no trial to
        rank, so `doing` (evaluate, export) is impossible."""
        import pandas as pd

        if self.ranked_trials(study).empty:
            said = no_trial_finished(pd.read_parquet(self.trials_file))
            raise DataError(f"{self.directory}: {said}; nothing to {doing}")
