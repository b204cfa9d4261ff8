"""The names of the searchers and schedulers a study can use (a light module: the CLI imports it)."""

from __future__ import annotations

SEARCHERS = ("tpe", "random", "qmc")   # Optuna samplers, see raysearch.search.searcher
SCHEDULERS = ("asha", "hyperband", "median", "none")   # Ray Tune schedulers, see raysearch.search.scheduler
