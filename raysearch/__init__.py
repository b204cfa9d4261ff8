"""raysearch: distributed hyperparameter search for X-ray deep learning on Ray Tune + Optuna.

Importing the package is cheap: torch, ray and optuna are imported lazily by the modules that need them.
"""

from __future__ import annotations

__version__ = "0.1.0"
