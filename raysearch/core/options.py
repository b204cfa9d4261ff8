"""Allowed values and defaults of command options whose code is heavy (torch), kept here so that the command line
is built without importing it."""

from __future__ import annotations

from raysearch.errors import ConfigError

NO_TTA, FLIP_TTA = TTA_MODES = ("none", "flip")  # test-time augmentation of an ensemble: none, or image and mirror
RESAMPLES = 1000  # bootstrap resamples of the test images behind each 95 % interval


def check_tta(tta: str) -> None:
    """ConfigError naming --tta unless `tta` is one of TTA_MODES."""
    if tta not in TTA_MODES:
        raise ConfigError(f"--tta: unknown {tta!r}; valid: {', '.join(TTA_MODES)}")


def ensemble_name(ensemble: int, tta: str) -> str:
    """The name the ensemble of a study's `ensemble` best trials goes by: `ensemble-topK`, `ensemble-topK-flip`."""
    return f"ensemble-top{ensemble}" + ("" if tta == NO_TTA else f"-{tta}")
