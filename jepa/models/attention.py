"""The one attention entry point of the models, so backends plug in at a single place.

``math`` is the explicit reference softmax(QKᵀ/√d)V, ``sdpa`` is PyTorch's fused
kernel, ``xformers`` is xformers' memory-efficient attention (CUDA only).  ``auto``
resolves to xformers on CUDA when it imports (per call: only for a dtype and head
size its op supports, else SDPA), and to SDPA everywhere else.  On CPU, SDPA runs its
math kernel where its fused kernel is the slower one (``cpu_sdpa_math_kernel``).
"""
from __future__ import annotations

import contextlib
import logging
import math
import os

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from jepa.config.choices import AttentionBackend
from jepa.errors import DeviceError

log = logging.getLogger("jepa")
BACKENDS: tuple[str, ...] = AttentionBackend.__args__
AUTO_XFORMERS = "auto-xformers"  # what ``auto`` resolves to on CUDA with xformers: xformers where it can run
_announced: set[str] = set()
# bf16 on CPU: SDPA's fused kernel is 1.2-4.3x slower than its math kernel in forward + backward up to 160 keys
# and faster from 197 on (bench/bench_attention.py, docs/performance.md); 128 keeps a margin below the crossover.
CPU_BF16_MATH_MAX_KEYS = 128
# Measured on one AVX-512 BF16 CPU without AMX; JEPA_CPU_SDPA_MATH=0 leaves the kernel choice to PyTorch.
CPU_SDPA_MATH = os.environ.get("JEPA_CPU_SDPA_MATH", "1") != "0"
_xformers_support: dict = {}


def xformers_available() -> bool:
    try:
        import xformers.ops  # noqa: F401
    except Exception:
        return False
    return torch.cuda.is_available()


def xformers_supports(head_dim: int, dtype: torch.dtype, device: torch.device | str = "cuda") -> bool:
    """Whether xformers' op runs forward and backward for this head size and dtype (probed once, cached).

    Inside a ``torch.compile`` trace nothing is probed: an unprobed case counts as unsupported.  The cache is
    keyed without the device (a run uses one kind of GPU), so a probe on ``"cuda"`` serves ``cuda:0`` tensors.
    """
    key = (int(head_dim), dtype)
    if key not in _xformers_support:
        if torch.compiler.is_compiling():
            return False
        try:
            import xformers.ops as xops
            q = torch.zeros(1, 8, 1, head_dim, device=device, dtype=dtype, requires_grad=True)
            xops.memory_efficient_attention(q, q, q).float().sum().backward()
            _xformers_support[key] = True
        except Exception:
            _xformers_support[key] = False
    return _xformers_support[key]


def prepare_backend(backend: str, head_dim: int):
    """Probe xformers for a layer's head size in every training dtype now, not inside a compiled graph."""
    if backend == AUTO_XFORMERS:
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            xformers_supports(head_dim, dtype)


def resolve_backend(name: str, device: torch.device | str) -> str:
    """Turn ``auto`` into a concrete backend for ``device``; refuse impossible requests clearly."""
    if name not in BACKENDS:
        raise ValueError(f"model.attention must be one of {', '.join(BACKENDS)}, got {name!r}")
    device = torch.device(device)
    if name == "xformers" and (device.type != "cuda" or not xformers_available()):
        raise DeviceError(
            "model.attention=xformers needs a CUDA device and the xformers package "
            "(pip install -e '.[cuda]'); use model.attention: auto or sdpa on "
            f"{device.type}")
    if name == "auto":
        name = AUTO_XFORMERS if device.type == "cuda" and xformers_available() else "sdpa"
    if name not in _announced:
        _announced.add(name)
        log.info("attention backend: %s", "xformers (auto: SDPA for a dtype or head size xformers cannot run)"
                 if name == AUTO_XFORMERS else name)
    return name


def math_attention(q, k, v, attn_mask=None):
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = (q * scale) @ k.transpose(-2, -1)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    return scores.softmax(dim=-1) @ v


def _xformers_bias(attn_mask, q, k):
    """An additive bias ``[B, H, Nq, Nk]`` for xformers, its rows padded to 8 elements (an alignment it requires)."""
    nq, nk = q.shape[2], k.shape[2]
    pad = (-nk) % 8
    mask = attn_mask.expand(*attn_mask.shape[:-2], nq, nk)
    base = torch.zeros(*mask.shape[:-1], nk + pad, dtype=q.dtype, device=q.device)[..., :nk]
    if attn_mask.dtype == torch.bool:
        base.masked_fill_(~mask, float("-inf"))
    else:
        base.add_(mask.to(q.dtype))
    return base.expand(q.shape[0], q.shape[1], nq, nk)


def cpu_sdpa_math_kernel(q, k, v) -> bool:
    """Whether SDPA should run its math kernel: on CPU its fused kernel is slower for fp16 (at every length
    measured, forward alone too) and, when gradients flow, for bf16 up to ``CPU_BF16_MATH_MAX_KEYS`` keys."""
    if not CPU_SDPA_MATH or q.device.type != "cpu":
        return False
    if q.dtype == torch.float16:
        return True
    return (q.dtype == torch.bfloat16 and k.shape[-2] <= CPU_BF16_MATH_MAX_KEYS and torch.is_grad_enabled()
            and (q.requires_grad or k.requires_grad or v.requires_grad))


def attention(q, k, v, backend: str = "sdpa", attn_mask=None):
    """``q, k, v``: ``[B, H, N, d]``; ``attn_mask``: bool (True = attend) or additive, broadcastable."""
    if backend == AUTO_XFORMERS:
        backend = "xformers" if q.is_cuda and xformers_supports(q.shape[-1], q.dtype, q.device) else "sdpa"
    if backend == "sdpa":
        with sdpa_kernel(SDPBackend.MATH) if cpu_sdpa_math_kernel(q, k, v) else contextlib.nullcontext():
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    if backend == "math":
        return math_attention(q, k, v, attn_mask)
    if backend == "xformers":
        import xformers.ops as xops
        bias = None if attn_mask is None else _xformers_bias(attn_mask, q, k)
        out = xops.memory_efficient_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias)
        return out.transpose(1, 2)
    raise ValueError(f"unknown attention backend {backend!r}; valid: sdpa, math, xformers")
