"""Attention backends: SDPA against the explicit math reference, backend resolution and its errors.

Tolerances: fp64 agrees to 1e-10; fp32 to atol 2e-5 / rtol 1e-4 (different summation order);
the GPU check of xformers against math in bf16 allows atol 2e-2 / rtol 2e-2 (8-bit mantissa).
"""
import importlib
import logging
import sys
import types

import pytest
import torch

from jepa.models.attention import attention, math_attention, resolve_backend
from jepa.models.vit import Block, Predictor

att = importlib.import_module("jepa.models.attention")
TOL = {torch.float64: dict(atol=1e-10, rtol=1e-10), torch.float32: dict(atol=2e-5, rtol=1e-4)}


def block_mask(kc: int, m: int, kt: int) -> torch.Tensor:
    """The shared-context predictor's mask: context sees context, block i's queries see context and block i."""
    group = torch.tensor([-1] * kc + [i for i in range(m) for _ in range(kt)])
    mask = (group == -1)[None, :] | (group[:, None] == group[None, :])
    mask[:kc] = (group == -1)[None, :]
    return mask


def run(backend, q, k, v, mask, grad_out):
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    out = attention(q, k, v, backend, mask)
    out.backward(grad_out)
    return out, q.grad, k.grad, v.grad


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape,mask_kind", [((3, 2, 7, 16), None), ((2, 3, 49, 64), None),
                                             ((4, 3, 26, 32), "bool"), ((2, 2, 13, 8), "additive")])
def test_sdpa_matches_math_forward_and_backward(dtype, shape, mask_kind):
    g = torch.Generator().manual_seed(0)
    q, k, v, grad_out = (torch.randn(*shape, generator=g, dtype=dtype) for _ in range(4))
    n = shape[2]
    mask = None
    if mask_kind == "bool":
        mask = block_mask(10, 4, 4)
    elif mask_kind == "additive":
        mask = torch.randn(n, n, generator=g, dtype=dtype)
    ref = run("math", q, k, v, mask, grad_out)
    got = run("sdpa", q, k, v, mask, grad_out)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, ref):
        torch.testing.assert_close(a, b, **TOL[dtype], msg=lambda m: f"{name}: {m}")


def test_masked_keys_get_no_weight():
    q, k, v = (torch.randn(1, 1, 5, 4) for _ in range(3))
    mask = torch.ones(5, 5, dtype=torch.bool)
    mask[:, 3:] = False
    v_changed = v.clone()
    v_changed[..., 3:, :] += 100.0
    for backend in ("math", "sdpa"):
        torch.testing.assert_close(attention(q, k, v, backend, mask), attention(q, k, v_changed, backend, mask))


def test_block_backends_agree_through_the_model():
    torch.manual_seed(0)
    block = Block(48, 3, backend="math").double()
    x = torch.randn(4, 11, 48, dtype=torch.float64, requires_grad=True)
    ref = block(x)
    gx_ref, = torch.autograd.grad(ref.sum(), x)
    block.attn.backend = "sdpa"
    out = block(x)
    gx, = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(out, ref, **TOL[torch.float64])
    torch.testing.assert_close(gx, gx_ref, **TOL[torch.float64])


def test_shared_context_predictor_same_with_sdpa_and_math():
    torch.manual_seed(0)
    pred = Predictor((7, 7), 32, 24, 2, 3, attention="math", shared_context=True).double()
    ctx_idx = torch.sort(torch.randperm(49)[:10])[0].repeat(2, 1)[None]
    tgt_idx = torch.stack([torch.sort(torch.randperm(49)[:6])[0].repeat(2, 1) for _ in range(4)])
    z = torch.randn(2, 10, 32, dtype=torch.float64)
    ref = pred(z, ctx_idx, tgt_idx)
    for m in pred.modules():
        if hasattr(m, "backend"):
            m.backend = "sdpa"
    torch.testing.assert_close(pred(z, ctx_idx, tgt_idx), ref, **TOL[torch.float64])


def test_resolve_auto_is_sdpa_on_cpu_and_logged_once(caplog, monkeypatch):
    monkeypatch.setattr(att, "_announced", set())
    with caplog.at_level(logging.INFO, logger="jepa"):
        assert resolve_backend("auto", "cpu") == "sdpa"
        assert resolve_backend("auto", "cpu") == "sdpa"
        assert resolve_backend("math", "cpu") == "math"
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["attention backend: sdpa", "attention backend: math"]


def test_xformers_without_cuda_is_a_clear_error():
    with pytest.raises(RuntimeError, match=r"model.attention=xformers needs a CUDA device.*auto or sdpa on cpu"):
        resolve_backend("xformers", "cpu")


def test_unknown_backend_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"model.attention must be one of auto, xformers, sdpa, math, got 'flash'"):
        resolve_backend("flash", "cpu")
    with pytest.raises(ValueError, match="unknown attention backend 'flash'"):
        attention(*(torch.randn(1, 1, 2, 4) for _ in range(3)), backend="flash")


def test_math_attention_is_the_textbook_formula():
    q, k, v = (torch.randn(2, 5, 8, dtype=torch.float64) for _ in range(3))
    expected = torch.softmax(q @ k.transpose(-1, -2) / 8 ** 0.5, dim=-1) @ v
    torch.testing.assert_close(math_attention(q, k, v), expected)


def test_xformers_probe_made_before_compile_serves_the_compiled_lookup(monkeypatch):
    """prepare_backend probes on "cuda"; the compiled forward asks for q.device ("cuda:0") and may not probe."""
    fake = types.ModuleType("xformers.ops")
    fake.memory_efficient_attention = lambda q, k, v, attn_bias=None: q * 1
    monkeypatch.setitem(sys.modules, "xformers", types.ModuleType("xformers"))
    monkeypatch.setitem(sys.modules, "xformers.ops", fake)
    monkeypatch.setattr(att, "_xformers_support", {})
    assert att.xformers_supports(40, torch.float32, "cpu")  # probed (the fake op runs on CPU tensors)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert att.xformers_supports(40, torch.float32, "cuda:0")
    assert not att.xformers_supports(24, torch.float32, "cuda:0")  # never probed: unsupported


@pytest.mark.skipif(not att.xformers_available(), reason="needs CUDA and xformers (GPU suite)")
@pytest.mark.parametrize("masked", [False, True])
def test_xformers_matches_math_in_bf16(masked):
    g = torch.Generator(device="cuda").manual_seed(0)
    shape = (4, 12, 197, 64)
    q, k, v, grad_out = (torch.randn(*shape, generator=g, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    mask = block_mask(101, 4, 24).cuda() if masked else None
    ref = run("math", q.float(), k.float(), v.float(), mask, grad_out.float())
    got = run("xformers", q, k, v, mask, grad_out)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, ref):
        torch.testing.assert_close(a.float(), b, atol=2e-2, rtol=2e-2, msg=lambda m: f"{name}: {m}")
    assert resolve_backend("auto", "cuda") == att.AUTO_XFORMERS
    assert att.xformers_supports(64, torch.bfloat16)


@pytest.mark.parametrize("masked", [False, True])
def test_block_queries_from_is_the_tail_of_the_full_block(masked):
    """The predictor's last block computes only the query tokens; values and gradients equal the full block's."""
    torch.manual_seed(0)
    block = Block(24, 3).double()
    x = torch.randn(5, 16, 24, dtype=torch.float64, requires_grad=True)
    mask = block_mask(10, 2, 3) if masked else None
    full = block(x, mask)[:, 10:]
    gx_full, = torch.autograd.grad(full.square().sum(), x)
    gw_full = torch.autograd.grad(block(x, mask)[:, 10:].square().sum(), block.attn.qkv.weight)[0]
    tail = block(x, mask, queries_from=10)
    assert tail.shape == (5, 6, 24)
    torch.testing.assert_close(tail, full, **TOL[torch.float64])
    gx, = torch.autograd.grad(tail.square().sum(), x)
    torch.testing.assert_close(gx, gx_full, **TOL[torch.float64])
    gw = torch.autograd.grad(block(x, mask, queries_from=10).square().sum(), block.attn.qkv.weight)[0]
    torch.testing.assert_close(gw, gw_full, **TOL[torch.float64])


def _flash_calls(q, grad: bool):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        with torch.set_grad_enabled(grad):
            out = attention(q, q, q, "sdpa")
        if grad:
            out.float().sum().backward()
    return sum(1 for e in prof.events() if "flash_attention" in e.name)


@pytest.mark.parametrize("dtype,keys,grad,fused", [
    (torch.bfloat16, 49, True, False), (torch.bfloat16, 128, True, False), (torch.bfloat16, 129, True, True),
    (torch.bfloat16, 49, False, True), (torch.float16, 300, True, False), (torch.float16, 49, False, False),
    (torch.float32, 49, True, True)])
def test_cpu_sdpa_uses_its_math_kernel_where_the_fused_one_is_slower(dtype, keys, grad, fused):
    """On CPU, SDPA's fused kernel is slower for fp16 and for bf16 training up to 128 keys (docs/performance.md);
    there SDPA runs its math kernel; fp32, bf16 inference and longer bf16 sequences keep the fused one."""
    q = torch.randn(2, 3, keys, 32).to(dtype).requires_grad_(grad)
    assert (_flash_calls(q, grad) > 0) == fused


def test_cpu_sdpa_kernel_choice_can_be_left_to_pytorch(monkeypatch):
    """JEPA_CPU_SDPA_MATH=0 (read at import) turns the rule off, e.g. for a CPU where the fused kernel is fast."""
    monkeypatch.setattr(att, "CPU_SDPA_MATH", False)
    q = torch.randn(2, 3, 49, 32).to(torch.bfloat16).requires_grad_(True)
    assert _flash_calls(q, True) > 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mask_kind", [None, "bool"])
def test_cpu_low_precision_sdpa_keeps_fp32_scores(dtype, mask_kind):
    """Forward and backward against float64: SDPA's math kernel upcasts, so its error stays well below that of
    scores rounded to the input dtype (the explicit ``math`` backend), for output and every gradient."""
    g = torch.Generator().manual_seed(1)
    q, k, v = (3 * torch.randn(3, 3, 26, 32, generator=g) for _ in range(3))
    q, k, v, grad_out = (t.to(dtype) for t in (q, k, v, torch.randn(3, 3, 26, 32, generator=g)))
    mask = block_mask(10, 4, 4) if mask_kind else None
    ref = run("math", *(t.double() for t in (q, k, v)), mask, grad_out.double())
    got = run("sdpa", q, k, v, mask, grad_out)
    rounded = run("math", q, k, v, mask, grad_out)
    for name, a, r, b in zip(("out", "dq", "dk", "dv"), got, rounded, ref):
        assert a.dtype == dtype
        err, err_rounded = (a.double() - b).abs().max().item(), (r.double() - b).abs().max().item()
        assert err <= 0.5 * err_rounded, (name, err, err_rounded)
