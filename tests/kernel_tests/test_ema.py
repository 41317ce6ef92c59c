"""ema_update_ vs float64 ``m*t + (1-m)*o``: every element must move to its expected value.

Without a GPU the Triton kernel runs in the interpreter on CPU tensors; with
``JEPA_REAL_TRITON=1`` on a CUDA machine it is compiled and the tensors live on the GPU.
"""
import inspect

import pytest
import torch

import jepa_kernels

from kernel_backends import BACKENDS, DEVICE, GPU
# sizes: tiny, odd, a full 8K-element chunk plus a tail, multi-dim weights
SHAPES = [(1,), (3,), (61,), (200, 192), (8193,), (3, 61, 7)]
TOL = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float64: 1e-12}


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Each backend in turn; unlike conftest's fixture nothing is poisoned: the update is in place."""
    jepa_kernels.set_backend(request.param)
    yield request.param
    jepa_kernels.set_backend("auto")


def make_pairs(dtypes, shapes=SHAPES):
    """Targets and online params far enough apart that an unwritten element cannot pass."""
    ts, os_ = [], []
    for i, shape in enumerate(shapes):
        dt = dtypes[i % len(dtypes)]
        t = torch.randn(shape)
        gap = (2.0 + torch.rand(shape)) * torch.where(torch.rand(shape) < 0.5, -1.0, 1.0)
        ts.append(t.to(dtype=dt, device=DEVICE))
        os_.append((t + gap).to(dtype=dt, device=DEVICE))
    return ts, os_


def check(ts, before, os_, m):
    for t, t0, o in zip(ts, before, os_):
        expected = m * t0.double() + (1 - m) * o.double()
        err = (t.double() - expected).abs() / expected.abs().clamp_min(1.0)
        assert err.max().item() < TOL[t.dtype], (t.dtype, tuple(t.shape))
        moved = (t.double() - t0.double()).abs()
        assert (moved > (1 - m)).all()


@pytest.mark.parametrize(
    "dtypes", [[torch.float32], [torch.float16], [torch.float32, torch.float16], [torch.float64]]
)
@pytest.mark.parametrize("momentum_kind", ["float", "tensor"])
def test_ema_matches_reference(backend, dtypes, momentum_kind):
    ts, os_ = make_pairs(dtypes)
    before = [t.clone() for t in ts]
    online_before = [o.clone() for o in os_]
    m = 0.9
    mom = m if momentum_kind == "float" else torch.tensor(m, dtype=torch.float64, device=DEVICE)
    jepa_kernels.ema_update_(ts, os_, mom)
    check(ts, before, os_, m)
    assert all(torch.equal(o, o0) for o, o0 in zip(os_, online_before))


def test_momentum_changes_every_step(backend):
    ts, os_ = make_pairs([torch.float32], [(61,), (8193,)])
    for m in (0.9, 0.95, 0.999):
        before = [t.clone() for t in ts]
        jepa_kernels.ema_update_(ts, os_, m)
        check(ts, before, os_, m)
        before = [t.clone() for t in ts]
        jepa_kernels.ema_update_(ts, os_, torch.tensor(m, dtype=torch.float64, device=DEVICE))
        check(ts, before, os_, m)


def test_mixed_target_online_dtypes(backend):
    ts = [torch.randn(61, device=DEVICE), torch.randn(200, device=DEVICE).half()]
    os_ = [ts[0].half() + 4, ts[1].float() - 4]
    before = [t.clone() for t in ts]
    jepa_kernels.ema_update_(ts, os_, 0.5)
    check(ts, before, os_, 0.5)


def test_parameters_and_non_contiguous(backend):
    lin_t, lin_o = torch.nn.Linear(7, 5).to(DEVICE), torch.nn.Linear(7, 5).to(DEVICE)
    with torch.no_grad():
        for p, q in zip(lin_o.parameters(), lin_t.parameters()):
            p.copy_(q + 4.0)
    base_t = torch.randn(8, 6, device=DEVICE)
    base_o = base_t + 4
    ts = list(lin_t.parameters()) + [base_t.t()]
    os_ = list(lin_o.parameters()) + [base_o.t()]
    before = [t.detach().clone() for t in ts]
    jepa_kernels.ema_update_(ts, os_, 0.9)
    check([t.detach() for t in ts], before, [o.detach() for o in os_], 0.9)
    assert lin_t.weight.grad is None


def test_empty_list_and_errors(backend):
    jepa_kernels.ema_update_([], [], 0.9)
    with pytest.raises(ValueError):
        jepa_kernels.ema_update_([torch.zeros(3)], [], 0.9)


@pytest.mark.skipif(not jepa_kernels.HAS_TRITON, reason="triton not installed")
def test_momentum_is_runtime_argument():
    """Changing the momentum must not recompile: it may not be a constexpr parameter."""
    import triton.language as tl

    from jepa_kernels import ema

    fn = getattr(ema._ema_kernel, "fn", ema._ema_kernel)
    params = inspect.signature(fn).parameters
    assert params["momentum"].annotation is not tl.constexpr
    assert params["mom_ptr"].annotation is not tl.constexpr


@pytest.mark.skipif(not GPU, reason="bf16 needs CUDA (with compiled Triton: JEPA_REAL_TRITON=1)")
@pytest.mark.parametrize("momentum_kind", ["float", "tensor"])
def test_bf16_cuda(backend, momentum_kind):
    ts, os_ = make_pairs([torch.bfloat16, torch.float32, torch.bfloat16])
    before = [t.clone() for t in ts]
    mom = 0.9 if momentum_kind == "float" else torch.tensor(0.9, dtype=torch.float64, device=DEVICE)
    jepa_kernels.ema_update_(ts, os_, mom)
    check(ts, before, os_, 0.9)


def test_unaligned_views(backend):
    """Contiguous views at odd element offsets (not 16-byte aligned) take the unhinted path."""
    base_t = torch.randn(8200, device=DEVICE)
    base_o = torch.empty(8200, device=DEVICE)
    ts, os_ = [base_t[1:8194], base_t[8195:]], [base_o[3:8196], base_o[1:6]]
    for t, o in zip(ts, os_):
        o.copy_(t + 3.0)
    before = [t.clone() for t in ts]
    outside = base_t[[0, 8194]].clone()
    jepa_kernels.ema_update_(ts, os_, 0.8)
    check(ts, before, os_, 0.8)
    assert torch.equal(base_t[[0, 8194]], outside)


# ---------------------------------------------------------------- the launch plan

@pytest.fixture
def triton_backend():
    if not jepa_kernels.HAS_TRITON or not (GPU or jepa_kernels.dispatch.interpreting()):
        pytest.skip("triton not installed, or compiled Triton without a GPU")
    jepa_kernels.set_backend("triton")
    yield
    jepa_kernels.set_backend("auto")


def test_plan_is_reused_and_rebuilt_when_a_storage_changes(triton_backend):
    from jepa_kernels import ema
    ema.clear_plans()
    ts, os_ = make_pairs([torch.float32], [(61,), (8193,), (3, 7)])
    params = [torch.nn.Parameter(t, requires_grad=False) for t in ts]
    del ts  # the parameters alone own their storages
    jepa_kernels.ema_update_(params, os_, 0.9)
    plan = ema.plan_for(params, os_)
    before = [p.detach().clone() for p in params]
    jepa_kernels.ema_update_(params, os_, 0.9)
    assert list(ema._PLANS.values()) == [plan]  # same plan, nothing rebuilt
    check([p.detach() for p in params], before, os_, 0.9)

    old_ptr = params[1].data_ptr()
    params[1].data = params[1].data.clone()  # new storage for one parameter (as .to(), .half() or a reload would do)
    before = [p.detach().clone() for p in params]
    jepa_kernels.ema_update_(params, os_, 0.9)
    check([p.detach() for p in params], before, os_, 0.9)
    assert plan not in ema._PLANS.values() and len(ema._PLANS) == 1  # the stale plan let the old storage go
    assert old_ptr not in ema.plan_for(params, os_).table[:, 0].tolist()


def test_a_plan_dies_with_a_storage_and_a_new_tensor_at_the_same_address_gets_its_own(triton_backend):
    """A plan keeps no tensor alive and is dead the moment one of its storages is freed: a new storage handed
    the same memory (same addresses, same cache key) gets a plan of its own."""
    import weakref

    from jepa_kernels import ema
    ema.clear_plans()
    (memory,), os_ = make_pairs([torch.float32], [(8193,)])  # memory outlives the tensors over it below
    target = torch.from_dlpack(memory)  # a storage of its own over ``memory``
    storage = weakref.ref(target.untyped_storage())
    plan = ema.plan_for([target], os_)
    del target
    kept = storage() is not None
    assert not kept, "the plan kept the tensor's storage alive"
    assert plan.dead
    again = torch.from_dlpack(memory)
    assert again.data_ptr() == memory.data_ptr()
    assert ema.plan_for([again], os_) is not plan and plan not in ema._PLANS.values()
    before = [again.clone()]
    jepa_kernels.ema_update_([again], os_, 0.9)
    check([again], before, os_, 0.9)


def test_alignment_is_per_tensor(triton_backend):
    """One unaligned pair does not take the 16-byte hints (vector loads) from the others."""
    from jepa_kernels import ema
    base_t, base_o = torch.randn(9000, device=DEVICE), torch.randn(9000, device=DEVICE)
    ts = [torch.randn(8192, device=DEVICE), base_t[1:8194], torch.randn(100, device=DEVICE)]
    os_ = [t + 3.0 for t in (ts[0],)] + [base_o[1:8194], ts[2] - 3.0]
    os_[1].copy_(ts[1] + 3.0)
    before = [t.clone() for t in ts]
    jepa_kernels.ema_update_(ts, os_, 0.7)
    check(ts, before, os_, 0.7)
    codes = ema.plan_for(ts, os_).table[:, 4].cpu()
    aligned = (codes >= ema._ALIGNED).tolist()
    assert aligned == [True, False, False, True]  # chunks: ts[0]; ts[1] in two (8193 elements); ts[2]


def test_momentum_tensor_is_read_at_every_launch(triton_backend):
    """A device momentum is read by the kernel, not frozen into the plan or the launch (graph-safe)."""
    ts, os_ = make_pairs([torch.float32], [(61,), (8193,)])
    start = [t.clone() for t in ts]
    mom = torch.tensor(0.9, dtype=torch.float64, device=DEVICE)
    for m in (0.9, 0.5, 0.99):
        mom.fill_(m)
        for t, t0 in zip(ts, start):
            t.copy_(t0)  # same storage (same plan), the original gap
        before = [t.clone() for t in ts]
        jepa_kernels.ema_update_(ts, os_, mom)
        check(ts, before, os_, m)


def test_update_counts_as_an_in_place_change(backend):
    """A target tensor saved for a backward and then updated makes that backward fail, as any in-place op would."""
    target = torch.randn(61, device=DEVICE)
    x = torch.randn(61, device=DEVICE, requires_grad=True)
    y = (x * target).sum()  # saves target for backward
    jepa_kernels.ema_update_([target], [torch.randn(61, device=DEVICE)], 0.9)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()
