"""The ops are opaque custom ops: torch.compile(fullgraph=True) traces through them."""
import pytest
import torch

import jepa_kernels
from jepa_kernels.ema import ema_update_op
from jepa_kernels.gather import masked_gather_backward_op, masked_gather_op
from jepa_kernels.target_loss import masked_target_loss_op


@pytest.fixture(autouse=True)
def _torch_backend():
    jepa_kernels.set_backend("torch")
    yield
    jepa_kernels.set_backend("auto")


def step(x, w, target, ctx_idx, pred_idx):
    h = jepa_kernels.masked_gather(x, ctx_idx) @ w
    pred = torch.tanh(jepa_kernels.masked_gather(h, pred_idx))
    return jepa_kernels.masked_target_loss(pred, target, pred_idx, kind="smooth_l1", beta=0.5)


def test_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    b, n, d = 2, 12, 8
    ctx_idx = torch.randint(0, n, (b, 6))
    pred_idx = torch.randint(0, 6, (3, b, 4))
    x = torch.randn(b, n, d, requires_grad=True)
    w = torch.randn(d, d, requires_grad=True)
    target = torch.randn(b, 6, d)

    eager = step(x, w, target, ctx_idx, pred_idx)
    gx, gw = torch.autograd.grad(eager, (x, w))
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    out = compiled(x, w, target, ctx_idx, pred_idx)
    cx, cw = torch.autograd.grad(out, (x, w))
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(cx, gx)
    torch.testing.assert_close(cw, gw)

    # a second batch size exercises the fake (meta) kernels with symbolic shapes
    b2 = 3
    ctx_idx2 = torch.randint(0, n, (b2, 6))
    pred_idx2 = torch.randint(0, 6, (3, b2, 4))
    x2 = torch.randn(b2, n, d, requires_grad=True)
    target2 = torch.randn(b2, 6, d)
    torch.testing.assert_close(
        compiled(x2, w, target2, ctx_idx2, pred_idx2), step(x2, w, target2, ctx_idx2, pred_idx2)
    )


def test_opcheck_custom_ops():
    """Schema, fake (meta) kernels and autograd registration are consistent."""
    x = torch.randn(2, 7, 5, requires_grad=True)
    idx = torch.randint(0, 7, (3, 2, 4))
    torch.library.opcheck(masked_gather_op, (x, idx))
    torch.library.opcheck(masked_gather_backward_op, (torch.randn(6, 4, 5), idx, 7))
    pred = torch.randn(6, 4, 5, requires_grad=True)
    torch.library.opcheck(masked_target_loss_op, (pred, torch.randn(2, 7, 5), idx, "mse", 1.0, True, 1e-6, True))
    ts, os_ = [torch.randn(3), torch.randn(2, 2)], [torch.randn(3), torch.randn(2, 2)]
    torch.library.opcheck(ema_update_op, (ts, os_, 0.9, None))
