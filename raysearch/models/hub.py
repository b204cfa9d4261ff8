"""Pretrained weights from this machine only: model creation with the Hugging Face Hub forced offline.

timm and segmentation_models_pytorch fetch weights through `huggingface_hub`, which reads
`HF_HUB_OFFLINE` once, at import. `offline_weights` therefore sets both the environment variable (for a
library imported later) and the already-imported flag, so a missing file fails at once, never waits on
the network.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from raysearch.errors import ConfigError

T = TypeVar("T")
WHERE_WEIGHTS_GO = ("put them in the Hugging Face cache (HF_HOME, default ~/.cache/huggingface) by creating the "
                    "model once with pretrained weights on a machine with network access")


@contextmanager
def offline_hub() -> Iterator[None]:
    """Within the block, the Hugging Face Hub answers from the local cache only."""
    from huggingface_hub import constants

    saved_env, saved_flag = os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved_flag
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env


def create_offline(create: Callable[[], T], *, pretrained: bool, what: str, hint: str = WHERE_WEIGHTS_GO) -> T:
    """`create()` with the Hub offline; a missing weights file becomes a one-line ConfigError about `what`."""
    if not pretrained:
        return create()
    try:
        with offline_hub():
            return create()
    except OSError as error:
        raise ConfigError(f"pretrained: weights for {what} are not on this machine ({type(error).__name__}); "
                          f"{hint}") from None
