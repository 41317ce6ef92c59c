"""Where and in which precision a run computes: the device and autocast dtype a config asks for."""
from __future__ import annotations

from typing import Literal

import torch

import kernels
from jepa import distributed as jdist
from jepa.errors import ConfigError
from jepa.profiling import tune_cpu_allocator

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


def setup_process(cfg) -> tuple[torch.device, jdist.DistInfo]:
    """This process's device and process group, kernels backend, determinism, seed and CPU allocator."""
    t = cfg.training
    device = pick_device(t.device)
    dist = jdist.init_distributed(cfg.distributed.backend, device.type)
    if device.type == "cuda" and dist.enabled:  # init_distributed has set it current
        device = torch.device("cuda", dist.local_rank)
    kernels.set_backend(t.kernels)
    if t.deterministic:
        torch.use_deterministic_algorithms(True)
    torch.manual_seed(t.seed)
    if device.type == "cpu":
        tune_cpu_allocator()
    return device, dist
