"""masked_target_loss vs float64 F.layer_norm + gather + F.mse_loss / F.smooth_l1_loss.

Without a GPU the Triton kernel runs in the interpreter on CPU tensors; with
``JEPA_REAL_TRITON=1`` on a CUDA machine it is compiled and the tensors live on the GPU.
"""
import pytest
import torch
import torch.nn.functional as F

import jepa_kernels

from kernel_backends import DEVICE, GPU, ROW_SHAPES as SHAPES, ROW_TOL as TOL, make_idx, rel_err

LOSSES = [("mse", 1.0), ("smooth_l1", 1.0), ("smooth_l1", 0.3), ("smooth_l1", 0.0)]


def reference(pred, target, idx, kind, beta, normalize, eps=1e-6):
    """Float64 loss and d(loss)/d(pred) the unfused way: full layer norm, gather, loss."""
    pred = pred.detach().cpu().double().requires_grad_()
    t = target.detach().cpu().double()
    idx = idx.cpu()
    if normalize:
        t = F.layer_norm(t, (t.shape[-1],), eps=eps)
    m, b, k = idx.shape
    tg = torch.stack([t[bb, idx[mm, bb]] for mm in range(m) for bb in range(b)])
    if kind == "mse":
        loss = F.mse_loss(pred, tg)
    else:
        loss = F.smooth_l1_loss(pred, tg, beta=beta)
    loss.backward()
    return loss.detach(), pred.grad


@pytest.mark.parametrize("kind,beta", LOSSES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_backward(backend, shape, dtype, kind, beta):
    b, n, d, m, k = shape
    target = (torch.randn(b, n, d) * 3 + 1).to(dtype=dtype, device=DEVICE)
    pred = torch.randn(m * b, k, d, dtype=dtype, device=DEVICE, requires_grad=True)
    idx = make_idx(m, b, k, n)
    loss = jepa_kernels.masked_target_loss(pred, target, idx, kind=kind, beta=beta)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    ref_loss, ref_grad = reference(pred, target, idx, kind, beta, True)
    assert abs(loss.item() - ref_loss.item()) / ref_loss.item() < TOL[dtype]
    loss.backward()
    assert pred.grad.dtype == dtype and not pred.grad.isnan().any()
    assert rel_err(pred.grad, ref_grad) < TOL[dtype]


@pytest.mark.parametrize("kind,beta", [("mse", 1.0), ("smooth_l1", 0.5)])
@pytest.mark.parametrize("shape", [(2, 7, 61, 4, 3), (1, 5, 3, 1, 1)])
def test_no_normalize(backend, shape, kind, beta):
    b, n, d, m, k = shape
    target = torch.randn(b, n, d, device=DEVICE)
    pred = torch.randn(m * b, k, d, device=DEVICE, requires_grad=True)
    idx = make_idx(m, b, k, n)
    loss = jepa_kernels.masked_target_loss(pred, target, idx, kind=kind, beta=beta, normalize=False)
    ref_loss, ref_grad = reference(pred, target, idx, kind, beta, False)
    assert abs(loss.item() - ref_loss.item()) / ref_loss.item() < 1e-5
    loss.backward()
    assert rel_err(pred.grad, ref_grad) < 1e-5


def test_eps_inside_sqrt(backend):
    """A constant-ish target row: eps dominates the variance, so its placement matters."""
    target = torch.full((1, 3, 8), 2.0, device=DEVICE)
    target[0, 1, ::2] += 1e-3
    pred = torch.zeros(1, 2, 8, device=DEVICE, requires_grad=True)
    idx = torch.tensor([[[1, 0]]], device=DEVICE)
    loss = jepa_kernels.masked_target_loss(pred, target, idx, eps=1e-4)
    ref_loss, _ = reference(pred, target, idx, "mse", 1.0, True, eps=1e-4)
    assert abs(loss.item() - ref_loss.item()) / ref_loss.item() < 1e-5


@pytest.mark.parametrize("kind,beta", [("mse", 1.0), ("smooth_l1", 0.7)])
def test_gradcheck_float64(backend, kind, beta):
    b, n, d, m, k = 2, 5, 6, 2, 3
    target = torch.randn(b, n, d, dtype=torch.float64, device=DEVICE)
    pred = torch.randn(m * b, k, d, dtype=torch.float64, device=DEVICE, requires_grad=True)
    idx = make_idx(m, b, k, n)
    fn = lambda p: jepa_kernels.masked_target_loss(p, target, idx, kind=kind, beta=beta)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (pred,))


def test_grad_output_scaling_and_no_target_grad(backend):
    b, n, d, m, k = 2, 7, 61, 4, 3
    target = torch.randn(b, n, d, device=DEVICE, requires_grad=True)
    pred = torch.randn(m * b, k, d, device=DEVICE, requires_grad=True)
    idx = make_idx(m, b, k, n)
    (jepa_kernels.masked_target_loss(pred, target, idx) * 3.0).backward()
    _, ref_grad = reference(pred, target.detach(), idx, "mse", 1.0, True)
    assert rel_err(pred.grad, 3.0 * ref_grad) < 1e-5
    assert target.grad is None


def test_mixed_pred_target_dtypes(backend):
    """Under autocast the target encoder may emit fp16 while pred is fp32 (and vice versa)."""
    b, n, d, m, k = 2, 7, 61, 4, 3
    idx = make_idx(m, b, k, n)
    for p_dt, t_dt in [(torch.float32, torch.float16), (torch.float16, torch.float32)]:
        target = torch.randn(b, n, d, device=DEVICE).to(t_dt)
        pred = torch.randn(m * b, k, d, device=DEVICE, dtype=p_dt, requires_grad=True)
        loss = jepa_kernels.masked_target_loss(pred, target, idx)
        ref_loss, ref_grad = reference(pred, target, idx, "mse", 1.0, True)
        assert abs(loss.item() - ref_loss.item()) / ref_loss.item() < 1e-5
        loss.backward()
        assert pred.grad.dtype == p_dt
        assert rel_err(pred.grad, ref_grad) < TOL[p_dt]


def test_no_grad_forward(backend):
    b, n, d, m, k = 2, 7, 61, 4, 3
    target = torch.randn(b, n, d, device=DEVICE)
    pred = torch.randn(m * b, k, d, device=DEVICE, requires_grad=True)
    idx = make_idx(m, b, k, n)
    with torch.no_grad():
        loss = jepa_kernels.masked_target_loss(pred, target, idx)
    ref_loss, _ = reference(pred, target, idx, "mse", 1.0, True)
    assert abs(loss.item() - ref_loss.item()) / ref_loss.item() < 1e-5


def test_two_dim_idx_and_errors(backend):
    target = torch.randn(3, 10, 5, device=DEVICE)
    pred = torch.randn(3, 4, 5, device=DEVICE)
    idx = torch.randint(0, 10, (3, 4), device=DEVICE)
    loss = jepa_kernels.masked_target_loss(pred, target, idx)
    ref_loss, _ = reference(pred, target, idx.unsqueeze(0), "mse", 1.0, True)
    assert abs(loss.item() - ref_loss.item()) / ref_loss.item() < 1e-5
    with pytest.raises(ValueError):
        jepa_kernels.masked_target_loss(pred, target, idx, kind="l1")
    with pytest.raises(ValueError):
        jepa_kernels.masked_target_loss(pred[:2], target, idx)


@pytest.mark.skipif(not GPU, reason="bf16 needs CUDA (with compiled Triton: JEPA_REAL_TRITON=1)")
@pytest.mark.parametrize("kind,beta", LOSSES)
def test_bf16_cuda(backend, kind, beta):
    b, n, d, m, k = 4, 50, 200, 4, 9
    target = torch.randn(b, n, d, device=DEVICE, dtype=torch.bfloat16)
    pred = torch.randn(m * b, k, d, device=DEVICE, dtype=torch.bfloat16, requires_grad=True)
    idx = make_idx(m, b, k, n)
    loss = jepa_kernels.masked_target_loss(pred, target, idx, kind=kind, beta=beta)
    assert loss.dtype == torch.float32
    ref_loss, ref_grad = reference(pred, target, idx, kind, beta, True)
    assert abs(loss.item() - ref_loss.item()) / ref_loss.item() < 1e-4
    loss.backward()
    assert pred.grad.dtype == torch.bfloat16
    assert rel_err(pred.grad, ref_grad) < TOL[torch.bfloat16]


# ---------------------------------------------------------------- wide rows, the gradient's form, in-place backward

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("d", [768, 1000, 1280])
def test_wide_rows_with_a_large_mean(backend, d, dtype):
    """Rows read in 256/512-wide chunks (1000: a masked tail), statistics merged per chunk; a mean 600x the
    spread must not cancel the variance (fp32 math leaves ~600 * 6e-8 of the mean's rounding; E[x²] - E[x]²
    would be off by ~600² * 6e-8 = 2 %)."""
    tol = max(TOL[dtype], 2e-4)
    b, n, m, k = 2, 5, 2, 3
    target = (torch.randn(b, n, d) * 0.05 + 30.0).to(dtype=dtype, device=DEVICE)
    pred = torch.randn(m * b, k, d, dtype=dtype, device=DEVICE, requires_grad=True)
    idx = make_idx(m, b, k, n)
    for kind, beta in [("mse", 1.0), ("smooth_l1", 0.5)]:
        pred.grad = None
        loss = jepa_kernels.masked_target_loss(pred, target, idx, kind=kind, beta=beta)
        ref_loss, ref_grad = reference(pred, target, idx, kind, beta, True)
        assert abs(loss.item() - ref_loss.item()) / ref_loss.item() < tol
        loss.backward()
        assert rel_err(pred.grad, ref_grad) < tol


def test_gradient_form_per_dtype(backend):
    """The op hands backward d(mean loss)/d(pred), except in fp16 where it is d(summed loss)/d(pred)."""
    from jepa_kernels.target_loss import masked_target_loss_op
    b, n, d, m, k = 2, 7, 61, 4, 3
    idx = make_idx(m, b, k, n)
    target = torch.randn(b, n, d, device=DEVICE)
    for dtype, per in [(torch.float32, m * b * k * d), (torch.float16, 1)]:
        pred = torch.randn(m * b, k, d, device=DEVICE).to(dtype)
        _, dgrad = masked_target_loss_op(pred, target.to(dtype), idx, "mse", 1.0, True, 1e-6, True)
        _, ref = reference(pred, target.to(dtype), idx, "mse", 1.0, True)
        assert rel_err(dgrad, ref * (m * b * k * d) / per) < TOL[dtype]


def test_backward_reuses_the_forward_gradient(backend):
    """Triton: the backward scales the forward's gradient in place (no new buffer; no bytes at all when
    grad_output is 1); the PyTorch path returns a new tensor."""
    b, n, d, m, k = 2, 7, 61, 4, 3
    idx = make_idx(m, b, k, n)
    target = torch.randn(b, n, d, device=DEVICE)
    pred = torch.randn(m * b, k, d, device=DEVICE, requires_grad=True)
    _, ref_grad = reference(pred, target, idx, "mse", 1.0, True)
    saved = []

    def pack(t):
        saved.append(t.data_ptr())
        return t

    for scale in (1.0, 2.5):
        saved.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = jepa_kernels.masked_target_loss(pred, target, idx)
        (grad,) = torch.autograd.grad(loss * scale if scale != 1.0 else loss, pred)
        assert rel_err(grad, scale * ref_grad) < 1e-5
        assert (grad.data_ptr() in saved) == (backend == "triton")


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's 0 * inf
def test_backward_twice_through_one_graph(backend):
    """retain_graph: a second backward rescales correctly; after a zero grad_output the gradient is gone and
    comes back as NaN on the in-place path, never as a silently wrong number."""
    b, n, d, m, k = 2, 7, 61, 4, 3
    idx = make_idx(m, b, k, n)
    target = torch.randn(b, n, d, device=DEVICE)
    pred = torch.randn(m * b, k, d, device=DEVICE, requires_grad=True)
    _, ref_grad = reference(pred, target, idx, "mse", 1.0, True)
    loss = jepa_kernels.masked_target_loss(pred, target, idx)
    for g in (2.0, 5.0, 1.0):
        (grad,) = torch.autograd.grad(loss, pred, torch.tensor(g, device=DEVICE), retain_graph=True)
        assert rel_err(grad, g * ref_grad) < 1e-5
    torch.autograd.grad(loss, pred, torch.tensor(0.0, device=DEVICE), retain_graph=True)
    (grad,) = torch.autograd.grad(loss, pred, torch.tensor(3.0, device=DEVICE))
    assert grad.isnan().all() if backend == "triton" else rel_err(grad, 3.0 * ref_grad) < 1e-5
