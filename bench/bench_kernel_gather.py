"""masked_gather vs the reference ``apply_masks`` (per-mask expanded-index gather + cat)."""
import torch

import jepa_kernels


def reference_apply_masks(x, masks):
    d = x.shape[-1]
    return torch.cat([torch.gather(x, 1, m.unsqueeze(-1).expand(-1, -1, d)) for m in masks], dim=0)


def _setup(env, requires_grad):
    s = env.sizes
    # fp32: the residual stream (and so the context tokens) stays fp32 under autocast (docs/performance.md)
    x = torch.randn(s["B"], s["N"], s["D"], device=env.device, dtype=torch.float32, requires_grad=requires_grad)
    idx = env.mask_indices(s["M"], s["B"], s["K"], s["N"])
    return s, x, idx


def bench_gather_forward(run_bench, env, impl):
    s, x, idx = _setup(env, False)
    fn = (lambda: reference_apply_masks(x, idx)) if impl == "reference" else (lambda: jepa_kernels.masked_gather(x, idx))
    rows = s["M"] * s["B"] * s["K"]
    nbytes = 2 * rows * s["D"] * x.element_size() + idx.numel() * 8
    run_bench(fn, nbytes=nbytes, group="gather fwd", impl=impl, **s)


def bench_gather_forward_backward(run_bench, env, impl):
    s, x, idx = _setup(env, True)
    rows = s["M"] * s["B"] * s["K"]
    grad = torch.randn(s["M"] * s["B"], s["K"], s["D"], device=env.device, dtype=x.dtype)
    op = reference_apply_masks if impl == "reference" else jepa_kernels.masked_gather

    def fn():
        x.grad = None
        op(x, idx).backward(grad)

    # fwd: read + write the gathered rows; bwd: read grad, write the full [B, N, D] grad
    es = x.element_size()
    nbytes = 3 * rows * s["D"] * es + x.numel() * es + 2 * idx.numel() * 8
    run_bench(fn, nbytes=nbytes, group="gather fwd+bwd", impl=impl, **s)
