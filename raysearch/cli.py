"""`raysearch` command line: a thin layer over raysearch.api. Errors are one line and exit code 2."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from raysearch.errors import RaysearchError

EXAMPLES = """examples:
  raysearch run multitask                                 # built-in phantom X-rays, local Ray
  raysearch run classification --data ../shared/datasets/bone-fracture-yolo --trials 20
  raysearch run multitask --address ray://head:10001 --workers-per-trial 2 --gpus-per-worker 0.5
  raysearch data phantom ./phantom --train 600
"""


def _add_run(commands: argparse._SubParsersAction) -> None:
    run = commands.add_parser("run", help="run a hyperparameter search study", epilog=EXAMPLES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("task", help="classification, regression, multitask or segmentation")
    run.add_argument("--data", help="dataset folder or data.yaml (default: built-in phantom X-rays)")
    run.add_argument("--space", help="search-space YAML (default: search_spaces/TASK.yaml)")
    run.add_argument("--name", help="study name (default: derived from task, space and settings)")
    run.add_argument("--results", default="raysearch-results", help="results root folder (default: %(default)s)")
    run.add_argument("--trials", type=int, default=8, help="number of trials (default: %(default)s)")
    run.add_argument("--max-epochs", type=int, default=6, help="epochs per trial at most (default: %(default)s)")
    run.add_argument("--image-size", type=int, default=64, help="input size in pixels (default: %(default)s)")
    run.add_argument("--workers-per-trial", type=int, default=1, help="Ray Train workers per trial (DDP)")
    run.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs per worker (default: %(default)s)")
    run.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per worker; fractions share a GPU")
    run.add_argument("--concurrency", type=int, help="trials at once (default and cap: what the cluster fits)")
    run.add_argument("--seed", type=int, default=0, help="seed of the sampler and of training (default: 0)")
    run.add_argument("--address", default=os.environ.get("RAY_ADDRESS") or None,
                     help="Ray cluster to join (default: $RAY_ADDRESS, else start a local one)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_data(commands: argparse._SubParsersAction) -> None:
    data = commands.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    phantom = data.add_parser("phantom", help="write the built-in phantom X-ray dataset")
    phantom.add_argument("out", type=Path, help="output folder")
    phantom.add_argument("--train", type=int, default=480)
    phantom.add_argument("--val", type=int, default=120)
    phantom.add_argument("--test", type=int, default=120)
    phantom.add_argument("--image-size", type=int, default=128)
    phantom.add_argument("--seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (built on demand, never at import time)."""
    parser = argparse.ArgumentParser(prog="raysearch", description="Distributed hyperparameter search for X-ray "
                                     "models on Ray Tune + Optuna.", epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    _add_run(commands)
    _add_data(commands)
    return parser


def _run(args: argparse.Namespace) -> None:
    from raysearch.api import run_study
    from raysearch.study import StudySpec

    spec = StudySpec(
        task=args.task, data=args.data, space=args.space, name=args.name, results=args.results, trials=args.trials,
        max_epochs=args.max_epochs, image_size=args.image_size, workers_per_trial=args.workers_per_trial,
        cpus_per_worker=args.cpus_per_worker, gpus_per_worker=args.gpus_per_worker, concurrency=args.concurrency,
        seed=args.seed, address=args.address,
    )
    run_study(spec, progress=not args.quiet)


def _data(args: argparse.Namespace) -> None:
    from raysearch.data.phantom import PhantomSpec, write_phantom

    spec = PhantomSpec(train=args.train, val=args.val, test=args.test, image_size=args.image_size, seed=args.seed)
    print(write_phantom(args.out, spec))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `raysearch` console script."""
    args = build_parser().parse_args(argv)
    handlers = {"run": _run, "data": _data}
    try:
        handlers[args.command](args)
    except RaysearchError as error:
        print(f"raysearch: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("raysearch: interrupted", file=sys.stderr)
        return 130
    return 0
