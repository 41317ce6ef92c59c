"""Batched augmentation: geometry, normalisation, randomness discipline and speed."""
import time

import pytest
import torch
import torch.nn.functional as F

from jepa.config import load_config
from jepa.data.datasets import dataset_stats
from jepa.data.transforms import BatchAugment, CropParams, EvalTransform, eval_transform

MEAN, STD = (0.2860,), (0.3530,)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def images(b=16, c=1, s=28, seed=0):
    return torch.randint(0, 256, (b, c, s, s), dtype=torch.uint8, generator=gen(seed))


def reference_norm(x, mean=MEAN, std=STD):
    return (x.float() / 255 - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def denorm(y, mean=MEAN, std=STD):
    return (y * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)) * 255


@pytest.mark.parametrize("c,s_in,s_out", [(1, 28, 28), (1, 28, 32), (3, 32, 16), (3, 20, 24)])
def test_shape_and_dtype(c, s_in, s_out):
    mean, std = MEAN * c, STD * c
    for random_crop in (True, False):
        out = BatchAugment(s_out, mean, std, random_crop=random_crop)(images(8, c, s_in), gen(0))
        assert out.shape == (8, c, s_out, s_out) and out.dtype == torch.float32
        assert torch.isfinite(out).all()


def test_identity_is_exact_normalisation():
    x = images(16)
    out = BatchAugment(28, MEAN, STD, random_crop=False, hflip=False)(x, gen(0))
    assert torch.equal(out, reference_norm(x))
    rgb = images(4, 3, 32)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    out = BatchAugment(32, mean, std, random_crop=False, hflip=False)(rgb, gen(0))
    assert torch.equal(out, reference_norm(rgb, mean, std))
    full = CropParams(torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long),
                      torch.full((4,), 32), torch.full((4,), 32), torch.zeros(4, dtype=torch.bool))
    out = BatchAugment(32, mean, std).apply(rgb, full)
    assert torch.allclose(out, reference_norm(rgb, mean, std), atol=1e-5)


def test_flip_mirrors_exactly():
    x = images(32)
    aug = BatchAugment(28, MEAN, STD, random_crop=False, hflip=True)
    out = aug(x, gen(5))
    flip = aug.sample_params(32, 28, 28, gen(5)).flip
    assert 0 < int(flip.sum()) < 32
    ref = reference_norm(x)
    assert torch.equal(out[flip], torch.flip(ref[flip], dims=[-1]))
    assert torch.equal(out[~flip], ref[~flip])

    crop_aug = BatchAugment(20, MEAN, STD)
    p = crop_aug.sample_params(32, 28, 28, gen(6))
    p.flip = torch.zeros(32, dtype=torch.bool)
    plain = crop_aug.apply(x, p)
    p.flip = torch.ones(32, dtype=torch.bool)
    assert torch.equal(crop_aug.apply(x, p), torch.flip(plain, dims=[-1]))


def test_crop_equals_crop_then_resize():
    x = images(24, 3, 32, seed=1)
    mean, std = (0.5,) * 3, (0.25,) * 3
    aug = BatchAugment(24, mean, std, hflip=False)
    p = aug.sample_params(24, 32, 32, gen(2))
    out = aug.apply(x, p)
    for i in range(24):
        t, l, h, w = (int(v[i]) for v in (p.top, p.left, p.height, p.width))
        crop = x[i:i + 1, :, t:t + h, l:l + w].float()
        ref = F.interpolate(crop, size=(24, 24), mode="bilinear", align_corners=False)
        assert torch.allclose(denorm(out[i:i + 1], mean, std), ref, atol=2e-3), i


def test_crops_are_subregions_of_a_gradient():
    cols = (torch.arange(28) * 9).to(torch.uint8)
    x = cols.view(1, 1, 1, 28).expand(64, 1, 28, 28).contiguous()
    aug = BatchAugment(28, MEAN, STD, crop_scale=(0.1, 0.6))
    p = aug.sample_params(64, 28, 28, gen(3))
    values = denorm(aug.apply(x, p))
    for i in range(64):
        left, width = int(p.left[i]), int(p.width[i])
        v = values[i, 0]
        assert v.min() >= 9 * left - 1e-3 and v.max() <= 9 * (left + width - 1) + 1e-3
        assert torch.allclose(v, v[:1].expand_as(v), atol=1e-3)  # rows identical: no vertical mixing
        steps = v[0, 1:] - v[0, :-1]
        assert (steps <= 1e-3).all() if p.flip[i] else (steps >= -1e-3).all()
    assert p.flip.any() and (~p.flip).any()
    assert (p.width < 28).any()


def test_scale_and_ratio_ranges():
    aug = BatchAugment(28, MEAN, STD, crop_scale=(0.2, 0.5))
    p = aug.sample_params(4000, 28, 28, gen(4))
    frac = (p.height * p.width).double() / 784
    assert frac.min() >= 0.17 and frac.max() <= 0.54
    assert abs(frac.mean().item() - 0.35) < 0.01
    ratio = p.width.double() / p.height.double()
    assert ratio.min() >= 0.65 and ratio.max() <= 1.5
    assert ((p.top >= 0) & (p.left >= 0) & (p.top + p.height <= 28) & (p.left + p.width <= 28)).all()

    default = BatchAugment(28, MEAN, STD).sample_params(4000, 28, 28, gen(5))
    frac = (default.height * default.width).double() / 784
    assert frac.min() >= 0.27 and frac.max() <= 1.0 and 0.55 < frac.mean().item() < 0.68
    assert (default.left > 0).any() and (default.top > 0).any()


def test_impossible_ratio_falls_back_to_center_crop():
    aug = BatchAugment(28, MEAN, STD, crop_scale=(0.9, 1.0), crop_ratio=(4.0, 5.0))
    p = aug.sample_params(10, 28, 28, gen(0))
    assert p.width.tolist() == [28] * 10 and p.height.tolist() == [7] * 10
    assert p.top.tolist() == [10] * 10 and p.left.tolist() == [0] * 10


def test_randomness_only_from_the_generator():
    x = images(16)
    aug = BatchAugment(28, MEAN, STD)
    state = torch.get_rng_state()
    a = aug(x, gen(11))
    b = aug(x, gen(11))
    c = aug(x, gen(12))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, c)
    g = gen(11)
    first, second = aug(x, g), aug(x, g)
    assert torch.equal(first, a) and not torch.equal(first, second)


def test_fast_enough_on_cpu():
    """One thread, as in a DataLoader worker: on a shared 2-core box OpenMP barriers stall when the
    other core is busy, which would time the neighbours rather than the augmentation."""
    x = images(128)
    aug = BatchAugment(28, MEAN, STD)
    g = gen(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(3):
            aug(x, g)
        times = []
        for _ in range(15):
            start = time.perf_counter()
            aug(x, g)
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    assert min(times) < 0.005, f"B=128 1x28x28 took {min(times) * 1e3:.1f} ms at best"


def test_eval_transform_is_deterministic_and_resizes():
    x = images(8)
    ev = EvalTransform(28, MEAN, STD)
    assert torch.equal(ev(x), reference_norm(x))
    big = EvalTransform(32, MEAN, STD)(x)
    assert big.shape == (8, 1, 32, 32) and torch.equal(big, EvalTransform(32, MEAN, STD)(x))
    wide = torch.zeros(2, 1, 28, 40, dtype=torch.uint8)
    wide[..., 6:34] = 200
    assert torch.allclose(denorm(EvalTransform(28, MEAN, STD)(wide)), torch.full((2, 1, 28, 28), 200.0), atol=1e-3)


def test_eval_transform_of_a_config_takes_its_size_and_normalisation_or_the_weights_own():
    cfg = load_config(None, {"data.dataset": "synthetic", "data.image_size": "16", "data.channels": "3",
                             "data.mean": "[0.5, 0.4, 0.3]", "data.std": "[0.2, 0.25, 0.3]", "model.patch_size": "4"})
    x = images(b=2, c=3, s=24)
    t = eval_transform(cfg)
    assert t.image_size == 16 and torch.equal(t(x), EvalTransform(16, [0.5, 0.4, 0.3], [0.2, 0.25, 0.3])(x))
    loaded = {"mean": [0.1, 0.2, 0.3], "std": [1.0, 0.5, 2.0]}  # what loaded weights were trained with
    assert torch.equal(eval_transform(cfg, loaded)(x), EvalTransform(16, **loaded)(x))
    cfg.data.mean = cfg.data.std = None  # without data.mean/std: the dataset's own statistics
    assert torch.equal(eval_transform(cfg)(x), EvalTransform(16, *dataset_stats("synthetic", 3))(x))


def test_bad_inputs_are_rejected():
    aug = BatchAugment(28, MEAN, STD)
    with pytest.raises(TypeError, match="uint8 tensor"):
        aug(images(2).float(), gen(0))
    with pytest.raises(ValueError, match="1 values but the images have 3 channels"):
        aug(images(2, 3), gen(0))
    with pytest.raises(TypeError, match="torch.Generator"):
        aug(images(2), None)
    with pytest.raises(ValueError, match="crop_scale"):
        BatchAugment(28, MEAN, STD, crop_scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="std must be > 0"):
        EvalTransform(28, MEAN, (0.0,))
