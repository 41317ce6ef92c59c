"""EMA of the target encoder, ``t = m*t + (1-m)*o`` over every parameter in one launch.

One launch over a chunk table: a flat buffer would need the parameters to be views of one
allocation (which the model owns, not us) or a gather/scatter copy that triples the traffic.
The table (one int64 row of 5 per 8K elements: target address, online address, start, end,
dtype codes and alignment) is part of a launch plan built once per list of tensors and cached
by their storage addresses, so a call only reads 2 addresses per pair, looks the plan up and
launches: no detach, no checks, no table work, no copy.  The plan holds weak references to the
tensors' storages (a plan keeps no model alive): the moment one of them is freed the plan is
marked dead, so a new tensor at the same address never reuses it; dead plans are dropped at the
next miss.

Each chunk knows whether its pair is 16-byte aligned, so one unaligned tensor no longer turns
off vector loads for the others.  The momentum is read from a device tensor when one is passed
(graph-safe: a captured launch reads the current value) or is a runtime float argument; either
way it changes every step without recompiling.
"""
from __future__ import annotations

import weakref
from collections import OrderedDict
from typing import List, Optional, Sequence, Union

import torch

from . import dispatch as _dispatch
from .reference import ema_update_torch_

_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_ALIGNED = 16  # code bit: both tensors of the pair start on a 16-byte boundary
_BLOCK = 1024
_ITERS = 8
CHUNK = _BLOCK * _ITERS
_PLANS: "OrderedDict[tuple, Plan]" = OrderedDict()
PLAN_CACHE_SIZE = 4
_ptr = torch.Tensor.data_ptr

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
    def _chunk(t_addr, o_addr, start, end, t_code, o_code, m,
               FULL: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr, ITERS: tl.constexpr):
        for i in range(ITERS):
            offs = start + i * BLOCK + tl.arange(0, BLOCK)
            if FULL:
                t = _load_f32(t_addr, offs, None, t_code, ALIGNED)
                o = _load_f32(o_addr, offs, None, o_code, ALIGNED)
                _store_f32(t_addr, offs, None, t_code, m * t + (1.0 - m) * o, ALIGNED)
            else:
                mask = offs < end
                t = _load_f32(t_addr, offs, mask, t_code, ALIGNED)
                o = _load_f32(o_addr, offs, mask, o_code, ALIGNED)
                _store_f32(t_addr, offs, mask, t_code, m * t + (1.0 - m) * o, ALIGNED)

    @triton.jit
    def _ema_kernel(
        table_ptr, mom_ptr, momentum,
        MOM_FROM_PTR: tl.constexpr, BLOCK: tl.constexpr, ITERS: tl.constexpr,
    ):
        """Table row = (target addr, online addr, start, end, codes) of one chunk.

        A full chunk of an aligned pair takes an unmasked path with 16-byte hints (128-bit loads and
        stores); a full unaligned one an unmasked path without hints; a tensor's last chunk is masked.
        """
        row = table_ptr + tl.program_id(0) * 5
        t_addr = tl.load(row)
        o_addr = tl.load(row + 1)
        start = tl.load(row + 2)
        end = tl.load(row + 3)
        codes = tl.load(row + 4)
        aligned = codes >= 16
        t_code = (codes % 16) // 4
        o_code = codes % 4
        if MOM_FROM_PTR:
            m = tl.load(mom_ptr).to(tl.float32)
        else:
            m = momentum
        if end - start == BLOCK * ITERS:
            if aligned:
                _chunk(t_addr, o_addr, tl.multiple_of(start, 16), end, t_code, o_code, m, True, True, BLOCK, ITERS)
            else:
                _chunk(t_addr, o_addr, start, end, t_code, o_code, m, True, False, BLOCK, ITERS)
        else:
            _chunk(t_addr, o_addr, start, end, t_code, o_code, m, False, False, BLOCK, ITERS)


class Plan:
    """What a call needs for one list of tensor pairs: the chunk table on their device and the pairs the
    kernel cannot take (other dtypes, devices or layouts), which go through the PyTorch path."""

    __slots__ = ("device", "table", "rows", "rest", "keep", "dead", "watch", "__weakref__")

    def __init__(self, ts: Sequence[torch.Tensor], os_: Sequence[torch.Tensor]):
        self.device = ts[0].device
        interpreting = _dispatch.interpreting()  # the interpreter can't follow device pointers
        chunks, self.rest = [], []
        for i, (t, o) in enumerate(zip(ts, os_, strict=True)):
            if t.shape != o.shape:
                raise ValueError(f"ema_update_: shape mismatch {tuple(t.shape)} vs {tuple(o.shape)}")
            fast = (t.dtype in _CODES and o.dtype in _CODES and t.device == o.device == self.device
                    and t.is_contiguous() and o.is_contiguous() and not (t.is_cuda and interpreting))
            if not fast:
                self.rest.append(i)
            elif t.numel():
                chunks.append(_chunk_rows(t, o))
        self.keep = []
        table = torch.cat(chunks) if chunks else torch.empty((0, 5), dtype=torch.int64)
        self.rows = table.shape[0]
        if self.device.type == "cuda" and self.rows:
            staging = table.pin_memory()  # the one copy of the plan is asynchronous, from pinned memory
            self.keep.append(staging)
            table = staging.to(self.device, non_blocking=True)
        self.table = table.to(self.device)
        self.dead = False
        self.watch = _watch(self, [*ts, *os_])


def _watch(plan: Plan, tensors: Sequence[torch.Tensor]) -> list:
    """Weak references to the storages of ``tensors`` that mark ``plan`` dead when any of them is freed.

    A storage's Python object lives as long as the storage does (torch keeps it for the tensors that
    share it), so its weak reference dies exactly when the memory is released.
    """
    plan_ref = weakref.ref(plan)

    def freed(_):
        alive = plan_ref()
        if alive is not None:
            alive.dead = True
    return [weakref.ref(t.untyped_storage(), freed) for t in tensors if t.numel()]


def _chunk_rows(t: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
    n = t.numel()
    starts = torch.arange(0, n, CHUNK, dtype=torch.int64)
    aligned = t.data_ptr() % 16 == 0 and o.data_ptr() % 16 == 0
    rows = torch.empty((starts.numel(), 5), dtype=torch.int64)
    rows[:, 0] = t.data_ptr()
    rows[:, 1] = o.data_ptr()
    rows[:, 2] = starts
    rows[:, 3] = (starts + CHUNK).clamp_(max=n)
    rows[:, 4] = _CODES[t.dtype] * 4 + _CODES[o.dtype] + (_ALIGNED if aligned else 0)
    return rows


def plan_for(ts: Sequence[torch.Tensor], os_: Sequence[torch.Tensor]) -> Plan:
    """The cached plan for these tensors' storages; built (and dead plans dropped) on a miss."""
    key = tuple(map(_ptr, ts)) + tuple(map(_ptr, os_))
    plan = _PLANS.get(key)
    if plan is None or plan.dead:
        for old in [k for k, p in _PLANS.items() if p.dead]:
            del _PLANS[old]
        plan = _PLANS[key] = Plan(ts, os_)
        if len(_PLANS) > PLAN_CACHE_SIZE:
            _PLANS.popitem(last=False)
    return plan


def clear_plans() -> None:
    """Forget every cached plan (e.g. after replacing a parameter's data by a differently shaped view of itself)."""
    _PLANS.clear()


def _launch(plan: Plan, momentum) -> None:
    if isinstance(momentum, torch.Tensor) and momentum.device == plan.device:
        mom_ptr, mom_val, from_ptr = momentum, 0.0, True
    else:
        mom_ptr, mom_val, from_ptr = plan.table, float(momentum), False
    _ema_kernel[(plan.rows,)](
        plan.table, mom_ptr, mom_val, MOM_FROM_PTR=from_ptr, BLOCK=_BLOCK, ITERS=_ITERS, num_warps=4,
    )


def ema_update_now(ts: Sequence[torch.Tensor], os_: Sequence[torch.Tensor], momentum) -> None:
    """The eager EMA: the PyTorch path, or a cached plan and one launch; target versions bumped as an in-place op would."""
    if not ts:
        return
    if not _dispatch.use_triton(ts[0]):
        with torch.no_grad():
            ema_update_torch_(ts, os_, momentum)
        return
    plan = plan_for(ts, os_)
    if plan.rest:
        with torch.no_grad():
            ema_update_torch_([ts[i] for i in plan.rest], [os_[i] for i in plan.rest], momentum)
    if plan.rows:
        _launch(plan, momentum)
        torch.autograd.graph.increment_version(ts)


@torch.library.custom_op("jepa_kernels::ema_update_", mutates_args=("target_params",))
def ema_update_op(
    target_params: List[torch.Tensor],
    online_params: List[torch.Tensor],
    momentum: float,
    momentum_t: Optional[torch.Tensor],
) -> None:
    """In-place EMA as one opaque node for torch.compile; ``momentum_t`` (0-d tensor) overrides ``momentum``."""
    m: Union[float, torch.Tensor] = momentum if momentum_t is None else momentum_t
    ema_update_now(target_params, online_params, m)


@ema_update_op.register_fake
def _(target_params, online_params, momentum, momentum_t):
    return None
