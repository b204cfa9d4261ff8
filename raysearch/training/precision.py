"""Mixed precision for a trial: `precision` bf16, fp16 (with a gradient scaler) or fp32, or auto.

auto resolves to bf16 on a GPU that supports it and to fp32 elsewhere (on a CPU, bf16 autocast runs but
is slower than fp32 on most processors). fp32 runs exactly what a plain PyTorch loop runs: no autocast,
no scaling, so its metrics are those of the loop before mixed precision existed.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch

from raysearch.errors import ConfigError
from raysearch.training.hparams import PRECISIONS

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(choice: str, device: torch.device) -> str:
    """The precision a trial trains in on `device`: `choice`, or for auto bf16 where the GPU supports it, else fp32."""
    if choice not in PRECISIONS:
        raise ConfigError(f"precision: must be one of {', '.join(PRECISIONS)}, got {choice!r}")
    if choice != "auto":
        return choice
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


class Precision:
    """Autocast for the forward pass and a (for fp16: scaled) backward pass and optimizer step."""

    def __init__(self, name: str, device: torch.device) -> None:
        self.name, self.device_type = name, device.type
        self.scaler = torch.amp.GradScaler(device.type, enabled=name == "fp16")

    def autocast(self) -> AbstractContextManager[None]:
        """The forward pass's context: autocast to bf16 / fp16, or nothing for fp32."""
        return torch.autocast(self.device_type, dtype=AUTOCAST_DTYPES.get(self.name), enabled=self.name != "fp32")

    def backward_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Backpropagate `loss` and step `optimizer` (through the grad scaler for fp16: it skips a step on inf/NaN)."""
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()
