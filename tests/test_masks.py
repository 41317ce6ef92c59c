"""Behaviour of the multi-block mask sampler (docs/algorithm.md#multi-block-masks), including the reference bugs
it must not have (docs/deviations.md#multi-block-mask-sampler)."""
import functools
import math

import pytest
import torch

from jepa.config import load_config
from jepa.config.grid import patch_grid
from jepa.data.batches import build_mask_sampler
from jepa.masks import MaskSampler, expected_tokens
from jepa.models import build_encoder

GRIDS = [(7, 7), (6, 9), (14, 14)]


def run(sampler, batches, batch_size, seed=0):
    """Yield ``(context, targets, last_info)`` for ``batches`` batches from one seeded generator."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(batches):
        ctx, tgt = sampler.sample(batch_size, generator=g)
        yield ctx, tgt, dict(sampler.last_info)


def as_bool(idx, n):
    """Index tensor ``[B, K]`` to a boolean patch mask ``[B, n]``."""
    out = torch.zeros(idx.shape[0], n, dtype=torch.bool)
    return out.scatter_(1, idx, True)


@functools.lru_cache(maxsize=None)
def admissible_sizes(grid, scale, aspect, steps=2 ** 18):
    """Every ``(bh, bw)`` the block-size rule gives for u in [0, 1), scale and aspect set by the same u."""
    h, w = grid
    u = torch.arange(steps, dtype=torch.float64) / steps
    s = scale[0] + u * (scale[1] - scale[0])
    a = aspect[0] + u * (aspect[1] - aspect[0])
    keep = torch.floor(h * w * s)
    bh = torch.round(torch.sqrt(keep * a)).clamp(1, h).long()
    bw = torch.round(torch.sqrt(keep / a)).clamp(1, w).long()
    return set(zip(bh.tolist(), bw.tolist()))


def rectangle_of(idx, w):
    """Bounding boxes ``(top, left, bh, bw)`` of each row of ``idx`` and whether the row fills it."""
    r, c = idx // w, idx % w
    top, left = r.min(1).values, c.min(1).values
    bh, bw = r.max(1).values - top + 1, c.max(1).values - left + 1
    return top, left, bh, bw, (bh * bw) == idx.shape[1]


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("nenc", [1, 2])
def test_shapes_sorted_unique_and_disjoint(grid, nenc):
    h, w = grid
    n = h * w
    sampler = MaskSampler(grid, nenc=nenc, npred=4, min_keep=4)
    for ctx, tgt, _ in run(sampler, 200 if n < 100 else 60, 16):
        assert len(ctx) == nenc and len(tgt) == 4
        for m in ctx + tgt:
            assert m.dtype == torch.long and m.dim() == 2 and m.shape[0] == 16
            assert m.min() >= 0 and m.max() < n
            assert (m.diff(dim=1) > 0).all()
        assert len({m.shape[1] for m in ctx}) == 1
        assert len({m.shape[1] for m in tgt}) == 1
        union = torch.stack([as_bool(m, n) for m in tgt]).any(0)
        for m in ctx:
            assert not (as_bool(m, n) & union).any()
            assert m.shape[1] >= 4


@pytest.mark.parametrize("grid", GRIDS + [(16, 16)])
def test_targets_are_full_rectangles_of_admissible_size(grid):
    h, w = grid
    pred, aspect, enc = (0.15, 0.2), (0.75, 1.5), (0.85, 1.0)
    ok_t = admissible_sizes(grid, pred, aspect)
    ok_c = admissible_sizes(grid, enc, (1.0, 1.0))
    sampler = MaskSampler(grid, enc_scale=enc, pred_scale=pred, aspect_ratio=aspect, min_keep=4)
    seen = set()
    for _, tgt, info in run(sampler, 200, 8):
        sizes = set()
        for m in tgt:
            _, _, bh, bw, full = rectangle_of(m, w)
            assert full.all()
            sizes |= set(zip(bh.tolist(), bw.tolist()))
        assert len(sizes) == 1
        assert sizes == {info["target_size"]}
        assert info["context_size"] in ok_c
        seen |= sizes
    assert seen <= ok_t
    assert len(seen) >= 2
    for bh, bw in seen:
        keep_lo, keep_hi = int(h * w * pred[0]), int(h * w * pred[1])
        assert round(math.sqrt(keep_lo * aspect[0])) <= bh <= round(math.sqrt(keep_hi * aspect[1]))


@pytest.mark.parametrize("grid", [(7, 7), (6, 9), (16, 16)])
def test_every_patch_reachable_by_targets_and_context(grid):
    """The reference never covered the last row/column (13 of 49 patches on 7x7)."""
    h, w = grid
    n = h * w
    sampler = MaskSampler(grid, min_keep=4)
    hit_t = torch.zeros(n, dtype=torch.bool)
    hit_c = torch.zeros(n, dtype=torch.bool)
    for ctx, tgt, _ in run(sampler, 100, 16):
        for m in tgt:
            hit_t |= as_bool(m, n).any(0)
        for m in ctx:
            hit_c |= as_bool(m, n).any(0)
    assert hit_t.all(), f"targets never cover {(~hit_t).nonzero().flatten().tolist()}"
    assert hit_c.all(), f"context never covers {(~hit_c).nonzero().flatten().tolist()}"


@pytest.mark.parametrize("grid,enc", [((7, 7), (0.5, 0.6)), ((16, 16), (0.85, 1.0)), ((6, 9), (0.3, 0.5))])
def test_context_corner_covers_all_admissible_positions(grid, enc):
    """The reference's context block always started at (0, 0); with overlap allowed it is a whole block."""
    h, w = grid
    sampler = MaskSampler(grid, enc_scale=enc, allow_overlap=True, min_keep=1)
    corners = {}
    for ctx, _, info in run(sampler, 150, 32):
        top, left, bh, bw, full = rectangle_of(ctx[0], w)
        assert full.all()
        assert {(a, b) for a, b in zip(bh.tolist(), bw.tolist())} == {info["context_size"]}
        corners.setdefault(info["context_size"], set()).update(zip(top.tolist(), left.tolist()))
    for (bh, bw), seen in corners.items():
        assert seen == {(t, l) for t in range(h - bh + 1) for l in range(w - bw + 1)}, (bh, bw)
    assert any(len(s) > 1 for s in corners.values())


def test_min_keep_and_relaxations_are_counted():
    """A tight config that forces redraws and relaxations: context stays disjoint, shortfalls are counted."""
    grid, n = (7, 7), 49
    sampler = MaskSampler(grid, enc_scale=(0.3, 0.3), pred_scale=(0.2, 0.2), min_keep=14)
    below = relaxed = 0
    for ctx, tgt, info in run(sampler, 150, 16):
        union = torch.stack([as_bool(m, n) for m in tgt]).any(0)
        assert not (as_bool(ctx[0], n) & union).any()
        if ctx[0].shape[1] < 14:
            assert info["below_min_keep"] > 0
            assert info["relaxations"] > 0
        below += info["below_min_keep"]
        relaxed += info["relaxations"]
    st = sampler.stats()
    assert st["relaxations"] == relaxed > 0
    assert st["below_min_keep"] == below
    assert st["target_redraws"] > 0
    assert st["relaxations_per_batch"] == pytest.approx(relaxed / 150)


def test_default_config_respects_min_keep_without_relaxing():
    sampler = MaskSampler((14, 14), min_keep=10)
    for ctx, _, info in run(sampler, 50, 32):
        assert ctx[0].shape[1] >= 10
        assert info["relaxations"] == 0 and info["below_min_keep"] == 0


def test_cut_keeps_a_random_subset():
    """With a full-grid context the uncut context is the targets' complement; the cut must not keep its first ids."""
    grid, n = (7, 7), 49
    sampler = MaskSampler(grid, enc_scale=(1.0, 1.0), min_keep=4)
    prefix = cut = 0
    ranks = []
    for ctx, tgt, info in run(sampler, 100, 16):
        assert info["context_size"] == (7, 7)
        free = ~torch.stack([as_bool(m, n) for m in tgt]).any(0)
        kept = as_bool(ctx[0], n)
        assert not (kept & ~free).any()
        k = ctx[0].shape[1]
        for b in range(free.shape[0]):
            allowed = free[b].nonzero().flatten()
            if allowed.numel() == k:
                assert kept[b].sum() == k
                continue
            cut += 1
            prefix += bool(torch.equal(ctx[0][b], allowed[:k]))
            pos = torch.searchsorted(allowed, ctx[0][b]).double()
            ranks.append(((pos + 0.5) / allowed.numel()).mean().item())
    assert cut > 500
    assert prefix / cut < 0.05
    assert 0.45 < sum(ranks) / len(ranks) < 0.55


def test_same_seed_same_output_different_seed_different():
    a = MaskSampler((14, 14), nenc=2)
    b = MaskSampler((14, 14), nenc=2)
    out_a = list(run(a, 5, 8, seed=3))
    out_b = list(run(b, 5, 8, seed=3))
    out_c = list(run(b, 5, 8, seed=4))
    for (ca, ta, _), (cb, tb, _) in zip(out_a, out_b):
        assert all(torch.equal(x, y) for x, y in zip(ca + ta, cb + tb))
    same = all(
        x.shape == y.shape and torch.equal(x, y)
        for (ca, ta, _), (cc, tc, _) in zip(out_a, out_c) for x, y in zip(ca + ta, cc + tc))
    assert not same


def test_global_rng_untouched():
    sampler = MaskSampler((7, 7), min_keep=4)
    state = torch.get_rng_state()
    sampler.sample(32, generator=torch.Generator().manual_seed(1))
    sampler.sample(32)
    assert torch.equal(state, torch.get_rng_state())


def _flat(masks):
    return torch.cat([m.flatten() for m in masks[0] + masks[1]])


def test_private_generator_is_not_fixed():
    """Without a generator, two samplers must not replay one stream (workers would share masks)."""
    a, b = MaskSampler((14, 14)), MaskSampler((14, 14))
    outs_a = [_flat(a.sample(8)) for _ in range(3)]
    outs_b = [_flat(b.sample(8)) for _ in range(3)]
    assert any(x.shape != y.shape or not torch.equal(x, y) for x, y in zip(outs_a, outs_b))


def test_private_generator_differs_across_forked_workers():
    sampler = MaskSampler((14, 14))
    sampler.sample(4)
    loader = torch.utils.data.DataLoader(
        range(2), batch_size=1, num_workers=2, multiprocessing_context="fork",
        collate_fn=lambda _: _flat(sampler.sample(8)))
    x, y = list(loader)
    assert x.shape != y.shape or not torch.equal(x, y)


def test_stats_match_outputs_and_reset():
    sampler = MaskSampler((7, 7), min_keep=4)
    kc, kt = [], []
    for ctx, tgt, _ in run(sampler, 20, 16):
        kc.append(ctx[0].shape[1])
        kt.append(tgt[0].shape[1])
    st = sampler.stats()
    assert st["batches"] == 20
    assert st["context_tokens"] == pytest.approx(sum(kc) / 20)
    assert st["target_tokens"] == pytest.approx(sum(kt) / 20)
    assert st["context_tokens_uncut"] >= st["context_tokens"]
    sampler.reset_stats()
    assert sampler.stats()["batches"] == 0 and sampler.stats()["relaxations"] == 0
    est = expected_tokens((7, 7), batch_size=16, batches=5, min_keep=4)
    assert est["batches"] == 5 and est["context_tokens"] >= 4


def test_no_targets_and_several_contexts():
    sampler = MaskSampler((6, 9), npred=0, nenc=2, min_keep=4)
    ctx, tgt = sampler.sample(4, generator=torch.Generator().manual_seed(0))
    assert tgt == [] and len(ctx) == 2 and ctx[0].shape[0] == 4


@pytest.mark.parametrize("kwargs,name", [
    (dict(grid=(0, 7)), "grid"),
    (dict(grid=(7, 7.0)), "grid"),
    (dict(grid=(7, 7, 7)), "grid"),
    (dict(grid=(7, 7), enc_scale=(0.0, 1.0)), "enc_scale"),
    (dict(grid=(7, 7), enc_scale=(0.9, 1.1)), "enc_scale"),
    (dict(grid=(7, 7), pred_scale=(0.3, 0.2)), "pred_scale"),
    (dict(grid=(7, 7), pred_scale=0.2), "pred_scale"),
    (dict(grid=(7, 7), aspect_ratio=(0.0, 1.5)), "aspect_ratio"),
    (dict(grid=(7, 7), aspect_ratio=(2.0, 1.0)), "aspect_ratio"),
    (dict(grid=(7, 7), nenc=0), "nenc"),
    (dict(grid=(7, 7), npred=-1), "npred"),
    (dict(grid=(7, 7), min_keep=-1), "min_keep"),
    (dict(grid=(7, 7), enc_scale=(0.1, 0.2), min_keep=10), "min_keep"),
    (dict(grid=(7, 7), allow_overlap=1), "allow_overlap"),
])
def test_constructor_validation(kwargs, name):
    with pytest.raises(ValueError, match=name):
        MaskSampler(**kwargs)


def test_batch_size_validation():
    with pytest.raises(ValueError, match="batch_size"):
        MaskSampler((7, 7)).sample(0)


def test_the_sampler_and_the_encoder_cut_the_configured_image_into_one_patch_grid():
    cfg = load_config(None, {"data.dataset": "synthetic", "data.image_size": "24", "model.patch_size": "4",
                             "model.embed_dim": "32", "model.depth": "1", "model.num_heads": "2",
                             "model.pred_dim": "16", "model.pred_depth": "1", "model.pred_heads": "2"})
    assert patch_grid(24, 4) == (6, 6) and patch_grid(30, 8) == (3, 3)
    assert build_mask_sampler(cfg).grid == build_encoder(cfg).grid == (6, 6)
