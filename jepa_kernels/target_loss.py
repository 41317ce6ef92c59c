"""Fused I-JEPA target loss: gather target rows, layer-norm them, loss and d(loss)/d(pred), one pass.

Neither the normalised ``[B, N, D]`` target nor the gathered target rows are materialised.  The
forward reads ``pred`` and the indexed target rows once from memory and writes per-program loss
partials and the gradient w.r.t. ``pred``: three passes over ``[M·B, K, D]``-sized data.  The
gradient is already that of the *mean* loss (``sums_gradient``: of the summed loss for fp16,
where ``1/numel`` could underflow), so the backward only has to multiply it by ``grad_output``.
On the Triton path that multiply is done in place by a kernel whose programs return at once when
``grad_output`` is 1 — the trainer's case — so fwd+bwd stays three passes without a host sync.
"""
from __future__ import annotations

from typing import Tuple

import torch

from . import dispatch as _dispatch
from .reference import acc_dtype, masked_target_loss_torch, sums_gradient

KINDS = {"mse": 0, "smooth_l1": 1}
_SCALE_BLOCK = 4096

if _dispatch.HAS_TRITON:
    import triton
    import triton.language as tl

    from .gather import chunk_cols, row_tiles

    @triton.jit(do_not_specialize=["R", "K", "B"])
    def _target_loss_kernel(
        pred_ptr, tgt_ptr, idx_ptr, partial_ptr, dgrad_ptr,
        R, K, B, D, stride_tb, stride_tn,
        eps, beta, inv_beta, grad_scale,
        KIND: tl.constexpr, NORMALIZE: tl.constexpr, COMPUTE_GRAD: tl.constexpr,
        ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr,
    ):
        """BLOCK_R prediction rows: statistics of their target rows (chunks merged exactly), then loss + grad.

        The second read of a target chunk hits the cache (the program read it a moment before); from
        memory each row of pred and target is read once and each row of the gradient written once.
        """
        pid = tl.program_id(0)
        rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
        rmask = rows < R
        n = tl.load(idx_ptr + rows, mask=rmask, other=0).to(tl.int32)
        b = (rows // K) % B
        tgt = tgt_ptr + (b.to(tl.int64) * stride_tb + n.to(tl.int64) * stride_tn)[:, None]
        row = (rows.to(tl.int64) * D)[:, None]
        mean = tl.zeros([BLOCK_R], ACC)
        rstd = tl.zeros([BLOCK_R], ACC)
        if NORMALIZE:
            m2 = tl.zeros([BLOCK_R], ACC)
            for c in range(0, D, BLOCK_D):  # per-chunk mean and M2, merged (Chan et al.): no E[x²] - E[x]² loss
                cols, inside = chunk_cols(c, D, BLOCK_D, EVEN_D)
                mask = rmask[:, None] & inside[None, :]
                t = tl.load(tgt + cols[None, :], mask=mask, other=0.0).to(ACC)
                width = tl.minimum(D - c, BLOCK_D)
                total = (c + width).to(ACC)  # columns merged so far, this chunk included
                width = width.to(ACC)
                seen = total - width
                cmean = tl.sum(t, axis=1) / width
                dev = tl.where(mask, t - cmean[:, None], 0.0)
                delta = cmean - mean
                mean += delta * (width / total)
                m2 += tl.sum(dev * dev, axis=1) + delta * delta * (seen * width / total)
            rstd = 1.0 / tl.sqrt(m2 / D + eps)
        loss = tl.zeros([BLOCK_R], ACC)
        for c in range(0, D, BLOCK_D):
            cols, inside = chunk_cols(c, D, BLOCK_D, EVEN_D)
            mask = rmask[:, None] & inside[None, :]
            t = tl.load(tgt + cols[None, :], mask=mask, other=0.0).to(ACC)
            if NORMALIZE:
                t = (t - mean[:, None]) * rstd[:, None]
            p = tl.load(pred_ptr + row + cols[None, :], mask=mask, other=0.0).to(ACC)
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
            loss += tl.sum(elem, axis=1)
            if COMPUTE_GRAD:
                tl.store(dgrad_ptr + row + cols[None, :], (g * grad_scale).to(dgrad_ptr.dtype.element_ty), mask=mask)
        tl.store(partial_ptr + pid, tl.sum(loss, axis=0))

    @triton.jit
    def _scale_grad_kernel(grad_ptr, g_ptr, applied_ptr, numel, pre, ACC: tl.constexpr, BLOCK: tl.constexpr):
        """``grad *= g * pre`` in place; every program returns at once when that factor is 1.

        Program 0 records the factor (nothing in this launch reads it) for a later backward.
        """
        scale = tl.load(g_ptr).to(ACC) * pre
        if tl.program_id(0) == 0:
            tl.store(applied_ptr, scale)
        if scale != 1.0:
            start = tl.program_id(0).to(tl.int64) * BLOCK
            offs = start + tl.arange(0, BLOCK)
            if start + BLOCK <= numel:  # full blocks unmasked (vector loads whatever numel is)
                v = tl.load(grad_ptr + offs).to(ACC)
                tl.store(grad_ptr + offs, (v * scale).to(grad_ptr.dtype.element_ty))
            else:
                v = tl.load(grad_ptr + offs, mask=offs < numel).to(ACC)
                tl.store(grad_ptr + offs, (v * scale).to(grad_ptr.dtype.element_ty), mask=offs < numel)


def _tl_acc(dtype: torch.dtype):
    return tl.float64 if acc_dtype(dtype) == torch.float64 else tl.float32


def _target_loss_triton(pred, target, idx, kind, beta, normalize, eps, compute_grad):
    m, b, k = idx.shape
    d = pred.shape[2]
    pred = pred.contiguous()
    if target.stride(2) != 1:
        target = target.contiguous()
    idx = idx.contiguous()
    r = m * b * k
    if r >= 2 ** 31:
        raise ValueError(f"masked_target_loss: {r} rows exceed the kernel's int32 row numbers; split the batch")
    acc = acc_dtype(pred.dtype)
    block_r, block_d, even_d = row_tiles(d)
    block_r = min(block_r, 16)
    grid = (max(1, triton.cdiv(r, block_r)),)
    partials = _dispatch.empty((grid[0],), acc, pred.device)
    dgrad = _dispatch.empty(pred.shape if compute_grad else (0,), pred.dtype, pred.device)
    numel = r * d
    grad_scale = 1.0 if sums_gradient(pred.dtype) or numel == 0 else 1.0 / numel
    _target_loss_kernel[grid](
        pred, target, idx, partials, dgrad if compute_grad else partials,
        r, k, b, d, target.stride(0), target.stride(1),
        float(eps), float(beta), 1.0 / beta if beta > 0 else 0.0, grad_scale,
        KIND=KINDS[kind], NORMALIZE=bool(normalize), COMPUTE_GRAD=bool(compute_grad),
        ACC=_tl_acc(pred.dtype), BLOCK_R=block_r, BLOCK_D=block_d, EVEN_D=even_d, num_warps=4,
    )
    return partials.sum() / numel, dgrad


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
    """Returns ``(mean loss, d(mean loss)/d(pred))`` (of the summed loss for fp16 ``pred``); opaque to torch.compile."""
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
    pred = inputs[0]
    ctx.save_for_backward(output[1])
    ctx.numel = pred.numel()
    ctx.pred_dtype = pred.dtype
    ctx.sums = sums_gradient(pred.dtype)
    ctx.in_place = _dispatch.use_triton(pred) and not torch.compiler.is_compiling()
    ctx.applied = None  # the factor the saved gradient was last scaled by, in place


def _scale_in_place(ctx, dgrad: torch.Tensor, grad_loss: torch.Tensor) -> torch.Tensor:
    """The saved gradient times ``grad_loss`` (``/ numel`` in the summed form), in place: one launch, no bytes
    moved when the factor is 1.  A later backward through the same graph (retain_graph) rescales by the
    ratio to the factor applied before (NaN after a factor of 0: that gradient is gone)."""
    acc = acc_dtype(dgrad.dtype)
    pre = 1.0 / max(1, ctx.numel) if ctx.sums else 1.0
    first = ctx.applied is None
    factor = grad_loss if first else grad_loss.to(acc) * pre / ctx.applied
    record = torch.empty((), dtype=acc, device=dgrad.device)
    if dgrad.numel():
        _scale_grad_kernel[(triton.cdiv(dgrad.numel(), _SCALE_BLOCK),)](
            dgrad, factor, record, dgrad.numel(), pre if first else 1.0,
            ACC=_tl_acc(dgrad.dtype), BLOCK=_SCALE_BLOCK, num_warps=4,
        )
    ctx.applied = record if first else grad_loss.to(acc) * pre
    return dgrad


def _backward(ctx, grad_loss, _grad_dgrad):
    (dgrad,) = ctx.saved_tensors
    if dgrad.numel() == 0 and ctx.numel != 0:
        raise RuntimeError("masked_target_loss was called with compute_grad=False")
    if ctx.in_place:
        grad = _scale_in_place(ctx, dgrad, grad_loss)
    else:
        scale = grad_loss.to(acc_dtype(dgrad.dtype))
        grad = (dgrad * (scale / ctx.numel if ctx.sums else scale)).to(ctx.pred_dtype)
    return grad, None, None, None, None, None, None, None


masked_target_loss_op.register_autograd(_backward, setup_context=_setup_context)
