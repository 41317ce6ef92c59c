"""Fused I-JEPA target loss: gather target rows, layer-norm them, loss and d(loss)/d(pred), one pass.

Neither the normalised ``[B, N, D]`` target nor the gathered target rows are materialised;
the forward writes per-program loss partials and the gradient w.r.t. ``pred`` (of the
*summed* loss), which backward scales by ``grad_output / numel``.
"""
from __future__ import annotations

from typing import Tuple

import torch

from . import dispatch as _dispatch
from .reference import acc_dtype, masked_target_loss_torch

KINDS = {"mse": 0, "smooth_l1": 1}

if _dispatch.HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _target_loss_kernel(
        pred_ptr, tgt_ptr, idx_ptr, partial_ptr, dgrad_ptr,
        R, K, B, D, stride_tb, stride_tn,
        eps, beta, inv_beta,
        KIND: tl.constexpr, NORMALIZE: tl.constexpr, COMPUTE_GRAD: tl.constexpr,
        ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        """BLOCK_R prediction rows: normalise their target rows in registers, loss + grad."""
        pid = tl.program_id(0)
        rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
        cols = tl.arange(0, BLOCK_D)
        rmask = rows < R
        cmask = cols < D
        mask = rmask[:, None] & cmask[None, :]
        rows = rows.to(tl.int64)
        n = tl.load(idx_ptr + rows, mask=rmask, other=0).to(tl.int64)
        b = (rows // K) % B
        t = tl.load(
            tgt_ptr + (b * stride_tb + n * stride_tn)[:, None] + cols[None, :], mask=mask, other=0.0
        ).to(ACC)
        if NORMALIZE:
            mean = tl.sum(t, axis=1) / D
            tc = tl.where(mask, t - mean[:, None], 0.0)
            var = tl.sum(tc * tc, axis=1) / D
            t = tc * (1.0 / tl.sqrt(var + eps))[:, None]
        offs = (rows * D)[:, None] + cols[None, :]
        p = tl.load(pred_ptr + offs, mask=mask, other=0.0).to(ACC)
        diff = tl.where(mask, p - t, 0.0)
        if KIND == 0:
            elem = diff * diff
            g = 2.0 * diff
        else:
            ad = tl.abs(diff)
            quad = ad < beta
            elem = tl.where(quad, 0.5 * diff * diff * inv_beta, ad - 0.5 * beta)
            sgn = tl.where(diff > 0, 1.0, tl.where(diff < 0, -1.0, 0.0)).to(ACC)
            g = tl.where(quad, diff * inv_beta, sgn)
        tl.store(partial_ptr + pid, tl.sum(tl.sum(elem, axis=1), axis=0))
        if COMPUTE_GRAD:
            tl.store(dgrad_ptr + offs, g.to(dgrad_ptr.dtype.element_ty), mask=mask)


def _target_loss_triton(pred, target, idx, kind, beta, normalize, eps, compute_grad):
    m, b, k = idx.shape
    d = pred.shape[2]
    pred = pred.contiguous()
    if target.stride(2) != 1:
        target = target.contiguous()
    idx = idx.contiguous()
    r = m * b * k
    acc = acc_dtype(pred.dtype)
    block_d = triton.next_power_of_2(d)
    block_r = max(1, min(16, 4096 // block_d))
    grid = (triton.cdiv(r, block_r),)
    partials = _dispatch.empty((grid[0],), acc, pred.device)
    dgrad = _dispatch.empty(pred.shape if compute_grad else (0,), pred.dtype, pred.device)
    _target_loss_kernel[grid](
        pred, target, idx, partials, dgrad if compute_grad else partials,
        r, k, b, d, target.stride(0), target.stride(1),
        float(eps), float(beta), 1.0 / beta if beta > 0 else 0.0,
        KIND=KINDS[kind], NORMALIZE=bool(normalize), COMPUTE_GRAD=bool(compute_grad),
        ACC=tl.float64 if acc == torch.float64 else tl.float32,
        BLOCK_R=block_r, BLOCK_D=block_d, num_warps=4 if block_d <= 1024 else 8,
    )
    return partials.sum() / (r * d), dgrad


@torch.library.custom_op("jepa_kernels::masked_target_loss", mutates_args=())
def masked_target_loss_op(
    pred: torch.Tensor,
    target: torch.Tensor,
    idx: torch.Tensor,
    kind: str,
    beta: float,
    normalize: bool,
    eps: float,
    compute_grad: bool,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Returns ``(mean loss, d(summed loss)/d(pred))``; opaque to torch.compile."""
    if kind not in KINDS:
        raise ValueError(f"unknown loss kind {kind!r}; expected 'mse' or 'smooth_l1'")
    if _dispatch.use_triton(pred):
        return _target_loss_triton(pred, target, idx, kind, beta, normalize, eps, compute_grad)
    return masked_target_loss_torch(pred, target, idx, kind, beta, normalize, eps, compute_grad)


@masked_target_loss_op.register_fake
def _(pred, target, idx, kind, beta, normalize, eps, compute_grad):
    loss = pred.new_empty((), dtype=acc_dtype(pred.dtype))
    return loss, pred.new_empty(pred.shape if compute_grad else (0,))


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(output[1])
    ctx.numel = inputs[0].numel()
    ctx.pred_dtype = inputs[0].dtype


def _backward(ctx, grad_loss, _grad_dgrad):
    (dgrad,) = ctx.saved_tensors
    if dgrad.numel() == 0 and ctx.numel != 0:
        raise RuntimeError("masked_target_loss was called with compute_grad=False")
    scale = grad_loss.to(acc_dtype(dgrad.dtype))
    grad = (dgrad * (scale / ctx.numel)).to(ctx.pred_dtype)
    return grad, None, None, None, None, None, None, None


masked_target_loss_op.register_autograd(_backward, setup_context=_setup_context)
