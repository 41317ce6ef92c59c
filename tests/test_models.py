import math

import pytest
import torch

from jepa.config import load_config
from jepa.models import build_model
from jepa.models.pos_embed import sincos_2d
from jepa.models.vit import Predictor, VisionTransformer

from small_config import TINY_MODEL


def small_cfg(**over):
    base = {**TINY_MODEL, "model.depth": "3", "model.pred_depth": "2", "data.image_size": "28", "model.patch_size": "4",
            "masks.min_keep": "4"}
    base.update(over)
    return load_config(None, base)


def test_init_follows_spec():
    enc = VisionTransformer(224, 16, 3, 384, 6, 6)
    stds = [b.mlp.fc1.weight.std().item() for b in enc.blocks]
    assert all(abs(s - 0.02) < 0.003 for s in stds)
    for layer, b in enumerate(enc.blocks, start=1):
        expected = 0.02 / math.sqrt(2 * layer)
        assert b.attn.proj.weight.std().item() == pytest.approx(expected, rel=0.1)
        assert b.mlp.fc2.weight.std().item() == pytest.approx(expected, rel=0.1)
        assert torch.all(b.attn.qkv.bias == 0) and torch.all(b.norm1.weight == 1)
    names = [n for n, _ in enc.named_parameters()]
    assert not any("pos_embed" in n or "cls" in n for n in names)


def test_sincos_table_is_fixed_and_distinct():
    t = sincos_2d(32, 7, 7)
    assert t.shape == (49, 32)
    assert torch.cdist(t, t).add(torch.eye(49) * 10).min() > 1e-3
    assert sincos_2d(30, 3, 5).shape == (15, 30)


def test_context_encoder_runs_only_context_tokens():
    enc = VisionTransformer(28, 4, 1, 32, 2, 2)
    x = torch.randn(3, 1, 28, 28)
    idx = torch.sort(torch.randperm(49)[:11])[0].repeat(3, 1)
    seen = []
    enc.blocks[0].register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1]))
    out = enc(x, idx)
    assert out.shape == (3, 11, 32) and seen == [11]
    manual = enc.embed(x)[:, idx[0]]
    for b in enc.blocks:
        manual = b(manual)
    torch.testing.assert_close(out, enc.norm(manual))


def test_predictor_shapes_and_order():
    pred = Predictor((7, 7), 32, 16, 2, 2)
    B, M, E = 2, 4, 2
    ctx_idx = torch.stack([torch.sort(torch.randperm(49)[:10])[0].repeat(B, 1) for _ in range(E)])
    tgt_idx = torch.stack([torch.sort(torch.randperm(49)[:6])[0].repeat(B, 1) for _ in range(M)])
    z = torch.randn(E * B, 10, 32)
    out = pred(z, ctx_idx, tgt_idx)
    assert out.shape == (M * E * B, 6, 32)
    # row (m, e, b) must depend on context mask e only
    z2 = z.clone()
    z2[B:] += 1.0  # change context mask e=1
    out2 = pred(z2, ctx_idx, tgt_idx).view(M, E, B, 6, 32)
    out = out.view(M, E, B, 6, 32)
    torch.testing.assert_close(out[:, 0], out2[:, 0])
    assert not torch.allclose(out[:, 1], out2[:, 1])


def test_shared_context_predictor_keeps_blocks_independent():
    torch.manual_seed(1)
    pred = Predictor((7, 7), 32, 16, 2, 2, shared_context=True)
    B, M = 2, 3
    ctx_idx = torch.sort(torch.randperm(49)[:10])[0].repeat(B, 1)[None]
    tgt = [torch.sort(torch.randperm(49)[:6])[0].repeat(B, 1) for _ in range(M)]
    z = torch.randn(B, 10, 32)
    a = pred(z, ctx_idx, torch.stack(tgt)).view(M, B, 6, 32)
    tgt[2] = torch.sort(torch.randperm(49)[:6])[0].repeat(B, 1)
    b = pred(z, ctx_idx, torch.stack(tgt)).view(M, B, 6, 32)
    torch.testing.assert_close(a[:2], b[:2])
    assert not torch.allclose(a[2], b[2])


def test_target_encoder_is_frozen_copy():
    model = build_model(small_cfg())
    assert all(not p.requires_grad for p in model.target_encoder.parameters())
    for pt, pc in zip(model.target_encoder.parameters(), model.context_encoder.parameters()):
        assert torch.equal(pt, pc) and pt.data_ptr() != pc.data_ptr()
    online = {id(p) for p in model.online_parameters()}
    assert not any(id(p) in online for p in model.target_encoder.parameters())


def test_one_level_has_no_extra_parameters():
    one = build_model(small_cfg())
    three = build_model(small_cfg(**{"model.num_hierarchies": "3"}))
    assert len(one.level_heads) == 0 and len(three.level_heads) == 2
    n1 = sum(p.numel() for p in one.online_parameters())
    n3 = sum(p.numel() for p in three.online_parameters())
    assert n3 - n1 == 2 * (32 * 32 + 32)


def test_three_channel_and_other_patch_sizes():
    enc = VisionTransformer(32, 8, 3, 24, 1, 3)
    assert enc(torch.randn(2, 3, 32, 32)).shape == (2, 16, 24)


def test_residual_stream_is_fp32_under_bf16_autocast():
    """A deliberate choice (docs/performance.md): blocks receive fp32 tokens while their matmuls run in bf16;
    the predictor's stream too."""
    enc = VisionTransformer(28, 4, 1, 32, 2, 2)
    pred = Predictor((7, 7), 32, 16, 2, 2)
    seen = []
    for block in list(enc.blocks) + list(pred.blocks):
        block.register_forward_pre_hook(lambda _m, args: seen.append(args[0].dtype))
        block.mlp.fc1.register_forward_hook(lambda _m, _a, out: seen.append(("matmul", out.dtype)))
    x = torch.randn(2, 1, 28, 28)
    ctx_idx = torch.rand(1, 2, 49).argsort(-1)[..., :20]
    tgt_idx = torch.rand(4, 2, 49).argsort(-1)[..., :6]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pred(enc(x, ctx_idx), ctx_idx, tgt_idx)
    assert [d for d in seen if not isinstance(d, tuple)] == [torch.float32] * 4
    assert {d for d in seen if isinstance(d, tuple)} == {("matmul", torch.bfloat16)}
