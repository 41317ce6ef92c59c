"""The one attention entry point of the models, so backends plug in at a single place.

``math`` is the explicit reference softmax(QKᵀ/√d)V, ``sdpa`` is PyTorch's fused
kernel, ``xformers`` is xformers' memory-efficient attention (CUDA only).
"""
from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

log = logging.getLogger("jepa")
BACKENDS = ("auto", "xformers", "sdpa", "math")
_announced: set[str] = set()


def xformers_available() -> bool:
    try:
        import xformers.ops  # noqa: F401
    except Exception:
        return False
    return torch.cuda.is_available()


def resolve_backend(name: str, device: torch.device | str) -> str:
    """Turn ``auto`` into a concrete backend for ``device``; refuse impossible requests clearly."""
    if name not in BACKENDS:
        raise ValueError(f"model.attention must be one of {', '.join(BACKENDS)}, got {name!r}")
    device = torch.device(device)
    if name == "xformers" and (device.type != "cuda" or not xformers_available()):
        raise RuntimeError(
            "model.attention=xformers needs a CUDA device and the xformers package "
            "(pip install -e '.[cuda]'); use model.attention: auto or sdpa on "
            f"{device.type}")
    if name == "auto":
        name = "xformers" if device.type == "cuda" and xformers_available() else "sdpa"
    if name not in _announced:
        _announced.add(name)
        log.info("attention backend: %s", name)
    return name


def math_attention(q, k, v, attn_mask=None):
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = (q * scale) @ k.transpose(-2, -1)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    return scores.softmax(dim=-1) @ v


def attention(q, k, v, backend: str = "sdpa", attn_mask=None):
    """``q, k, v``: ``[B, H, N, d]``; ``attn_mask``: bool (True = attend) or additive, broadcastable."""
    if backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    if backend == "math":
        return math_attention(q, k, v, attn_mask)
    if backend == "xformers":
        import xformers.ops as xops
        bias = None
        if attn_mask is not None:
            bias = attn_mask if attn_mask.dtype != torch.bool else \
                torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device).masked_fill(~attn_mask, float("-inf"))
            bias = bias.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        out = xops.memory_efficient_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias)
        return out.transpose(1, 2)
    raise ValueError(f"unknown attention backend {backend!r}; valid: sdpa, math, xformers")
