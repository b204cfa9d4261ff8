"""Does the search pay? For one task and dataset, R repetitions (seeds) of four ways to spend the same
compute, in trial-epochs:

  (a) random      random search, every trial to --max-epochs (no early stopping)
  (b) random+asha random search, ASHA stops the weak trials
  (c) tpe+asha    the default: TPE (multivariate, grouped, constant liar) + ASHA
  (d) recipe      the published hand-tuned recipe (search_spaces/reference/recipes/<task>.yaml), trained as
                  its authors did: several seeds, the run with the best validation score kept

Each arm of each repetition is one or more real raysearch studies (Ray Tune, one local Ray instance, one
trial at a time, so that cumulative compute is well defined), stopped by --epoch-budget. Writes the
best-so-far validation score against cumulative trial-epochs of every run to Parquet, prints each arm's
test score of its final pick (mean ± sd over repetitions) and, as its last line, the median over
repetitions of the fraction of (a)'s compute that (c) needed to reach (a)'s final best:
`compute to reach random's best: <fraction>` (inf when (c) never reached it within the budget).

Neither the searchers nor ASHA know the budget (it only stops sampling), so the first b trial-epochs of a
run are the run a budget of b would have made: before the last line the script also prints that fraction
for smaller budgets, for (b) and (c), which shows the budget from which each pays. `--report` prints all of it again
from saved Parquet files without training anything. `--arms` runs some arms only and `--startup-trials N` gives
(c) N random start-up trials (its curves are then labelled `tpe+asha-sN`), so that a variant can be run later and
reported beside the saved arms of the same repetitions.

    python benchmarks/search_efficiency.py [--task classification] [--data DIR] [--repetitions 3]
        [--budget 48] [--max-epochs 8] [--recipe-seeds 3] [--image-size 32] [--arms ARM...] [--startup-trials N]
    python benchmarks/search_efficiency.py --report benchmarks/results/search_efficiency.parquet
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from raysearch.core.bundled import search_spaces_dir
from raysearch.dashboard.logic import compute_to_reach, search_progress
from raysearch.data.phantom import PhantomSpec, write_phantom
from raysearch.study.run import run_study
from raysearch.study.spec import StudySpec

ARMS = {"random": ("random", "none"), "random+asha": ("random", "asha"), "tpe+asha": ("tpe", "asha")}
DEFAULT_ARM = "tpe+asha"  # raysearch's default search: the arm of the last line
RECIPE = "recipe"
ORDER = (RECIPE, *ARMS)   # the recipe first: the fixed configuration fails fastest if anything is amiss


def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="classification")
    parser.add_argument("--data", help="dataset (default: a phantom set, 480/120/120 images)")
    parser.add_argument("--space", help="search space of arms a-c (default: search_spaces/TASK.yaml)")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--first-repetition", type=int, default=0,
                        help="seed of the first repetition: runs of one benchmark can be split over processes")
    parser.add_argument("--budget", type=int, default=48, help="trial-epochs per arm and repetition")
    parser.add_argument("--max-epochs", type=int, default=8, help="epochs per trial at most, arms a-c")
    parser.add_argument("--recipe-seeds", type=int, default=3,
                        help="seeds the recipe is trained with; each gets budget / seeds epochs")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--arms", nargs="+", choices=ORDER, default=list(ORDER),
                        help="the arms to run (default: all; --report combines runs of different arms)")
    parser.add_argument("--startup-trials", type=int, metavar="N",
                        help=f"TPE's random start-up trials in {DEFAULT_ARM} (default: raysearch's); the arm is then "
                             f"labelled {DEFAULT_ARM}-sN")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/search_efficiency.parquet"))
    parser.add_argument("--workdir", type=Path, help="where the studies go (default: a temporary folder)")
    parser.add_argument("--report", type=Path, nargs="+", metavar="PARQUET",
                        help="only print the figures of saved curves (several files: one benchmark split up)")
    return parser.parse_args(argv)


def study(args: argparse.Namespace, root: Path, name: str, **spec: object) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run one study quietly; its trials and epochs tables."""
    settings = {"task": args.task, "data": args.data, "results": str(root), "name": name,
                "image_size": args.image_size, "concurrency": 1, **spec}
    with contextlib.redirect_stdout(io.StringIO()):
        outcome = run_study(StudySpec(**settings), progress=False, out=io.StringIO())
    return (pq.read_table(outcome.directory / "trials.parquet").to_pandas(),   # with the test.* columns
            pq.read_table(outcome.directory / "epochs.parquet").to_pandas())


def final_pick(trials: pd.DataFrame, metric: str) -> pd.Series:
    """The trial a study picks: best validation score (its test score was measured by `raysearch run`)."""
    return trials.sort_values(f"metric.{metric}.best", ascending=False).iloc[0]


def arm_label(arm: str, startup_trials: int | None) -> str:
    """The name an arm's curves carry: the arm, or for TPE with its own start-up trials `<arm>-s<N>`."""
    return f"{arm}-s{startup_trials}" if startup_trials is not None and ARMS[arm][0] == "tpe" else arm


def search_arm(args: argparse.Namespace, root: Path, arm: str, repetition: int) -> tuple[pd.DataFrame, float]:
    """One search arm: its best-so-far curve and the test score of its pick."""
    searcher, scheduler = ARMS[arm]
    startup = args.startup_trials if searcher == "tpe" else None
    trials, epochs = study(args, root, f"{arm_label(arm, startup).replace('+', '-')}-{repetition}", space=args.space,
                           searcher=searcher, startup_trials=startup, scheduler=scheduler, seed=repetition,
                           max_epochs=args.max_epochs, trials=args.budget, epoch_budget=args.budget)
    return search_progress(trials, epochs, "val_score", "max"), float(final_pick(trials, "val_score")["test.score"])


def recipe_arm(args: argparse.Namespace, root: Path, repetition: int) -> tuple[pd.DataFrame, float]:
    """The recipe trained with `--recipe-seeds` seeds in turn, the best validation run kept."""
    recipe = search_spaces_dir() / "reference" / "recipes" / f"{args.task}.yaml"
    curves, picks = [], []
    for run in range(args.recipe_seeds):
        trials, epochs = study(args, root, f"recipe-{repetition}-{run}", space=str(recipe), trials=1,
                               seed=1000 * repetition + run, max_epochs=args.budget // args.recipe_seeds)
        curves.append(search_progress(trials, epochs, "val_score", "max").assign(trial_id=f"seed-{run}"))
        picks.append(final_pick(trials, "val_score"))
    curve = pd.concat(curves, ignore_index=True)
    curve["trial_epochs"] = range(1, len(curve) + 1)
    curve["best_so_far"] = curve["value"].cummax().ffill()
    best = max(picks, key=lambda row: row["metric.val_score.best"])
    return curve, float(best["test.score"])


def write_curves(curves: list[pd.DataFrame], path: Path) -> pd.DataFrame:
    """Every run's best-so-far curve so far, as one Parquet table (arm, repetition, trial_epochs, ...)."""
    table = pd.concat(curves, ignore_index=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(path, index=False)
    return table


def fraction_to_reach_random(table: pd.DataFrame, budget: int, arm: str = DEFAULT_ARM) -> list[float]:
    """Per repetition, the share of `budget` trial-epochs that `arm` needed to reach the best that random search
    found within them (inf when it never did), both runs cut at `budget`."""
    fractions = []
    for _, runs in table.groupby("repetition"):
        within = runs[runs["trial_epochs"] <= budget]
        random, searched = within[within["arm"] == "random"], within[within["arm"] == arm]
        needed = compute_to_reach(searched, random["best_so_far"].iloc[-1], "max")
        fractions.append(float("inf") if needed is None else needed / random["trial_epochs"].max())
    return fractions


def report(table: pd.DataFrame) -> None:
    """Each arm's test score of its final pick, the fraction at smaller budgets for every searched arm, and the
    last line (for DEFAULT_ARM), over the repetitions in which every arm of `table` finished."""
    present = set(table["arm"])
    arms = [arm for arm in ORDER if arm in present] + sorted(present - set(ORDER))
    per_repetition = table.groupby("repetition")["arm"].agg(set)
    table = table[table["repetition"].isin(per_repetition[per_repetition == set(arms)].index)]
    print(f"  {table['repetition'].nunique()} repetitions with every arm finished")
    picks = table.groupby(["arm", "repetition"])["test_score"].first()
    for arm in arms:
        scores = picks[arm].tolist()
        spread = statistics.stdev(scores) if len(scores) > 1 else 0.0
        print(f"  {arm:14s} test score of its pick: {statistics.mean(scores):.4f} ± {spread:.4f} "
              f"(best val {table[table['arm'] == arm].groupby('repetition')['best_so_far'].last().mean():.4f})")
    budget = int(table[table["arm"] == "random"].groupby("repetition")["trial_epochs"].max().min())
    searched = [arm for arm in arms if arm not in ("random", RECIPE)]
    for share in (4, 2, 4 / 3, 1):
        smaller = round(budget / share)
        for arm in searched:
            fractions = fraction_to_reach_random(table, smaller, arm)
            print(f"  at a budget of {smaller:3d} trial-epochs: {arm} needs {statistics.median(fractions):.2f} "
                  f"of random's compute ({', '.join(f'{f:.2f}' for f in fractions)})")
    if DEFAULT_ARM in arms:
        fractions = fraction_to_reach_random(table, budget)
        print(f"  fraction per repetition: {', '.join(f'{f:.2f}' for f in fractions)}")
        print(f"compute to reach random's best: {statistics.median(fractions):.2f}")


def main(argv: list[str] | None = None) -> None:
    import platform

    import ray

    args = arguments(argv)
    if args.report:
        report(pd.concat([pq.read_table(path).to_pandas() for path in args.report], ignore_index=True))
        return
    root = args.workdir or Path(tempfile.mkdtemp(prefix="search-efficiency-"))
    if args.data is None:
        args.data = str(write_phantom(root / "phantom", PhantomSpec(train=480, val=120, test=120), progress=False))
    started = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), log_to_driver=False, configure_logging=False, include_dashboard=False)
    curves = []
    try:
        for repetition in range(args.first_repetition, args.first_repetition + args.repetitions):
            for arm in (arm for arm in ORDER if arm in args.arms):
                curve, test = (recipe_arm(args, root, repetition) if arm == RECIPE
                               else search_arm(args, root, arm, repetition))
                label = RECIPE if arm == RECIPE else arm_label(arm, args.startup_trials)
                curves.append(curve.assign(arm=label, repetition=repetition, test_score=test))
                write_curves(curves, args.out)   # after every run, so that a stopped benchmark keeps its runs
                print(f"repetition {repetition} {label}: {curve['trial_epochs'].max()} trial-epochs, "
                      f"best val {curve['best_so_far'].iloc[-1]:.4f}, test {test:.4f}", file=sys.stderr, flush=True)
    finally:
        ray.shutdown()
    print(f"{args.task} on {args.data}, {args.image_size} px, {args.repetitions} repetitions of "
          f"{args.budget} trial-epochs per arm (max {args.max_epochs} epochs per trial; recipe: "
          f"{args.recipe_seeds} seeds x {args.budget // args.recipe_seeds} epochs); {platform.machine()} "
          f"{os.cpu_count()} CPUs, {time.perf_counter() - started:.0f} s. Curves: {args.out}")
    report(write_curves(curves, args.out))


if __name__ == "__main__":
    main()
