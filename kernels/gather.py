"""Masked row gather for I-JEPA (``apply_masks``): all masks in one launch, scatter-add backward.

``out[m*B + b, k, :] = x[b, idx[m, b, k], :]`` replaces the reference code's per-mask
``torch.gather`` with a ``D``-expanded index followed by ``torch.cat``.
"""
from __future__ import annotations

import torch

from . import dispatch as _dispatch
from .reference import acc_dtype, masked_gather_backward_torch, masked_gather_torch

if _dispatch.HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _row_tile(idx_ptr, R, K, B, D, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
        """This program's BLOCK_R output rows and BLOCK_D columns: row ids, columns, mask, source patch and image."""
        rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        rmask = rows < R
        mask = rmask[:, None] & (cols < D)[None, :]
        rows = rows.to(tl.int64)
        n = tl.load(idx_ptr + rows, mask=rmask, other=0).to(tl.int64)
        return rows, cols, mask, n, (rows // K) % B

    @triton.jit
    def _gather_fwd_kernel(
        x_ptr, idx_ptr, out_ptr,
        R, K, B, D, stride_xb, stride_xn,
        BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        """Copy BLOCK_R output rows (one D-chunk each) from their source rows in x."""
        rows, cols, mask, n, b = _row_tile(idx_ptr, R, K, B, D, BLOCK_R, BLOCK_D)
        src = x_ptr + (b * stride_xb + n * stride_xn)[:, None] + cols[None, :]
        vals = tl.load(src, mask=mask)
        tl.store(out_ptr + (rows * D)[:, None] + cols[None, :], vals, mask=mask)

    @triton.jit
    def _gather_bwd_kernel(
        grad_ptr, idx_ptr, acc_ptr,
        R, K, B, N, D,
        BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        """Atomically add BLOCK_R gradient rows into the zeroed [B, N, D] accumulator."""
        rows, cols, mask, n, b = _row_tile(idx_ptr, R, K, B, D, BLOCK_R, BLOCK_D)
        g = tl.load(grad_ptr + (rows * D)[:, None] + cols[None, :], mask=mask)
        dst = acc_ptr + ((b * N + n) * D)[:, None] + cols[None, :]
        tl.atomic_add(dst, g.to(acc_ptr.dtype.element_ty), mask=mask, sem="relaxed")


def _blocks(d: int):
    block_d = min(triton.next_power_of_2(d), 1024)
    block_r = max(1, 4096 // block_d)
    return block_r, block_d


def _gather_triton(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    m, b, k = idx.shape
    d = x.shape[2]
    if x.stride(2) != 1:
        x = x.contiguous()
    idx = idx.contiguous()
    r = m * b * k
    out = _dispatch.empty((m * b, k, d), x.dtype, x.device)
    if r == 0 or d == 0:
        return out
    block_r, block_d = _blocks(d)
    grid = (triton.cdiv(r, block_r), triton.cdiv(d, block_d))
    _gather_fwd_kernel[grid](
        x, idx, out, r, k, b, d, x.stride(0), x.stride(1),
        BLOCK_R=block_r, BLOCK_D=block_d, num_warps=4,
    )
    return out


def _gather_backward_triton(grad: torch.Tensor, idx: torch.Tensor, n: int) -> torch.Tensor:
    m, b, k = idx.shape
    d = grad.shape[2]
    grad = grad.contiguous()
    idx = idx.contiguous()
    r = m * b * k
    acc = torch.zeros((b, n, d), dtype=acc_dtype(grad.dtype), device=grad.device)
    if r and d:
        block_r, block_d = _blocks(d)
        grid = (triton.cdiv(r, block_r), triton.cdiv(d, block_d))
        _gather_bwd_kernel[grid](
            grad, idx, acc, r, k, b, n, d,
            BLOCK_R=block_r, BLOCK_D=block_d, num_warps=4,
        )
    return acc if acc.dtype == grad.dtype else acc.to(grad.dtype)


@torch.library.custom_op("jepa_kernels::masked_gather", mutates_args=())
def masked_gather_op(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``[B, N, D]`` x, ``[M, B, K]`` idx -> ``[M*B, K, D]``; opaque to torch.compile."""
    if _dispatch.use_triton(x):
        return _gather_triton(x, idx)
    return masked_gather_torch(x, idx)


@masked_gather_op.register_fake
def _(x, idx):
    m, b, k = idx.shape
    return x.new_empty((m * b, k, x.shape[2]))


@torch.library.custom_op("jepa_kernels::masked_gather_backward", mutates_args=())
def masked_gather_backward_op(grad: torch.Tensor, idx: torch.Tensor, n: int) -> torch.Tensor:
    """Scatter-add ``[M*B, K, D]`` grad into a zero ``[B, N, D]`` tensor."""
    if _dispatch.use_triton(grad):
        return _gather_backward_triton(grad, idx, n)
    return masked_gather_backward_torch(grad, idx, n)


@masked_gather_backward_op.register_fake
def _(grad, idx, n):
    return grad.new_empty((idx.shape[1], n, grad.shape[2]))


def _setup_context(ctx, inputs, output):
    x, idx = inputs
    ctx.save_for_backward(idx)
    ctx.n = x.shape[1]


def _backward(ctx, grad):
    (idx,) = ctx.saved_tensors
    if not ctx.needs_input_grad[0]:
        return None, None
    return masked_gather_backward_op(grad, idx, ctx.n), None


masked_gather_op.register_autograd(_backward, setup_context=_setup_context)
