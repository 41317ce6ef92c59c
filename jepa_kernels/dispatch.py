"""Backend selection for the fused ops: Triton kernels or their pure-PyTorch fallbacks.

``JEPA_KERNELS`` (``auto`` | ``triton`` | ``torch``) sets the initial choice; ``auto``
picks Triton for CUDA tensors and PyTorch for everything else (CPU, MPS), per call.
"""
from __future__ import annotations

import os
from typing import Literal

import torch

try:
    import triton  # noqa: F401
    import triton.language  # noqa: F401

    HAS_TRITON = True
except Exception:  # ImportError, or a broken install on platforms triton does not support
    HAS_TRITON = False

KernelsBackend = Literal["auto", "triton", "torch"]
_CHOICES: tuple[str, ...] = KernelsBackend.__args__
_choice = "auto"


def set_backend(name: str) -> None:
    """Select ``auto``, ``triton`` or ``torch`` for all subsequent calls."""
    global _choice
    name = str(name).lower()
    if name not in _CHOICES:
        raise ValueError(f"unknown kernels backend {name!r}; expected one of {_CHOICES}")
    if name == "triton" and not HAS_TRITON:
        raise RuntimeError(
            "kernels backend 'triton' requested but triton is not importable; "
            "install triton (Linux + CUDA) or use set_backend('torch'/'auto')"
        )
    _choice = name


def get_choice() -> str:
    """The configured choice, ``auto`` included (``backend()`` resolves it)."""
    return _choice


def backend() -> str:
    """Active backend name, ``"triton"`` or ``"torch"``.

    Under ``auto`` this is the backend used for tensors on the default accelerator:
    ``"triton"`` when CUDA is available and triton imports, else ``"torch"``.
    """
    if _choice == "auto":
        return "triton" if HAS_TRITON and torch.cuda.is_available() else "torch"
    return _choice


def use_triton(t: torch.Tensor) -> bool:
    """Whether an op on tensor ``t`` runs the Triton kernel (decided per call)."""
    if _choice == "auto":
        return HAS_TRITON and t.is_cuda
    if _choice == "triton" and not t.is_cuda and not interpreting():
        raise RuntimeError(
            f"kernels backend 'triton' needs CUDA tensors (got {t.device}); use "
            "set_backend('auto'/'torch'), or TRITON_INTERPRET=1 to run the kernels on CPU"
        )
    return _choice == "triton"


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def empty(shape, dtype: torch.dtype, device) -> torch.Tensor:
    """Allocation used for every kernel output that the kernel must fully overwrite.

    Tests replace it with a NaN-filled allocator to prove every element is written.
    """
    return torch.empty(shape, dtype=dtype, device=device)


_env = os.environ.get("JEPA_KERNELS", "auto")
try:
    set_backend(_env)
except (RuntimeError, ValueError) as _err:
    import warnings

    warnings.warn(f"ignoring JEPA_KERNELS={_env!r} ({_err}); using 'auto'")
    _choice = "auto"
