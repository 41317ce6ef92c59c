"""masked_gather vs float64 reference indexing, on the Triton and torch backends.

Without a GPU the Triton kernels run in the interpreter on CPU tensors; with
``JEPA_REAL_TRITON=1`` on a CUDA machine they are compiled and the tensors live on the GPU.
"""
import pytest
import torch

import kernels

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
    out = kernels.masked_gather(x, idx)
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
    out = kernels.masked_gather(x, idx)
    assert out.shape == (3, 4, 61)
    assert torch.equal(out, torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, 61)))


def test_matches_reference_ijepa_apply_masks(backend):
    """Same rows, same order as the reference code's per-mask gather + cat."""
    x = torch.randn(2, 12, 7, device=DEVICE)
    idx = make_idx(4, 2, 5, 12)
    ref = torch.cat([torch.gather(x, 1, i.unsqueeze(-1).expand(-1, -1, 7)) for i in idx])
    assert torch.equal(kernels.masked_gather(x, idx), ref)


def test_non_contiguous_x(backend):
    base = torch.randn(2, 9, 40, device=DEVICE)
    x = base[:, 1:, 3:33]
    idx = make_idx(2, 2, 3, 8)
    assert torch.equal(kernels.masked_gather(x, idx).cpu().double(), ref_gather(x, idx))


def test_batch_expanded_x(backend):
    """Positional embeddings are passed as ``pos.expand(B, -1, -1)`` (batch stride 0)."""
    pos = torch.randn(1, 9, 61, device=DEVICE, requires_grad=True)
    x = pos.expand(3, -1, -1)
    idx = make_idx(4, 3, 5, 9)
    out = kernels.masked_gather(x, idx)
    assert torch.equal(out.cpu().double(), ref_gather(x, idx))
    grad = torch.randn_like(out)
    out.backward(grad)
    assert rel_err(pos.grad, ref_scatter(grad, idx, 9).sum(0, keepdim=True)) < TOL[torch.float32]


@pytest.mark.parametrize("shape", [(1, 4, 3, 1, 1), (2, 5, 6, 4, 3)])
def test_gradcheck_float64(backend, shape):
    b, n, d, m, k = shape
    x = torch.randn(b, n, d, dtype=torch.float64, device=DEVICE, requires_grad=True)
    idx = make_idx(m, b, k, n)
    assert torch.autograd.gradcheck(lambda t: kernels.masked_gather(t, idx), (x,))


def test_bad_shapes_raise(backend):
    with pytest.raises(ValueError):
        kernels.masked_gather(torch.randn(2, 5, 3), torch.zeros(3, 4, dtype=torch.long))


@pytest.mark.skipif(not GPU, reason="bf16 needs CUDA (with compiled Triton: JEPA_REAL_TRITON=1)")
def test_bf16_cuda(backend):
    x = torch.randn(4, 50, 200, device=DEVICE, dtype=torch.bfloat16, requires_grad=True)
    check(x, make_idx(4, 4, 9, 50), torch.bfloat16)
