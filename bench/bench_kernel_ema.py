"""ema_update_ vs the reference per-parameter ``mul_``/``add_`` loop, on ViT-S/B/L parameter lists."""
import pytest
import torch

import jepa_kernels
from bench.reference_code_step import ema_update as reference_ema

MODELS = {"vit_s": (12, 384), "vit_b": (12, 768), "vit_l": (24, 1024)}
MOMENTUM = 0.996


def vit_param_shapes(depth, dim):
    """Per block: LN1 (w, b), qkv (w, b), proj (w, b), LN2 (w, b), fc1 (w, b), fc2 (w, b)."""
    block = [(dim,), (dim,), (3 * dim, dim), (3 * dim,), (dim, dim), (dim,),
             (dim,), (dim,), (4 * dim, dim), (4 * dim,), (dim, 4 * dim), (dim,)]
    return block * depth


def _params(env, model):
    depth, dim = MODELS[model]
    if env.scale == "small":
        depth //= 6
    shapes = vit_param_shapes(depth, dim)
    target = [torch.randn(s, device=env.device) for s in shapes]
    online = [torch.randn(s, device=env.device) for s in shapes]
    return target, online


def flat_buffer_ema(target, online, m):
    """Flat-buffer alternative for the CPU fallback: cat, one lerp, copy back."""
    ft = torch.cat([t.view(-1) for t in target])
    fo = torch.cat([o.view(-1) for o in online])
    ft.lerp_(fo, 1.0 - m)
    torch._foreach_copy_(target, [c.view_as(t) for c, t in zip(ft.split([t.numel() for t in target]), target)])


@pytest.mark.impls(extra=("flat_buffer",))
@pytest.mark.parametrize("model", list(MODELS))
def bench_ema(run_bench, env, model, impl):
    target, online = _params(env, model)
    numel = sum(t.numel() for t in target)
    if impl == "reference":
        fn = lambda: reference_ema(target, online, MOMENTUM)  # noqa: E731
    elif impl == "flat_buffer":
        fn = lambda: flat_buffer_ema(target, online, MOMENTUM)  # noqa: E731
    else:
        fn = lambda: jepa_kernels.ema_update_(target, online, MOMENTUM)  # noqa: E731
    run_bench(fn, nbytes=3 * numel * 4, group=f"ema {model}", impl=impl,
              model=model, params=numel, tensors=len(target))
