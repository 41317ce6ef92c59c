"""Pure-PyTorch implementations of the fused ops.

They define the semantics the Triton kernels are tested against and are the fallback
on CPU and MPS.  Each is written to be no slower than the reference I-JEPA code.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn.functional as F


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the fused ops accumulate in: fp64 for fp64 inputs, else fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _flat_rows(idx: torch.Tensor, n: int) -> torch.Tensor:
    """Row numbers into ``x.view(B*N, D)`` for mask-major ``idx`` ``[M, B, K]``."""
    b = idx.shape[1]
    offset = torch.arange(b, device=idx.device, dtype=idx.dtype).mul_(n).view(1, b, 1)
    return (idx + offset).reshape(-1)


def masked_gather_torch(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``out[m*B + b, k] = x[b, idx[m, b, k]]`` with one ``index_select`` over all masks."""
    m, b, k = idx.shape
    n, d = x.shape[1], x.shape[2]
    if x.stride(0) == 0:  # a batch-expanded tensor (e.g. positional embeddings): don't materialise it
        return x[0].index_select(0, idx.reshape(-1)).view(m * b, k, d)
    return x.reshape(b * n, d).index_select(0, _flat_rows(idx, n)).view(m * b, k, d)


def masked_gather_backward_torch(grad: torch.Tensor, idx: torch.Tensor, n: int) -> torch.Tensor:
    """Scatter-add ``grad`` ``[M*B, K, D]`` back to ``[B, N, D]`` (duplicates summed)."""
    b = idx.shape[1]
    d = grad.shape[-1]
    out = torch.zeros(b * n, d, dtype=grad.dtype, device=grad.device)
    out.index_add_(0, _flat_rows(idx, n), grad.reshape(-1, d))
    return out.view(b, n, d)


def sums_gradient(dtype: torch.dtype) -> bool:
    """Whether the loss ops hand backward the gradient of the *summed* loss: only for fp16, where the
    gradient of the mean (``1/numel`` smaller) could underflow; every other dtype gets that of the mean."""
    return dtype == torch.float16


def masked_target_loss_torch(
    pred: torch.Tensor,
    target: torch.Tensor,
    idx: torch.Tensor,
    kind: str,
    beta: float,
    normalize: bool,
    eps: float,
    compute_grad: bool,
):
    """Loss between ``pred`` and layer-normed gathered target rows; also its gradient w.r.t. ``pred``.

    Only the gathered rows are normalised.  Returns ``(loss, dgrad)``: the mean loss in fp32 (fp64
    for fp64 inputs) and, in ``pred.dtype``, the gradient of the mean loss (of the summed loss when
    ``sums_gradient``; empty when ``compute_grad`` is false); backward multiplies it by grad_output.
    """
    acc = acc_dtype(pred.dtype)
    d = pred.shape[-1]
    t = masked_gather_torch(target, idx).to(acc)
    if normalize:
        t = F.layer_norm(t, (d,), eps=eps)
    p = pred.to(acc)
    diff = p - t
    numel = diff.numel()
    if kind == "mse":
        flat = diff.view(-1)
        loss = torch.dot(flat, flat) / numel
        dgrad = diff.mul_(2.0) if compute_grad else None
    else:  # smooth_l1 (masked_target_loss_op has checked the kind)
        loss = F.smooth_l1_loss(p, t, beta=beta)
        if not compute_grad:
            dgrad = None
        elif beta > 0:
            dgrad = diff.div_(beta).clamp_(-1.0, 1.0)
        else:
            dgrad = diff.sign_()
    if dgrad is None:
        return loss, pred.new_empty(0)
    if not sums_gradient(pred.dtype):
        dgrad.mul_(torch.ones((), dtype=acc, device=dgrad.device) / numel)
    return loss, dgrad.to(pred.dtype)


def ema_update_torch_(
    target_params: Sequence[torch.Tensor],
    online_params: Sequence[torch.Tensor],
    momentum: Union[float, torch.Tensor],
) -> None:
    """``t = m*t + (1-m)*o`` in place, as ``lerp(t, o, 1-m)``, fp32 math for low precision.

    Same-dtype fp32/fp64 pairs go through one ``torch._foreach_lerp_`` (grouped by device
    and dtype); fp16/bf16 or mixed pairs are done per tensor in fp32.  Measured with
    bench/bench_kernel_ema.py on a 2-core CPU VM (1 thread, ViT-B lists, 85M fp32 params):
    ``_foreach_lerp_`` 18.9 ms, flat-buffer lerp (cat, lerp, copy back) 620 ms, reference
    ``mul_``/``add_`` loop 69 ms (ViT-L, 302M: 63 / 1179 / 259 ms); so ``_foreach_lerp_``.
    A flat lerp only wins if the parameters already live in one buffer, which we don't own.
    """
    groups: dict = {}
    slow = []
    for t, o in zip(target_params, online_params, strict=True):
        if t.dtype == o.dtype and t.dtype in (torch.float32, torch.float64):
            groups.setdefault((t.device, t.dtype), ([], []))
            groups[(t.device, t.dtype)][0].append(t)
            groups[(t.device, t.dtype)][1].append(o)
        else:
            slow.append((t, o))
    if isinstance(momentum, torch.Tensor) and momentum.device.type == "cpu" and target_params \
            and target_params[0].device.type != "cpu":
        momentum = float(momentum)  # a host value: an argument, not a copy from pageable memory per tensor group
    for (device, dtype), (ts, os_) in groups.items():
        if isinstance(momentum, torch.Tensor):  # no .item(): a device tensor would sync
            w = (1.0 - momentum.detach()).to(device=device, dtype=dtype)
            torch._foreach_lerp_(ts, os_, [w] * len(ts))
        else:
            torch._foreach_lerp_(ts, os_, 1.0 - float(momentum))
    for t, o in slow:
        if isinstance(momentum, torch.Tensor):
            w = (1.0 - momentum.detach()).to(device=t.device, dtype=torch.float32)
        else:
            w = 1.0 - float(momentum)
        t.copy_(torch.lerp(t.float(), o.float(), w))
