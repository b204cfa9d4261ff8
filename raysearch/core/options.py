"""Allowed values and defaults of command options whose code is heavy (torch), kept here so that the command line
is built without importing it."""

from __future__ import annotations

TTA_MODES = ("none", "flip")  # test-time augmentation of an ensemble: none, or each image and its mirror
RESAMPLES = 1000  # bootstrap resamples of the test images behind each 95 % interval
