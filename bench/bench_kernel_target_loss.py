"""masked_target_loss vs the reference way: full F.layer_norm, per-mask gather + cat, loss."""
import pytest
import torch
import torch.nn.functional as F

import jepa_kernels
from jepa_kernels.target_loss import masked_target_loss_op


def reference_loss(pred, target, masks, kind):
    d = target.shape[-1]
    h = F.layer_norm(target, (d,))
    h = torch.cat([torch.gather(h, 1, m.unsqueeze(-1).expand(-1, -1, d)) for m in masks], dim=0)
    if kind == "mse":
        return F.mse_loss(pred, h)
    return F.smooth_l1_loss(pred, h)


def _setup(env):
    s = env.sizes
    target = torch.randn(s["B"], s["N"], s["D"], device=env.device)  # the target encoder's final norm gives fp32
    pred = torch.randn(s["M"] * s["B"], s["K"], s["D"], device=env.device, dtype=env.dtype, requires_grad=True)
    idx = env.mask_indices(s["M"], s["B"], s["K"], s["N"])
    return s, target, pred, idx


@pytest.mark.parametrize("kind", ["mse", "smooth_l1"])
def bench_target_loss_forward_backward(run_bench, env, impl, kind):
    s, target, pred, idx = _setup(env)

    def fn():
        pred.grad = None
        if impl == "reference":
            loss = reference_loss(pred, target, idx, kind)
        else:
            loss = jepa_kernels.masked_target_loss(pred, target, idx, kind=kind)
        loss.backward()

    # the minimum: read pred and the gathered fp32 target rows, write d(loss)/d(pred) (the backward scales it in
    # place, moving nothing for grad_output 1)
    nbytes = 2 * pred.numel() * pred.element_size() + pred.numel() * 4 + idx.numel() * 8
    run_bench(fn, nbytes=nbytes, group=f"target loss {kind} fwd+bwd", impl=impl, **s)


@pytest.mark.impls(exclude=("reference",))
def bench_target_loss_fused_forward(run_bench, env, impl):
    """The fused pass alone (loss partials + gradient), the kernel the % of copy bandwidth is for."""
    s, target, pred, idx = _setup(env)
    fn = lambda: masked_target_loss_op(pred.detach(), target, idx, "mse", 1.0, True, 1e-6, True)  # noqa: E731
    nbytes = 2 * pred.numel() * pred.element_size() + pred.numel() * 4 + idx.numel() * 8
    run_bench(fn, nbytes=nbytes, group="target loss fused pass", impl=impl, **s)
