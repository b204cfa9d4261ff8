"""The weights file a trial writes (best_model.pt, and the exported weights.pt): one format, read back safely."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn

from raysearch.core.layout import WEIGHTS_KEY
from raysearch.errors import DataError


def read_weights(path: Path, device: torch.device) -> dict[str, torch.Tensor]:
    """The network state dict in a weights file (best_model.pt, weights.pt), loaded with `weights_only=True`;
    a DataError naming the file when it is truncated, carries pickled objects, or is not a weights file."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:  # PyTorch's message advises the unsafe load: never passed on
        raise DataError(f"{path}: not a plain weights file (it holds Python objects other than tensors); raysearch "
                        "will not unpickle it, since unpickling a received file can run any code") from None
    except (RuntimeError, EOFError, ValueError, OSError) as error:
        raise DataError(f"{path}: not a readable weights file, truncated or damaged ({_line(error, 0)})") from None
    if not isinstance(state, dict) or not isinstance(state.get(WEIGHTS_KEY), dict):
        raise DataError(f"{path}: not a raysearch weights file (no {WEIGHTS_KEY!r} state dict)")
    return state[WEIGHTS_KEY]


def load_weights(model: nn.Module, path: Path, device: torch.device) -> nn.Module:
    """Load a weights file (see read_weights) into `model`, in eval mode; a DataError naming the file when
    the weights belong to another network."""
    weights = read_weights(path, device)
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise DataError(f"{path}: the weights do not fit the network its configuration builds "
                        f"({_line(error, 1)})") from None
    return model.to(device).eval()


def _line(error: BaseException, index: int) -> str:
    """Line `index` of an error's message (the last one if it has fewer), shortened."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    return lines[min(index, len(lines) - 1)][:200]



def save_weights(weights: dict[str, torch.Tensor], path: Path) -> None:
    """Write a network state dict as a weights file that `read_weights` takes back."""
    torch.save({WEIGHTS_KEY: weights}, path)
