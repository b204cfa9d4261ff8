"""The one device choice: the first CUDA GPU when one is there (and wanted), else the CPU."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def torch_device(use_gpu: bool = True) -> torch.device:
    """`cuda:0` when `use_gpu` and a CUDA GPU is visible, else the CPU (torch imported on first use)."""
    import torch

    return torch.device("cuda", 0) if use_gpu and torch.cuda.is_available() else torch.device("cpu")
