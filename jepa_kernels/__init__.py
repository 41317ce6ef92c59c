"""Fused kernels for I-JEPA training: masked gather, masked target loss, EMA update.

Each op has a Triton kernel (CUDA, or CPU under ``TRITON_INTERPRET=1``) and a pure-PyTorch
fallback (``jepa_kernels.reference``); all are ``torch.library`` custom ops, so
``torch.compile`` sees each as one opaque node.  Importable without triton.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch

from .dispatch import HAS_TRITON, backend, set_backend
from .ema import ema_update_now, ema_update_op
from .gather import masked_gather_op
from .target_loss import masked_target_loss_op

__all__ = [
    "HAS_TRITON",
    "backend",
    "set_backend",
    "masked_gather",
    "masked_target_loss",
    "ema_update_",
]


def masked_gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` ``[B, N, D]`` at ``idx`` ``[B, K]`` -> ``[B, K, D]``, or ``[M, B, K]`` ->
    ``[M*B, K, D]`` (mask-major: row ``m*B + b`` is ``x[b, idx[m, b]]``).

    Differentiable in ``x``; backward scatter-adds, summing indices repeated across masks.
    Indices are not range-checked on the Triton path.
    """
    if idx.dim() == 2:
        idx = idx.unsqueeze(0)
    if idx.dim() != 3 or x.dim() != 3 or idx.shape[1] != x.shape[0]:
        raise ValueError(
            f"masked_gather: x must be [B, N, D] and idx [B, K] or [M, B, K]; "
            f"got x {tuple(x.shape)}, idx {tuple(idx.shape)}"
        )
    return masked_gather_op(x, idx)


def masked_target_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    idx: torch.Tensor,
    kind: str = "mse",
    beta: float = 1.0,
    normalize: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Mean ``kind`` loss between ``pred`` ``[M*B, K, D]`` and ``layer_norm(target)[b, idx]``.

    ``target`` ``[B, N, D]`` gets no gradient; ``idx`` is ``[M, B, K]`` (``[B, K]`` means M=1).
    ``kind``: ``"mse"`` or ``"smooth_l1"`` (with ``beta``, as ``F.smooth_l1_loss``).  The
    layer norm has no affine and ``eps`` inside the sqrt; ``normalize=False`` skips it.
    Math is fp32 whatever the input dtype; returns an fp32 scalar (fp64 for fp64 ``pred``).
    """
    if idx.dim() == 2:
        idx = idx.unsqueeze(0)
    if (
        idx.dim() != 3 or pred.dim() != 3 or target.dim() != 3
        or pred.shape[0] != idx.shape[0] * idx.shape[1] or pred.shape[1] != idx.shape[2]
        or target.shape[0] != idx.shape[1] or target.shape[2] != pred.shape[2]
    ):
        raise ValueError(
            f"masked_target_loss: expected pred [M*B, K, D], target [B, N, D], idx [M, B, K]; "
            f"got pred {tuple(pred.shape)}, target {tuple(target.shape)}, idx {tuple(idx.shape)}"
        )
    if kind not in ("mse", "smooth_l1"):
        raise ValueError(f"unknown loss kind {kind!r}; expected 'mse' or 'smooth_l1'")
    compute_grad = pred.requires_grad and torch.is_grad_enabled()
    loss, _ = masked_target_loss_op(
        pred, target.detach(), idx, kind, float(beta), bool(normalize), float(eps), compute_grad
    )
    return loss


def ema_update_(
    target_params: Sequence[torch.Tensor],
    online_params: Sequence[torch.Tensor],
    momentum: Union[float, torch.Tensor],
) -> None:
    """In place ``t = m*t + (1-m)*o`` for every pair; ``momentum`` a float or 0-d tensor.

    One Triton launch for all tensors on CUDA (fp32/fp16/bf16, mixed allowed, fp32 math), from a
    launch plan cached by the tensors' storage (``jepa_kernels.ema``).  Pass the momentum as a device
    tensor to make the launch graph-safe: a float is a launch argument, frozen into a captured graph.
    """
    ts = target_params if isinstance(target_params, (list, tuple)) else list(target_params)
    os_ = online_params if isinstance(online_params, (list, tuple)) else list(online_params)
    if len(ts) != len(os_):
        raise ValueError(f"ema_update_: {len(ts)} target vs {len(os_)} online tensors")
    if not torch.compiler.is_compiling():
        ema_update_now(ts, os_, momentum)
    elif isinstance(momentum, torch.Tensor):
        ema_update_op([t.detach() for t in ts], [o.detach() for o in os_], 0.0, momentum.detach())
    else:
        ema_update_op([t.detach() for t in ts], [o.detach() for o in os_], float(momentum), None)
