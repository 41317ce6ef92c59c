"""Where and in which precision a run computes: the device and autocast dtype a config asks for."""
from __future__ import annotations

from typing import Literal

import torch

from jepa.errors import ConfigError

Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = Precision.__args__
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def pick_device(name: str) -> torch.device:
    """``auto`` is CUDA, then Apple MPS, then the CPU; a device this machine lacks is a ConfigError."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_available() else torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"training.device={name}: CUDA is not available on this machine (use auto or cpu)")
    if name == "mps" and not mps_available():
        raise ConfigError("training.device=mps: Apple MPS is not available on this machine (use auto or cpu)")
    return torch.device(name)


def pick_precision(name: str, device: torch.device) -> torch.dtype:
    """The autocast dtype: ``auto`` is bf16 on CUDA and fp32 elsewhere."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[name]
