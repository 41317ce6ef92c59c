"""masked_gather vs float64 reference indexing, on the Triton and torch backends.

Without a GPU the Triton kernels run in the interpreter on CPU tensors; with
``JEPA_REAL_TRITON=1`` on a CUDA machine they are compiled and the tensors live on the GPU.
"""
import pytest
import torch

import jepa_kernels

from kernel_backends import DEVICE, GPU, ROW_SHAPES as SHAPES, ROW_TOL as TOL, make_idx, rel_err


def ref_gather(x, idx):
    x, idx = x.detach().cpu().double(), idx.cpu()
    m, b, k = idx.shape
    return torch.stack([x[bb, idx[mm, bb]] for mm in range(m) for bb in range(b)]).view(m * b, k, -1)


def ref_scatter(grad, idx, n):
    grad, idx = grad.cpu().double(), idx.cpu()
    m, b, k = idx.shape
    out = torch.zeros(b, n, grad.shape[-1], dtype=torch.float64)
    for mm in range(m):
        for bb in range(b):
            for kk in range(k):
                out[bb, idx[mm, bb, kk]] += grad[mm * b + bb, kk]
    return out


def check(x, idx, dtype):
    b, n, d = x.shape
    m, _, k = idx.shape
    out = jepa_kernels.masked_gather(x, idx)
    assert out.shape == (m * b, k, d) and out.dtype == dtype and out.device == x.device
    assert not out.isnan().any()
    assert torch.equal(out.cpu().double(), ref_gather(x, idx))
    grad = torch.randn_like(out)
    out.backward(grad)
    ref = ref_scatter(grad, idx, n)
    assert x.grad.shape == x.shape and not x.grad.isnan().any()
    assert rel_err(x.grad, ref) < TOL[dtype]
    untouched = ref.abs().sum(-1) == 0
    assert (x.grad.cpu()[untouched] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_backward(backend, shape, dtype):
    b, n, d, m, k = shape
    x = torch.randn(b, n, d, dtype=dtype, device=DEVICE, requires_grad=True)
    check(x, make_idx(m, b, k, n), dtype)


def test_two_dim_idx(backend):
    x = torch.randn(3, 10, 61, device=DEVICE)
    idx = torch.randint(0, 10, (3, 4), device=DEVICE)
    out = jepa_kernels.masked_gather(x, idx)
    assert out.shape == (3, 4, 61)
    assert torch.equal(out, torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, 61)))


def test_matches_reference_ijepa_apply_masks(backend):
    """Same rows, same order as the reference code's per-mask gather + cat."""
    x = torch.randn(2, 12, 7, device=DEVICE)
    idx = make_idx(4, 2, 5, 12)
    ref = torch.cat([torch.gather(x, 1, i.unsqueeze(-1).expand(-1, -1, 7)) for i in idx])
    assert torch.equal(jepa_kernels.masked_gather(x, idx), ref)


def test_non_contiguous_x(backend):
    base = torch.randn(2, 9, 40, device=DEVICE)
    x = base[:, 1:, 3:33]
    idx = make_idx(2, 2, 3, 8)
    assert torch.equal(jepa_kernels.masked_gather(x, idx).cpu().double(), ref_gather(x, idx))


def test_batch_expanded_x(backend):
    """Positional embeddings are passed as ``pos.expand(B, -1, -1)`` (batch stride 0)."""
    pos = torch.randn(1, 9, 61, device=DEVICE, requires_grad=True)
    x = pos.expand(3, -1, -1)
    idx = make_idx(4, 3, 5, 9)
    out = jepa_kernels.masked_gather(x, idx)
    assert torch.equal(out.cpu().double(), ref_gather(x, idx))
    grad = torch.randn_like(out)
    out.backward(grad)
    assert rel_err(pos.grad, ref_scatter(grad, idx, 9).sum(0, keepdim=True)) < TOL[torch.float32]


@pytest.mark.parametrize("shape", [(1, 4, 3, 1, 1), (2, 5, 6, 4, 3)])
def test_gradcheck_float64(backend, shape):
    b, n, d, m, k = shape
    x = torch.randn(b, n, d, dtype=torch.float64, device=DEVICE, requires_grad=True)
    idx = make_idx(m, b, k, n)
    assert torch.autograd.gradcheck(lambda t: jepa_kernels.masked_gather(t, idx), (x,))


def test_bad_shapes_raise(backend):
    with pytest.raises(ValueError):
        jepa_kernels.masked_gather(torch.randn(2, 5, 3), torch.zeros(3, 4, dtype=torch.long))


@pytest.mark.skipif(not GPU, reason="bf16 needs CUDA (with compiled Triton: JEPA_REAL_TRITON=1)")
def test_bf16_cuda(backend):
    x = torch.randn(4, 50, 200, device=DEVICE, dtype=torch.bfloat16, requires_grad=True)
    check(x, make_idx(4, 4, 9, 50), torch.bfloat16)


# ---------------------------------------------------------------- the backward's paths

def distinct_idx(m, b, k, n, shuffled):
    """``[M, B, K]`` indices distinct within each (mask, image) row: sorted, as the mask sampler yields, or not."""
    idx = torch.rand(m, b, n).argsort(-1)[..., :k]
    return (idx if shuffled else idx.sort(-1).values).to(DEVICE)


@pytest.fixture
def deterministic():
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before)


def ordered_scatter(grad, idx, n):
    """The deterministic backward's sum: fp32, gradient rows added in index order, cast to grad's dtype."""
    g = grad.cpu().float()
    m, b, k = idx.shape
    out = torch.zeros(b, n, grad.shape[-1])
    for mm in range(m):
        for bb in range(b):
            for kk in range(k):
                out[bb, idx[mm, bb, kk]] += g[mm * b + bb, kk]
    return out.to(grad.dtype)


# (B, N, D, K): D = 61 (masked columns), 768 and 1280 (256-wide chunks, no idle lanes), 1000 (512 + a masked tail);
# N beyond one block of rows, K beyond one block of indices
UNIQUE_SHAPES = [(2, 9, 61, 5), (3, 40, 768, 17), (1, 80, 1000, 70), (2, 6, 1280, 6)]


@pytest.mark.parametrize("dtype,shuffled", [(torch.float32, False), (torch.float16, True)])
@pytest.mark.parametrize("shape", UNIQUE_SHAPES)
def test_unique_indices_backward_copies_each_row_once(backend, shape, dtype, shuffled):
    """One mask of distinct indices (the context gather): every gradient row lands unchanged, the rest is zero."""
    b, n, d, k = shape
    x = torch.randn(b, n, d, dtype=dtype, device=DEVICE, requires_grad=True)
    idx = distinct_idx(1, b, k, n, shuffled)
    out = jepa_kernels.masked_gather(x, idx)
    assert torch.equal(out.cpu().double(), ref_gather(x, idx))
    grad = torch.randn_like(out)
    out.backward(grad)
    assert x.grad.dtype == dtype
    assert torch.equal(x.grad.cpu(), ordered_scatter(grad, idx, n))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("m", [1, 4])
def test_deterministic_mode_sums_repeats_in_index_order(backend, deterministic, monkeypatch, dtype, m):
    """Repeated indices (within a mask, and across masks) under torch.use_deterministic_algorithms: no atomics,
    the sum taken in index order, the same bits on every run."""
    from jepa_kernels import gather
    monkeypatch.setattr(gather, "_scatter_add_atomic", lambda *a: pytest.fail("atomics in deterministic mode"))
    b, n, d, k = 2, 11, 61, 9
    x = torch.randn(b, n, d, dtype=dtype, device=DEVICE, requires_grad=True)
    idx = make_idx(m, b, k, n)
    idx[0, :, 1] = idx[0, :, 0]  # a repeat within the first mask too
    grad = torch.randn(m * b, k, d, dtype=dtype, device=DEVICE)
    grads = []
    for _ in range(2):
        x.grad = None
        jepa_kernels.masked_gather(x, idx).backward(grad)
        grads.append(x.grad.clone())
    assert torch.equal(grads[0], grads[1])
    assert rel_err(grads[0], ref_scatter(grad, idx, n)) < TOL[dtype]
    if backend == "triton":
        assert torch.equal(grads[0].cpu(), ordered_scatter(grad, idx, n))


def test_atomics_only_for_several_masks_outside_deterministic_mode(backend, monkeypatch):
    """The routing: one mask never takes the atomic path; several masks do, unless deterministic."""
    from jepa_kernels import gather
    calls = []
    real = gather._scatter_add_atomic
    monkeypatch.setattr(gather, "_scatter_add_atomic", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(2, 9, 61, device=DEVICE, requires_grad=True)
    for m in (1, 4):
        idx = make_idx(m, 2, 5, 9)
        out = jepa_kernels.masked_gather(x, idx)
        grad = torch.randn_like(out)
        out.backward(grad)
        assert rel_err(x.grad, ref_scatter(grad, idx, 9)) < TOL[torch.float32]
        x.grad = None
    assert calls == ([1] if backend == "triton" else [])


def test_zero_tokens(backend):
    x = torch.randn(2, 7, 61, device=DEVICE, requires_grad=True)
    idx = torch.zeros(3, 2, 0, dtype=torch.long, device=DEVICE)
    out = jepa_kernels.masked_gather(x, idx)
    assert out.shape == (6, 0, 61)
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))

