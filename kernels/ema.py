"""EMA of the target encoder, ``t = m*t + (1-m)*o`` over every parameter in one launch.

One launch over a cached pointer table: a flat buffer would need the parameters to be
views of one allocation (which the model owns, not us) or a gather/scatter copy that
triples the traffic; the table costs ~40 bytes per 8K elements and is rebuilt only when
a parameter is reallocated.  The momentum is a runtime value (float argument or a
pointer to a 0-d tensor), so changing it every step never recompiles.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch

from . import dispatch as _dispatch
from .reference import ema_update_torch_

_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_BLOCK = 1024
_ITERS = 8
_TABLE_CACHE: dict = {}
_TABLE_CACHE_SIZE = 8

if _dispatch.HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _typed(addr, DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
        p = addr.to(tl.pointer_type(DTYPE))
        if ALIGNED:
            p = tl.multiple_of(p, 16)
        return p

    @triton.jit
    def _load_f32(addr, offs, mask, code, ALIGNED: tl.constexpr):
        if code == 0:
            v = tl.load(_typed(addr, tl.float32, ALIGNED) + offs, mask=mask)
        elif code == 1:
            v = tl.load(_typed(addr, tl.float16, ALIGNED) + offs, mask=mask).to(tl.float32)
        else:
            v = tl.load(_typed(addr, tl.bfloat16, ALIGNED) + offs, mask=mask).to(tl.float32)
        return v

    @triton.jit
    def _store_f32(addr, offs, mask, code, val, ALIGNED: tl.constexpr):
        if code == 0:
            tl.store(_typed(addr, tl.float32, ALIGNED) + offs, val, mask=mask)
        elif code == 1:
            tl.store(_typed(addr, tl.float16, ALIGNED) + offs, val.to(tl.float16), mask=mask)
        else:
            tl.store(_typed(addr, tl.bfloat16, ALIGNED) + offs, val.to(tl.bfloat16), mask=mask)

    @triton.jit
    def _ema_kernel(
        table_ptr, mom_ptr, momentum,
        MOM_FROM_PTR: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr, ITERS: tl.constexpr,
    ):
        """Table row = (target addr, online addr, start, end, dtype codes) of one chunk.

        Full chunks take an unmasked path so that, with 16-byte aligned tensors (ALIGNED),
        loads and stores vectorise; only a tensor's last chunk is masked.
        """
        row = table_ptr + tl.program_id(0) * 5
        t_addr = tl.load(row)
        o_addr = tl.load(row + 1)
        start = tl.multiple_of(tl.load(row + 2), 16)
        end = tl.load(row + 3)
        codes = tl.load(row + 4)
        t_code = codes // 4
        o_code = codes % 4
        if MOM_FROM_PTR:
            m = tl.load(mom_ptr).to(tl.float32)
        else:
            m = momentum
        if end - start == BLOCK * ITERS:
            for i in range(ITERS):
                offs = start + i * BLOCK + tl.arange(0, BLOCK)
                t = _load_f32(t_addr, offs, None, t_code, ALIGNED)
                o = _load_f32(o_addr, offs, None, o_code, ALIGNED)
                _store_f32(t_addr, offs, None, t_code, m * t + (1.0 - m) * o, ALIGNED)
        else:
            for i in range(ITERS):
                offs = start + i * BLOCK + tl.arange(0, BLOCK)
                mask = offs < end
                t = _load_f32(t_addr, offs, mask, t_code, ALIGNED)
                o = _load_f32(o_addr, offs, mask, o_code, ALIGNED)
                _store_f32(t_addr, offs, mask, t_code, m * t + (1.0 - m) * o, ALIGNED)


def _table(ts: List[torch.Tensor], os_: List[torch.Tensor]):
    """Chunk table on the tensors' device and whether every address is 16-byte aligned."""
    key = tuple((t.data_ptr(), o.data_ptr(), t.numel(), t.dtype, o.dtype) for t, o in zip(ts, os_))
    key = (ts[0].device, key)
    table = _TABLE_CACHE.get(key)
    if table is None:
        chunk = _BLOCK * _ITERS
        rows = []
        for t, o in zip(ts, os_):
            n = t.numel()
            code = _CODES[t.dtype] * 4 + _CODES[o.dtype]
            for s in range(0, n, chunk):
                rows.append((t.data_ptr(), o.data_ptr(), s, min(s + chunk, n), code))
        aligned = all(t.data_ptr() % 16 == 0 for t in ts) and all(o.data_ptr() % 16 == 0 for o in os_)
        table = (torch.tensor(rows, dtype=torch.int64).to(ts[0].device), aligned)
        if len(_TABLE_CACHE) >= _TABLE_CACHE_SIZE:
            _TABLE_CACHE.pop(next(iter(_TABLE_CACHE)))
        _TABLE_CACHE[key] = table
    return table


def _ema_triton_(ts: Sequence[torch.Tensor], os_: Sequence[torch.Tensor], momentum) -> None:
    fast_t, fast_o, rest_t, rest_o = [], [], [], []
    device = ts[0].device
    interpreting = _dispatch.interpreting()  # the interpreter can't follow device pointers
    for t, o in zip(ts, os_, strict=True):
        if t.shape != o.shape:
            raise ValueError(f"ema_update_: shape mismatch {tuple(t.shape)} vs {tuple(o.shape)}")
        ok = (
            t.dtype in _CODES and o.dtype in _CODES and t.device == o.device == device
            and t.is_contiguous() and o.is_contiguous()
            and not (t.is_cuda and interpreting)
        )
        if ok and t.numel():
            fast_t.append(t)
            fast_o.append(o)
        elif not ok:
            rest_t.append(t)
            rest_o.append(o)
    if rest_t:
        ema_update_torch_(rest_t, rest_o, momentum)
    if not fast_t:
        return
    table, aligned = _table(fast_t, fast_o)
    if isinstance(momentum, torch.Tensor) and momentum.device == device:
        mom_ptr, mom_val, from_ptr = momentum.detach(), 0.0, True
    else:
        mom_ptr, mom_val, from_ptr = table, float(momentum), False
    _ema_kernel[(table.shape[0],)](
        table, mom_ptr, mom_val,
        MOM_FROM_PTR=from_ptr, ALIGNED=aligned, BLOCK=_BLOCK, ITERS=_ITERS, num_warps=4,
    )


@torch.library.custom_op("jepa_kernels::ema_update_", mutates_args=("target_params",))
def ema_update_op(
    target_params: List[torch.Tensor],
    online_params: List[torch.Tensor],
    momentum: float,
    momentum_t: Optional[torch.Tensor],
) -> None:
    """In-place EMA; ``momentum_t`` (0-d tensor) overrides ``momentum`` when given."""
    if not target_params:
        return
    m: Union[float, torch.Tensor] = momentum if momentum_t is None else momentum_t
    if _dispatch.use_triton(target_params[0]):
        _ema_triton_(target_params, online_params, m)
    else:
        ema_update_torch_(target_params, online_params, m)


@ema_update_op.register_fake
def _(target_params, online_params, momentum, momentum_t):
    return None
