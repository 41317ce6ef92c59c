"""Where and in which precision a run computes: the device and autocast dtype a config asks for, and the one
autocast context every forward pass of a run goes through."""
from __future__ import annotations

import torch

import jepa_kernels
from jepa_kernels.dispatch import interpreting
from jepa import distributed as jdist
from jepa.config.choices import DEVICE
from jepa.errors import ConfigError, DeviceError
from jepa.cpu import FORCE_BF16_ENV, cpu_bf16_matmul_flag, tune_cpu_allocator

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def pick_device(name: str, key: str = "training.device") -> torch.device:
    """``auto`` is CUDA, then Apple MPS, then the CPU; a device this machine lacks is a ConfigError naming ``key``."""
    if not DEVICE.match(name):
        raise ConfigError(f"{key}: must be auto, cpu, mps, cuda or cuda:N, got {name!r}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_available() else torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{key}={name}: CUDA is not available on this machine (use auto or cpu)")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise ConfigError(f"{key}={name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                          f"numbered from 0")
    if name == "mps" and not mps_available():
        raise ConfigError(f"{key}=mps: Apple MPS is not available on this machine (use auto or cpu)")
    return torch.device(name)


def check_kernels(name: str, device: torch.device):
    """``training.kernels: triton`` needs Triton and CUDA tensors (or Triton's CPU interpreter)."""
    if name != "triton":
        return
    if not jepa_kernels.HAS_TRITON:
        raise DeviceError("training.kernels=triton: triton is not importable on this machine (it ships for Linux "
                          "x86-64 with CUDA); use training.kernels: auto or torch")
    if device.type != "cuda" and not interpreting():
        raise DeviceError(f"training.kernels=triton needs a CUDA device, but the run is on {device.type}; use "
                          "training.kernels: auto or torch (TRITON_INTERPRET=1 runs the kernels on a CPU, slowly)")


def auto_precision(device: torch.device) -> tuple[str, str]:
    """What ``precision: auto`` computes in on ``device``, and why: bf16 on CUDA and on CPUs with bf16 matrix
    instructions (AVX-512 BF16 or AMX, where it is about 2x faster at the same quality), fp32 elsewhere."""
    if device.type == "cuda":
        return "bf16", "CUDA"
    if device.type == "cpu":
        flag = cpu_bf16_matmul_flag()
        if flag is None:
            return "fp32", "CPU has no bf16 matrix instructions"
        return "bf16", flag if flag.startswith(FORCE_BF16_ENV) else f"CPU has {flag}"
    return "fp32", device.type.upper()


def pick_precision(name: str, device: torch.device) -> torch.dtype:
    """The autocast dtype of ``training.precision`` (or a command's ``--precision``) on ``device``."""
    return DTYPES[auto_precision(device)[0] if name == "auto" else name]


def describe_precision(name: str, device: torch.device) -> str:
    """``bf16 (auto: CPU has avx512_bf16)``: the precision a run computes in, for its start log."""
    if name != "auto":
        return name
    chosen, why = auto_precision(device)
    return f"{chosen} (auto: {why})"


def autocast(device: torch.device | str, dtype: torch.dtype):
    """Autocast to ``dtype`` on ``device``'s type; fp32 turns autocast off (the precision a run computes in)."""
    return torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype != torch.float32)


def setup_process(cfg) -> tuple[torch.device, jdist.DistInfo]:
    """This process's device and process group, kernels backend, determinism, seed and CPU allocator."""
    t = cfg.training
    device = pick_device(t.device)
    dist = jdist.init_distributed(cfg.distributed.backend, device.type)
    if device.type == "cuda" and dist.enabled:  # init_distributed has set it current
        device = torch.device("cuda", dist.cuda_index)
    check_kernels(t.kernels, device)
    jepa_kernels.set_backend(t.kernels)
    if t.deterministic:
        torch.use_deterministic_algorithms(True)
    torch.manual_seed(t.seed)
    if device.type == "cpu":
        tune_cpu_allocator()
    return device, dist
