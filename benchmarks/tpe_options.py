"""Which TPESampler options suit raysearch's spaces? A cheap check without training: Optuna samples
search_spaces/TASK.yaml (conditional parameters and all, define-by-run as raysearch does) and a synthetic
objective with interactions scores each configuration: the best learning rate depends on the optimiser,
the VGG's depth and width interact, and several parameters do nothing. Trials are asked 4 at a time and
told together, as 4 concurrent Ray Tune trials would be. Prints, per sampler configuration, the median
(over seeds) best score after N trials, and its ratio to independent TPE's regret.

    python benchmarks/tpe_options.py [--task classification] [--trials 40] [--seeds 20] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import math
import statistics
import warnings
from typing import Any

import optuna

from raysearch.core.bundled import search_spaces_dir
from raysearch.search.space import load_space

BEST_LR = {"adam": 1e-3, "adamw": 2e-3, "sgd": 2e-2}
CONFIGURATIONS = {
    "independent": {"multivariate": False, "constant_liar": False},
    "multivariate+group": {"multivariate": True, "group": True, "constant_liar": False},
    "multivariate+group+constant_liar": {"multivariate": True, "group": True, "constant_liar": True},
    "constant_liar only": {"multivariate": False, "constant_liar": True},
}


def objective(params: dict[str, Any]) -> float:
    """A score in [0, 1] with interactions (optimum 1.0)."""
    lr = params.get("lr", 1e-3)
    optimizer = params.get("optimizer", "adam")
    score = math.exp(-(math.log10(lr) - math.log10(BEST_LR[optimizer])) ** 2)
    if params.get("model") == "vgg":
        depth, width = params.get("conv_layers", 4), params.get("width", 16)
        score *= math.exp(-((depth - 6) / 2) ** 2 - ((math.log2(width) - 5) - (depth - 6) / 2) ** 2)
    else:
        score *= 0.8
    score *= 1 - abs(params.get("dropout", 0.2) - 0.3)
    return score


def best_after(space: Any, settings: dict[str, Any], seed: int, trials: int, concurrency: int) -> float:
    """The best objective value a TPE study with `settings` reaches in `trials` trials."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=10, **settings))
        while len(study.trials) < trials:
            asked = [study.ask() for _ in range(min(concurrency, trials - len(study.trials)))]
            for trial in asked:
                values: dict[str, Any] = {}
                for parameter in space.parameters:
                    if parameter.active(values):
                        values[parameter.name] = parameter.suggest(trial)
                trial.set_user_attr("params", values)
            for trial in asked:
                study.tell(trial, objective(trial.user_attrs["params"]))
    return study.best_value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="classification")
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    space = load_space(search_spaces_dir() / f"{args.task}.yaml")
    medians = {name: statistics.median(best_after(space, settings, seed, args.trials, args.concurrency)
                                       for seed in range(args.seeds))
               for name, settings in CONFIGURATIONS.items()}
    baseline = 1 - medians["independent"]
    print(f"{args.task} space, {args.trials} trials asked {args.concurrency} at a time, {args.seeds} seeds; "
          "median best score (optimum 1.0) and regret relative to independent TPE:")
    for name, value in medians.items():
        print(f"  {name:34s} {value:.4f}   regret ratio {(1 - value) / baseline:.2f}")


if __name__ == "__main__":
    main()
