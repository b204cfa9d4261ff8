"""How fast the dashboard stays on a big results folder (docs/performance.md): 100 studies x 300 trials.

The studies are real ones, grown: one tiny study per task is run once with `raysearch run TASK --trials 2
--max-epochs 1 --image-size 32` (kept in `--seeds`, reused on the next call), then each generated study copies
one of them with pyarrow, schema and all (trials.parquet, epochs.parquet, predictions.parquet and its PNGs,
study.yaml), grown to `--trials` trials: parameters sampled from the study's own search space by Optuna's
random sampler, statuses mixed, metrics and epoch curves varied, test columns on the best three trials only.

Every dashboard page is then rendered with Streamlit's AppTest: once with every Streamlit cache emptied (cold)
and once more (warm, the rerun a click causes), plus the leaderboard comparing every study and the search
progress with every other study overlaid. Printed per page: cold s, warm s, warm/cold, and the Parquet reads
of each render, counted at pyarrow (`pq.read_table`, `pq.read_schema` for the footers the study list checks).
Last, one session walks through every page without emptying a cache: how many reads for how many files.

    python benchmarks/dashboard_scale.py [--studies 100] [--trials 300] [--out DIR] [--seeds DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from raysearch.core.columns import COMPLETED, EARLY_STOPPED, FAILED, PRUNED, is_count, score_column
from raysearch.core.layout import (
    EPOCHS_FILE,
    PREDICTIONS_DIR,
    PREDICTIONS_FILE,
    STUDY_FILE,
    TRIALS_FILE,
    find_studies,
)

DASHBOARD = Path(__file__).resolve().parents[1] / "dashboard"
TASKS = ("multitask", "segmentation", "classification", "regression")
STATUS_SHARES = {COMPLETED: 0.45, PRUNED: 0.4, EARLY_STOPPED: 0.1, FAILED: 0.05}
EVALUATED = 3          # trials with test columns and predictions, as `--keep-checkpoints top-3` evaluates
PAGES = {
    "Leaderboard": "views/leaderboard.py",
    "Learning curves": "views/curves.py",
    "Search progress": "views/progress.py",
    "Hyperparameters": "views/importance.py",
    "Size and latency": "views/tradeoffs.py",
    "Models on test images": "views/models.py",
    "Data audit": "views/audit.py",
}


class ParquetReads:
    """Counts the Parquet files pyarrow opens (whole tables, and footers only), per path, while active."""

    def __init__(self) -> None:
        self.tables: Counter[str] = Counter()
        self.footers: Counter[str] = Counter()

    def reset(self) -> None:
        self.tables.clear()
        self.footers.clear()

    @contextmanager
    def counting(self) -> Iterator[ParquetReads]:
        """pyarrow's own readers, each call counted by its path first."""
        read_table, read_schema = pq.read_table, pq.read_schema

        def table(source: Any, *args: Any, **kwargs: Any) -> pa.Table:
            self.tables[str(source)] += 1
            return read_table(source, *args, **kwargs)

        def schema(source: Any, *args: Any, **kwargs: Any) -> pa.Schema:
            self.footers[str(source)] += 1
            return read_schema(source, *args, **kwargs)

        pq.read_table, pq.read_schema = table, schema
        try:
            yield self
        finally:
            pq.read_table, pq.read_schema = read_table, read_schema


def seed_studies(folder: Path) -> dict[str, Path]:
    """One real finished study per task in `folder` (run once, with the built-in phantom data)."""
    found = {}
    for task in TASKS:
        study = folder / task
        if not (study / PREDICTIONS_FILE).is_file():
            shutil.rmtree(study, ignore_errors=True)
            environment = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_USAGE_STATS_ENABLED": "0"}
            print(f"running the {task} seed study into {study} ...", flush=True)
            subprocess.run([sys.executable, "-m", "raysearch", "run", task, "--trials", "2", "--max-epochs", "1",
                            "--image-size", "32", "--results", str(folder), "--name", task, "--quiet"],
                           check=True, env=environment, stdout=subprocess.DEVNULL)
        found[task] = study
    return found


def sampled_parameters(spec: dict[str, Any], trials: int, seed: int) -> pa.Table:
    """The `param.<name>` columns of `trials` configurations of the study's search space (study.yaml), sampled
    by Optuna's random sampler (conditional parameters only where their condition holds) and typed by the
    writer of trials.parquet."""
    import optuna
    from optuna.distributions import json_to_distribution

    from raysearch.search.results import TrialRecord, trials_table
    from raysearch.search.space import Parameter, SearchSpace

    described = spec["search_space"]
    parameters = tuple(Parameter(name, json_to_distribution(json.dumps(p["distribution"])),
                                 {k: tuple(v) for k, v in (p.get("when") or {}).items()})
                       for name, p in described["parameters"].items())
    space = SearchSpace(spec["task"], parameters, described.get("fixed") or {})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    records = []
    for number in range(trials):
        trial = study.ask()
        fixed = space.sample(trial)
        records.append(TrialRecord(str(number), {**fixed, **trial.params}))
    table = trials_table(records, space, score="score", mode="max", max_epochs=1)
    return table.select([name for name in table.column_names if name.startswith("param.")])


def _scaled(frame: pd.DataFrame, columns: list[str], factors: np.ndarray) -> None:
    """Multiply the numeric `columns` of `frame` by one factor per row (in place), whole numbers kept whole."""
    for column in columns:
        if pd.api.types.is_float_dtype(frame[column]):
            frame[column] = frame[column] * factors
        elif pd.api.types.is_integer_dtype(frame[column]):
            frame[column] = np.rint(frame[column] * factors).astype(frame[column].dtype)


def grow_trials(seed: pd.DataFrame, spec: dict[str, Any], trials: int, max_epochs: int, rng: np.random.Generator,
                directory: Path) -> pd.DataFrame:
    """`trials` rows shaped like the seed study's trials table."""
    frame = seed.iloc[rng.integers(0, len(seed), trials)].reset_index(drop=True)
    frame["trial_id"] = [f"{v:08x}" for v in rng.choice(2**32, trials, replace=False)]
    frame["number"] = np.arange(trials)
    frame["status"] = rng.choice(list(STATUS_SHARES), trials, p=list(STATUS_SHARES.values()))
    stopped = frame["status"].isin([PRUNED, EARLY_STOPPED])
    frame["epochs"] = np.where(stopped, rng.integers(1, max_epochs, trials), max_epochs)
    frame["best_epoch"] = np.maximum(1, frame["epochs"] - rng.integers(0, 3, trials))
    frame["checkpoint"] = [str(directory / "train" / t / "checkpoint_000000") for t in frame["trial_id"]]
    measured = [c for c in frame.columns if (c.startswith(("metric.", "test.", "test_clean.")) and not is_count(c))
                or c in ("wall_time_s", "params", "latency_ms")]
    _scaled(frame, measured, rng.uniform(0.5, 1.5, trials))
    failed = frame["status"] == FAILED
    frame.loc[failed, measured] = np.nan
    frame["error"] = frame["error"].astype(object).where(~failed, "RuntimeError: CUDA out of memory")
    score = score_column(spec["scheduler"]["metric"])
    best = frame[score].rank(ascending=spec["scheduler"]["mode"] == "min", method="first") <= EVALUATED
    tests = [c for c in frame.columns if c.startswith(("test.", "test_clean."))]
    frame.loc[~best, tests] = np.nan
    return frame


def grow_epochs(seed: pd.DataFrame, trials: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """One row per epoch each grown trial ran, shaped like the seed study's epochs table: each metric moves from
    half of the seed's value to about it over the trial's epochs."""
    ran = trials[trials["status"] != FAILED]
    counts = ran["epochs"].to_numpy()
    frame = seed.iloc[rng.integers(0, len(seed), int(counts.sum()))].reset_index(drop=True)
    frame["trial_id"] = np.repeat(ran["trial_id"].to_numpy(), counts)
    frame["epoch"] = np.concatenate([np.arange(1, n + 1) for n in counts])
    progress = frame["epoch"] / frame["epoch"].max()
    values = [c for c in frame.columns if c not in ("trial_id", "epoch")]
    _scaled(frame, values, (0.5 + 0.5 * progress * rng.uniform(0.8, 1.2, len(frame))).to_numpy())
    return frame


def write_like(frame: pd.DataFrame, schema: pa.Schema, path: Path, replaced: pa.Table | None = None) -> None:
    """`frame` as Parquet with the seed table's own schema, the columns of `replaced` taken from it instead."""
    kept = pa.schema([f for f in schema if replaced is None or f.name not in replaced.column_names])
    table = pa.Table.from_pandas(frame[kept.names], schema=kept, preserve_index=False)
    for name in [] if replaced is None else replaced.column_names:
        table = table.append_column(name, replaced[name])
    pq.write_table(table.select(schema.names), path)


def grow_study(seed: Path, directory: Path, trials: int, max_epochs: int, rng: np.random.Generator) -> None:
    """A study folder in `directory` grown from the seed study's files (see the module's docstring)."""
    directory.mkdir(parents=True)
    spec = yaml.safe_load((seed / STUDY_FILE).read_text()) | {"name": directory.name}
    (directory / STUDY_FILE).write_text(yaml.safe_dump(spec, sort_keys=False))
    seed_trials = pq.read_table(seed / TRIALS_FILE)
    grown = grow_trials(seed_trials.to_pandas(), spec, trials, max_epochs, rng, directory)
    write_like(grown, seed_trials.schema, directory / TRIALS_FILE,
               sampled_parameters(spec, trials, int(rng.integers(2**31))))
    seed_epochs = pq.read_table(seed / EPOCHS_FILE)
    write_like(grow_epochs(seed_epochs.to_pandas(), grown, rng), seed_epochs.schema, directory / EPOCHS_FILE)
    seed_predictions = pq.read_table(seed / PREDICTIONS_FILE)
    predictions = seed_predictions.to_pandas()
    evaluated = grown.dropna(subset=["test.images"])["trial_id"].tolist()
    mapping = dict(zip(predictions["trial_id"].unique(), evaluated, strict=False))
    predictions = predictions[predictions["trial_id"].isin(mapping)].assign(
        trial_id=lambda f: f["trial_id"].map(mapping), study=directory.name)
    write_like(predictions, seed_predictions.schema, directory / PREDICTIONS_FILE)
    shutil.copytree(seed / PREDICTIONS_DIR, directory / PREDICTIONS_DIR, copy_function=os.link)


def write_results(seeds: dict[str, Path], out: Path, studies: int, trials: int, max_epochs: int) -> list[str]:
    """`studies` grown studies in `out`, the tasks in turn; their names, sorted."""
    rng = np.random.default_rng(0)
    names = [f"study-{i:03d}-{TASKS[i % len(TASKS)]}" for i in range(studies)]
    for i, name in enumerate(names):
        grow_study(seeds[TASKS[i % len(TASKS)]], out / name, trials, max_epochs, rng)
    return names


def timed(run: Callable[[], Any], reads: ParquetReads) -> tuple[float, int, int]:
    """Seconds, whole-table reads and footer reads of one render."""
    reads.reset()
    started = time.perf_counter()
    run()
    return time.perf_counter() - started, sum(reads.tables.values()), sum(reads.footers.values())


def render_pages(out: Path, names: list[str]) -> list[tuple[str, tuple[float, int, int], tuple[float, int, int]]]:
    """Each page's cold and warm render (see the module's docstring), in one process."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    os.environ["RAYSEARCH_RESULTS"] = str(out)
    sys.path.insert(0, str(DASHBOARD))

    def opened() -> AppTest:
        return AppTest.from_file(str(DASHBOARD / "app.py"), default_timeout=900)

    def checked(app: AppTest) -> AppTest:
        app.run()
        if app.exception:
            raise SystemExit(f"the dashboard failed: {app.exception[0].message}")
        return app

    def setups() -> Iterator[tuple[str, Callable[[AppTest], Any]]]:
        for title, path in PAGES.items():
            yield title, lambda app, p=path: app.switch_page(p)
        yield "Leaderboard, every study compared", lambda app: (
            app.switch_page(PAGES["Leaderboard"]), checked(app), app.toggle(key="all-studies").set_value(True))
        yield f"Search progress, {len(names) - 1} studies overlaid", lambda app: (
            app.switch_page(PAGES["Search progress"]), checked(app),
            app.multiselect(key="progress-overlay").set_value(names[1:]))

    rows = []
    logging.disable(logging.WARNING)  # not Streamlit's notices of running outside `streamlit run`, each run
    with ParquetReads().counting() as reads:
        st.cache_data.clear()
        app = opened()
        first = timed(lambda: checked(app), reads)
        rows.append(("Open the dashboard (study list, leaderboard)", first, timed(lambda: checked(app), reads)))
        for title, setup in setups():
            app = checked(opened())
            setup(app)
            st.cache_data.clear()
            cold = timed(lambda a=app: checked(a), reads)
            rows.append((title, cold, timed(lambda a=app: checked(a), reads)))
        st.cache_data.clear()
        reads.reset()
        app = checked(opened())
        for path in PAGES.values():
            checked(app.switch_page(path))
            checked(app)
        logging.disable(logging.NOTSET)
        rows.append((f"Every page in one session ({len(set(reads.tables))} files)",
                     (float("nan"), sum(reads.tables.values()), sum(reads.footers.values())), (float("nan"), 0, 0)))
    return rows


def report(rows: list[tuple[str, tuple[float, int, int], tuple[float, int, int]]]) -> str:
    """The measured table, as Markdown."""
    lines = ["| page | cold s | warm s | warm/cold | Parquet reads cold (footers) | warm (footers) |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for title, (cold, cold_tables, cold_footers), (warm, warm_tables, warm_footers) in rows:
        measured = cold == cold  # the session walk-through counts reads only
        timing = f"{cold:.2f} | {warm:.2f} | {warm / cold:.2f}" if measured else "— | — | —"
        warm_reads = f"{warm_tables} ({warm_footers})" if measured else "—"
        lines.append(f"| {title} | {timing} | {cold_tables} ({cold_footers}) | {warm_reads} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=100)
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--max-epochs", type=int, default=8, help="epochs of a trial that ran to the end")
    parser.add_argument("--out", type=Path, help="results folder to write (default: a temporary one)")
    parser.add_argument("--seeds", type=Path, help="where the real tiny studies are run once and kept "
                                                   "(default: in the temporary folder)")
    arguments = parser.parse_args()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per study it creates
    with tempfile.TemporaryDirectory(prefix="dashboard-scale-") as scratch:
        seeds = seed_studies(arguments.seeds or Path(scratch) / "seeds")
        out = arguments.out or Path(scratch) / "results"
        names = sorted(p.name for p in find_studies(out)) if out.exists() else []
        if out.exists() and len(names) != arguments.studies:
            raise SystemExit(f"{out} exists with {len(names)} studies, not {arguments.studies}: give a new folder")
        if names:
            print(f"reusing the {len(names)} studies in {out}")
        else:
            started = time.perf_counter()
            names = write_results(seeds, out, arguments.studies, arguments.trials, arguments.max_epochs)
            print(f"{len(names)} studies x {arguments.trials} trials written to {out} in "
                  f"{time.perf_counter() - started:.0f} s", flush=True)
        print(f"load average {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)", flush=True)
        rows = render_pages(out, names)
        print(report(rows))
        print(f"load average {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
