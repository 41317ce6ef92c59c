from types import SimpleNamespace

import torch
import torch.nn.functional as F

from jepa.losses import LN_EPS, expand_targets, level_losses, pool_blocks, vicreg_terms
from jepa_kernels import masked_target_loss


def test_pool_blocks_matches_hand_computed_average_non_square_odd():
    bh, bw = 3, 5
    x = torch.arange(bh * bw, dtype=torch.float64).view(1, bh * bw, 1)
    out = pool_blocks(x, (bh, bw), 2).view(2, 3)
    g = x.view(bh, bw)
    expected = torch.tensor([
        [g[0:2, 0:2].mean(), g[0:2, 2:4].mean(), g[0:2, 4:5].mean()],
        [g[2:3, 0:2].mean(), g[2:3, 2:4].mean(), g[2:3, 4:5].mean()],
    ], dtype=torch.float64)
    torch.testing.assert_close(out, expected)
    four = pool_blocks(x, (bh, bw), 4).view(-1)
    torch.testing.assert_close(four, torch.stack([g[0:3, 0:4].mean(), g[0:3, 4:5].mean()]))


def test_pool_blocks_per_channel_and_identity():
    x = torch.randn(4, 6, 3)
    assert torch.equal(pool_blocks(x, (2, 3), 1), x)
    out = pool_blocks(x, (2, 3), 2)
    torch.testing.assert_close(out[:, 0], x.view(4, 2, 3, 3)[:, :, :2].mean(dim=(1, 2)))


def test_fused_target_loss_hand_made_example():
    target = torch.tensor([[[1.0, 3.0], [2.0, 2.0], [0.0, 4.0]]])     # B=1, N=3, D=2
    idx = torch.tensor([[[0, 2]]])                                     # M=1, B=1, K=2
    pred = torch.zeros(1, 2, 2, requires_grad=True)
    # layer_norm of [1,3] and [0,4] (no affine) is [-1, 1] up to eps
    loss = masked_target_loss(pred, target, idx, eps=LN_EPS)
    assert abs(loss.item() - 1.0) < 1e-4
    raw = masked_target_loss(pred, target, idx, normalize=False)
    assert abs(raw.item() - (1 + 9 + 0 + 16) / 4) < 1e-5
    sl1 = masked_target_loss(pred, target, idx, kind="smooth_l1", normalize=False)
    assert abs(sl1.item() - (0.5 + 2.5 + 0 + 3.5) / 4) < 1e-5


def test_level_losses_weigh_each_level_and_the_fused_level_0_is_the_three_unfused_lines():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(2, 9, 4, generator=g)                                # B=2 images of a 3x3 grid, D=4
    idx = torch.tensor([[[0, 1, 3, 4], [4, 5, 7, 8]]])                   # M=1: one 2x2 block per image
    preds = [torch.randn(2, 4, 4, generator=g), torch.randn(2, 1, 4, generator=g)]
    cfg = SimpleNamespace(type="mse", base="mse", beta=1.0, level_weights=[1.0, 0.5], normalize_targets=True,
                          normalize_embeddings=False)
    fused = masked_target_loss(preds[0], h, idx, eps=LN_EPS)
    loss, parts = level_losses(fused, preds, h, idx, (2, 2), cfg)
    targets = torch.stack([F.layer_norm(h, (4,), eps=LN_EPS)[b, idx[0, b]] for b in range(2)])
    torch.testing.assert_close(fused, F.mse_loss(preds[0], targets))
    coarse = F.mse_loss(preds[1], targets.mean(dim=1, keepdim=True))
    assert parts["loss/level0"] is not fused and torch.equal(parts["loss/level0"], fused)
    torch.testing.assert_close(parts["loss/level1"], coarse)
    torch.testing.assert_close(loss, fused + 0.5 * coarse)
    unfused, _ = level_losses(None, preds, h, idx, (2, 2), cfg)          # level 0 computed from the gathered rows
    torch.testing.assert_close(unfused, loss)


def test_expand_targets_order():
    idx = torch.arange(6).view(3, 1, 2)
    out = expand_targets(idx, 2)
    assert out.shape == (6, 1, 2) and torch.equal(out[1], idx[0]) and torch.equal(out[2], idx[1])
    assert expand_targets(idx, 1) is idx


def test_vicreg_terms():
    z = torch.zeros(8, 4)
    var, cov = vicreg_terms(z)
    assert abs(var.item() - (1 - 1e-2)) < 1e-3 and cov.item() == 0
    torch.manual_seed(0)
    w = torch.randn(4096, 3) * 2
    var, cov = vicreg_terms(w)
    assert var.item() == 0 and cov.item() < 0.05
    c = torch.randn(4096, 1).repeat(1, 3)
    assert vicreg_terms(c)[1].item() > 1.0
    assert F.relu(torch.tensor(-1.0)) == 0
