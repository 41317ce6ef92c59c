"""Masked row gather for I-JEPA (``apply_masks``): all masks in one launch; a backward that writes each row once.

``out[m*B + b, k, :] = x[b, idx[m, b, k], :]`` replaces the reference code's per-mask
``torch.gather`` with a ``D``-expanded index followed by ``torch.cat``.  Backward
(``grad_x[b, n] = sum of the grad rows gathered from x[b, n]``):

* one mask (``M = 1``, the context gather), or ``torch.are_deterministic_algorithms_enabled()``:
  one pass over the rows of ``grad_x``; each program finds, for its rows, the gradient rows that
  index them (a scan of that image's indices in registers), copies the one it finds — or sums,
  in index order, the several it finds when indices repeat — and writes every row of ``grad_x``
  once, zeros included, in the gradient's dtype.  No zero-fill, no atomics, deterministic.
  Unique indices (what the mask sampler yields) take the copy path; the kernel detects repeats
  itself, so no caller flag and no host-side check (which would sync) are needed.
* several masks (``M > 1``, blocks that repeat rows) outside deterministic mode: fp32
  ``atomic_add`` into a zeroed buffer, cast once to the gradient's dtype.

Row numbers are int32 (``M*B*K`` and ``B*N`` must be < 2**31); element offsets are formed per
row in int64.  ``K`` and ``B`` are not specialised, so a new token count never recompiles.
"""
from __future__ import annotations

import torch

from . import dispatch as _dispatch
from .reference import acc_dtype, masked_gather_backward_torch, masked_gather_torch

MAX_ROWS = 2 ** 31 - 1  # also the backward's "no gradient row" marker

if _dispatch.HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def chunk_cols(c, D, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr):
        """Columns ``c .. c+BLOCK_D`` and whether each is inside the row (all are when EVEN_D)."""
        cols = c + tl.arange(0, BLOCK_D)
        if EVEN_D:
            inside = tl.full([BLOCK_D], 1, tl.int1)
        else:
            inside = cols < D
        return cols, inside

    @triton.jit(do_not_specialize=["R", "K", "B"])
    def _gather_fwd_kernel(
        x_ptr, idx_ptr, out_ptr,
        R, K, B, D, stride_xb, stride_xn,
        BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr,
    ):
        """Copy BLOCK_R whole output rows (D in BLOCK_D chunks) from their source rows in x."""
        rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        rmask = rows < R
        n = tl.load(idx_ptr + rows, mask=rmask, other=0).to(tl.int32)
        b = (rows // K) % B
        src = x_ptr + (b.to(tl.int64) * stride_xb + n.to(tl.int64) * stride_xn)[:, None]
        dst = out_ptr + (rows.to(tl.int64) * D)[:, None]
        for c in range(0, D, BLOCK_D):
            cols, inside = chunk_cols(c, D, BLOCK_D, EVEN_D)
            mask = rmask[:, None] & inside[None, :]
            tl.store(dst + cols[None, :], tl.load(src + cols[None, :], mask=mask), mask=mask)

    @triton.jit
    def _next_rows(idx_ptr, ns, after, b, M, B, K, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        """Per destination row ``ns``: the first gradient row past ``after`` whose index is that row
        (2**31 - 1 if none), and how many gradient rows index it in all."""
        first = tl.full([BLOCK_N], 2147483647, tl.int32)
        count = tl.zeros([BLOCK_N], tl.int32)
        for m in range(0, M):
            base = (m * B + b) * K
            for k0 in range(0, K, BLOCK_K):
                ks = k0 + tl.arange(0, BLOCK_K)
                v = tl.load(idx_ptr + base.to(tl.int64) + ks, mask=ks < K, other=-1).to(tl.int32)
                hit = v[None, :] == ns[:, None]
                count += tl.sum(hit.to(tl.int32), axis=1)
                later = hit & ((base + ks)[None, :] > after[:, None])
                first = tl.minimum(first, tl.min(tl.where(later, (base + ks)[None, :], 2147483647), axis=1))
        return first, count

    @triton.jit(do_not_specialize=["M", "K", "B"])
    def _gather_bwd_rows_kernel(
        grad_ptr, idx_ptr, out_ptr,
        M, B, K, N, D,
        ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
        EVEN_D: tl.constexpr,
    ):
        """BLOCK_N rows of grad_x for one image, each written once: the gradient row that indexes it,
        the sum of those that do (in index order), or zeros."""
        blocks_n = tl.cdiv(N, BLOCK_N)
        b = tl.program_id(0) // blocks_n
        ns = (tl.program_id(0) % blocks_n) * BLOCK_N + tl.arange(0, BLOCK_N)
        nmask = ns < N
        first, count = _next_rows(idx_ptr, ns, tl.full([BLOCK_N], -1, tl.int32), b, M, B, K, BLOCK_N, BLOCK_K)
        repeats = tl.max(count, axis=0)
        found = first < 2147483647
        src = grad_ptr + (first.to(tl.int64) * D)[:, None]
        dst = out_ptr + ((b * N + ns).to(tl.int64) * D)[:, None]
        for c in range(0, D, BLOCK_D):
            cols, inside = chunk_cols(c, D, BLOCK_D, EVEN_D)
            acc = tl.load(src + cols[None, :], mask=found[:, None] & inside[None, :], other=0.0).to(ACC)
            if repeats > 1:  # some row is indexed more than once: add the later gradient rows in order
                cur = first
                for _ in range(1, repeats):
                    cur, _count = _next_rows(idx_ptr, ns, cur, b, M, B, K, BLOCK_N, BLOCK_K)
                    more = cur < 2147483647
                    acc += tl.load(grad_ptr + (cur.to(tl.int64) * D)[:, None] + cols[None, :],
                                   mask=more[:, None] & inside[None, :], other=0.0).to(ACC)
            tl.store(dst + cols[None, :], acc.to(out_ptr.dtype.element_ty), mask=nmask[:, None] & inside[None, :])

    @triton.jit(do_not_specialize=["R", "K", "B"])
    def _gather_bwd_atomic_kernel(
        grad_ptr, idx_ptr, acc_ptr,
        R, K, B, N, D,
        BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr,
    ):
        """Atomically add BLOCK_R gradient rows into the zeroed fp32 [B, N, D] accumulator."""
        rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        rmask = rows < R
        n = tl.load(idx_ptr + rows, mask=rmask, other=0).to(tl.int32)
        b = (rows // K) % B
        src = grad_ptr + (rows.to(tl.int64) * D)[:, None]
        dst = acc_ptr + ((b * N + n).to(tl.int64) * D)[:, None]
        for c in range(0, D, BLOCK_D):
            cols, inside = chunk_cols(c, D, BLOCK_D, EVEN_D)
            mask = rmask[:, None] & inside[None, :]
            g = tl.load(src + cols[None, :], mask=mask)
            tl.atomic_add(dst + cols[None, :], g.to(acc_ptr.dtype.element_ty), mask=mask, sem="relaxed")


def row_tiles(d: int) -> tuple[int, int, bool]:
    """``(BLOCK_R, BLOCK_D, EVEN_D)`` for rows of width ``d``: the widest power of two up to 512 that divides
    ``d`` (256 for D = 768 and 1280, 512 for 1024: no idle lanes), else the next power of two with a
    masked tail; ~4K elements per tile."""
    low = d & -d
    block_d = min(low, 512) if low >= 16 else min(triton.next_power_of_2(max(d, 1)), 512)
    return max(1, min(128, 4096 // block_d)), block_d, d % block_d == 0


def _check_rows(*counts: int):
    if max(counts) > MAX_ROWS:
        raise ValueError(f"masked_gather: {max(counts)} rows exceed the kernels' int32 row numbers "
                         f"({MAX_ROWS}); split the batch")


def _gather_triton(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    m, b, k = idx.shape
    d = x.shape[2]
    if x.stride(2) != 1:
        x = x.contiguous()
    idx = idx.contiguous()
    r = m * b * k
    _check_rows(r)
    out = _dispatch.empty((m * b, k, d), x.dtype, x.device)
    if r == 0 or d == 0:
        return out
    block_r, block_d, even_d = row_tiles(d)
    _gather_fwd_kernel[(triton.cdiv(r, block_r),)](
        x, idx, out, r, k, b, d, x.stride(0), x.stride(1),
        BLOCK_R=block_r, BLOCK_D=block_d, EVEN_D=even_d, num_warps=4,
    )
    return out


def uses_atomics(m: int) -> bool:
    """Whether the Triton backward of an ``M``-mask gather adds with atomics (not deterministic)."""
    return m > 1 and not torch.are_deterministic_algorithms_enabled()


def _gather_backward_triton(grad: torch.Tensor, idx: torch.Tensor, n: int) -> torch.Tensor:
    m, b, k = idx.shape
    d = grad.shape[2]
    grad = grad.contiguous()
    idx = idx.contiguous()
    _check_rows(m * b * k, b * n)
    if uses_atomics(m):
        return _scatter_add_atomic(grad, idx, n)
    out = _dispatch.empty((b, n, d), grad.dtype, grad.device)
    if b * n == 0 or d == 0:
        return out
    _, block_d, even_d = row_tiles(d)
    block_n = max(1, min(32, 4096 // block_d))
    _gather_bwd_rows_kernel[(b * triton.cdiv(n, block_n),)](
        grad, idx, out, m, b, k, n, d,
        ACC=tl.float64 if grad.dtype == torch.float64 else tl.float32,
        BLOCK_N=block_n, BLOCK_K=64, BLOCK_D=block_d, EVEN_D=even_d, num_warps=4,
    )
    return out


def _scatter_add_atomic(grad: torch.Tensor, idx: torch.Tensor, n: int) -> torch.Tensor:
    m, b, k = idx.shape
    d = grad.shape[2]
    r = m * b * k
    acc = torch.zeros((b, n, d), dtype=acc_dtype(grad.dtype), device=grad.device)
    if r and d:
        block_r, block_d, even_d = row_tiles(d)
        _gather_bwd_atomic_kernel[(triton.cdiv(r, block_r),)](
            grad, idx, acc, r, k, b, n, d,
            BLOCK_R=block_r, BLOCK_D=block_d, EVEN_D=even_d, num_warps=4,
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
    """Sum ``[M*B, K, D]`` grad rows into ``[B, N, D]`` at their indices (zeros elsewhere)."""
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
