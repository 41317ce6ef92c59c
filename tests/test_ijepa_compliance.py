"""Behaviour against docs/algorithm.md (and the deliberate differences of docs/deviations.md), checked through the shipped configs and the trainer, not YAML text."""
import math
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from jepa.config import load_config
from jepa.data.batches import build_augment, build_mask_sampler
from jepa.data.datasets import load_dataset
from jepa.losses import LN_EPS
from jepa.train import Trainer
from jepa_kernels import masked_target_loss

from small_config import QUIET, TINY_MODEL
from step_probe import step_on

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
# on top of a shipped config, which sets its own model size and worker count
CUSTOM_TINY_MODEL = {"model.size": "custom", **TINY_MODEL}
QUIET_IN_PROCESS = {**QUIET, "data.num_workers": "0"}


def tiny_trainer(tmp_path, config=None, n_images=32, **over):
    """A trainer with a tiny model on synthetic images of the config's size (the data is not what is tested)."""
    o = {**CUSTOM_TINY_MODEL, **QUIET_IN_PROCESS, "data.batch_size": "8", "training.epochs": "1"}
    o.update({k.replace("__", "."): str(v) for k, v in over.items()})
    cfg = load_config(config, o)
    data = load_dataset("synthetic", channels=cfg.data.channels, image_size=cfg.data.image_size,
                        synthetic_size=n_images)
    return Trainer(cfg, run_dir=tmp_path, dataset=data)


# ------------------------------------------------------------------ §2 masks, over many batches


def spec_block_sizes(grid, scale, aspect, steps=20_000):
    """``{(bh, bw): probability}`` from the block-size rule (docs/algorithm.md#block-sizes): one uniform u sets both scale and aspect ratio."""
    h, w = grid
    out = {}
    for i in range(steps):
        u = (i + 0.5) / steps
        keep = int(h * w * (scale[0] + u * (scale[1] - scale[0])))
        ar = aspect[0] + u * (aspect[1] - aspect[0])
        size = (min(max(round(math.sqrt(keep * ar)), 1), h), min(max(round(math.sqrt(keep / ar)), 1), w))
        out[size] = out.get(size, 0) + 1 / steps
    return out


def patch_mask(idx, n):
    """Index tensor ``[..., K]`` to a boolean patch mask ``[..., n]``."""
    return torch.zeros(*idx.shape[:-1], n, dtype=torch.bool).scatter_(-1, idx, True)


@pytest.mark.parametrize("config", ["cpu_fashion_mnist", "pure_ijepa"])
def test_mask_statistics_over_many_batches(config):
    cfg = load_config(CONFIGS / f"{config}.yaml")
    sampler = build_mask_sampler(cfg)
    h, w = sampler.grid
    n = h * w
    k = cfg.masks
    target_sizes = spec_block_sizes((h, w), k.pred_scale, k.aspect_ratio)
    context_sizes = spec_block_sizes((h, w), k.enc_scale, (1.0, 1.0))
    max_ch, max_cw = max(s[0] for s in context_sizes), max(s[1] for s in context_sizes)
    g = torch.Generator().manual_seed(0)
    seen = {}
    hit_target = torch.zeros(n, dtype=torch.bool)
    hit_context = torch.zeros(n, dtype=torch.bool)
    context_tops = set()
    for _ in range(200):
        ctx, tgt = sampler.sample(16, generator=g)
        assert len(ctx) == k.nenc and len(tgt) == k.npred
        t, c = torch.stack(tgt), torch.stack(ctx)                     # [M, B, Kt], [E, B, Kc]
        rows, cols = t // w, t % w
        bh = rows.amax(-1) - rows.amin(-1) + 1
        bw = cols.amax(-1) - cols.amin(-1) + 1
        assert (bh * bw == t.shape[-1]).all(), "a target block is not a full rectangle"
        sizes = set(zip(bh.flatten().tolist(), bw.flatten().tolist()))
        assert len(sizes) == 1, "all target blocks of a batch share one size"
        size = sizes.pop()
        seen[size] = seen.get(size, 0) + 1
        targets = patch_mask(t, n).any(0)                             # [B, N]
        context = patch_mask(c, n)                                    # [E, B, N]
        assert c.shape[-1] >= k.min_keep
        assert not (context & targets).any(), "context and targets share a patch"
        rows, cols = c // w, c % w
        assert (rows.amax(-1) - rows.amin(-1) < max_ch).all() and (cols.amax(-1) - cols.amin(-1) < max_cw).all()
        context_tops |= set(rows.amin(-1).flatten().tolist())
        hit_target |= targets.any(0)
        hit_context |= context.flatten(0, 1).any(0)
    assert set(seen) <= set(target_sizes), f"sizes outside the scale/aspect rule: {set(seen) - set(target_sizes)}"
    likely = {s for s, p in target_sizes.items() if p >= 0.05}
    assert likely <= set(seen), f"never drew {likely - set(seen)}"
    # reference bugs: the last row/column was never covered and the context block always started at (0, 0)
    assert hit_target.all(), f"targets never cover {(~hit_target).nonzero().flatten().tolist()}"
    assert hit_context.all(), f"context never covers {(~hit_context).nonzero().flatten().tolist()}"
    assert len(context_tops) > 1
    assert sampler.stats()["relaxations"] == 0


def test_training_batches_carry_disjoint_masks_and_their_block_shape(tmp_path):
    trainer = tiny_trainer(tmp_path, CONFIGS / "cpu_fashion_mnist.yaml", n_images=64)
    n = 49
    for batch in trainer.data.epoch(0):
        bh, bw = batch.block_hw
        assert batch.tgt_idx.shape[2] == bh * bw
        targets = torch.stack([patch_mask(m, n) for m in batch.tgt_idx]).any(0)
        assert not (patch_mask(batch.ctx_idx[0], n) & targets).any()
        rows = batch.tgt_idx // 7
        assert ((rows.amax(-1) - rows.amin(-1) + 1) == bh).all()


# ------------------------------------------------------------------ §4 schedules


def test_schedule_values_at_given_steps_of_the_fashion_mnist_run(tmp_path):
    cfg = load_config(CONFIGS / "cpu_fashion_mnist.yaml", {**QUIET_IN_PROCESS, "training.epochs": "3"})
    s = Trainer(cfg, run_dir=tmp_path).schedules                   # 60000 // 128 = 468 steps x 3 epochs
    assert (s.total_steps, s.warmup_steps) == (1404, 468)
    assert s.momentum_at(0) == pytest.approx(0.996, abs=1e-12)
    assert s.momentum_at(351) == pytest.approx(0.997, abs=1e-12)
    assert s.momentum_at(702) == pytest.approx(0.998, abs=1e-12)
    assert s.momentum_at(1404) == 1.0
    steps = [s.momentum_at(i) - s.momentum_at(i - 1) for i in range(1, 1405)]
    assert max(steps) - min(steps) < 1e-15, "EMA momentum is not linear"
    assert s.lr_at(0) == pytest.approx(2e-4)
    assert s.lr_at(234) == pytest.approx(6e-4)
    assert s.lr_at(468) == pytest.approx(1e-3)
    assert s.lr_at(936) == pytest.approx((1e-3 + 1e-6) / 2)        # half-way through the cosine
    assert s.lr_at(1404) == pytest.approx(1e-6)
    assert s.wd_at(0) == pytest.approx(0.04)
    assert s.wd_at(351) == pytest.approx(0.04 + 0.36 * (1 - math.cos(math.pi / 4)) / 2)
    assert s.wd_at(702) == pytest.approx(0.22)
    assert s.wd_at(1404) == pytest.approx(0.4)

    pure = tiny_trainer(tmp_path / "pure", CONFIGS / "pure_ijepa.yaml", n_images=16, data__batch_size=4,
                        training__epochs=300).schedules
    assert pure.total_steps == 4 * 300
    assert pure.wd_at(300) == pytest.approx(0.04 + 0.36 * 0.25)    # the paper text's linear ramp
    assert pure.momentum_at(600) == pytest.approx(0.998, abs=1e-12)


def test_trainer_applies_the_schedules_and_the_last_ema_update_uses_momentum_one(tmp_path):
    trainer = tiny_trainer(tmp_path, n_images=32)                 # 4 steps
    batches = list(trainer.data.epoch(0))
    out = trainer.train_step([batches[0]])
    groups = trainer.optimizer.param_groups
    assert out["lr"] == pytest.approx(trainer.cfg.optim.start_lr) and groups[0]["lr"] == out["lr"]
    assert groups[0]["weight_decay"] == pytest.approx(0.04) and groups[1]["weight_decay"] == 0.0
    assert out["momentum"] == pytest.approx(0.996 + 0.004 / 4)
    for b in batches[1:3]:
        trainer.train_step([b])
    before = [p.clone() for p in trainer.model.target_encoder.parameters()]
    online = [p.clone() for p in trainer.model.context_encoder.parameters()]
    out = trainer.train_step([batches[3]])
    assert out["momentum"] == 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.target_encoder.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(online, trainer.model.context_encoder.parameters()))


# ------------------------------------------------------------------ §3.4 the loss


def hand_made():
    """Two images of 3 tokens (D = 2), two target masks of one token each, predictions in (mask, image) order."""
    target = torch.tensor([[[1.0, 3.0], [5.0, 1.0], [2.0, 2.0]],
                           [[0.0, 2.0], [4.0, 0.0], [7.0, 7.0]]])
    idx = torch.tensor([[[1], [0]], [[0], [1]]])                  # mask 0: tokens 1, 0; mask 1: tokens 0, 1
    pred = torch.tensor([[[5.0, 1.0]], [[0.0, 2.0]], [[1.0, 3.0]], [[4.0, 0.0]]])
    return pred, target, idx


def test_loss_on_a_hand_made_example():
    pred, target, idx = hand_made()
    # the raw rows equal the predictions exactly when the rows are ordered (mask, image)
    assert masked_target_loss(pred, target, idx, normalize=False).item() == 0.0
    # layer-normed rows are [1, -1], [-1, 1], [-1, 1], [1, -1]; squared errors 20, 2, 8, 10 over 8 numbers
    cfg = load_config(None).loss
    default = masked_target_loss(pred, target, idx, cfg.type, cfg.beta, cfg.normalize_targets, LN_EPS)
    assert default.item() == pytest.approx(40 / 8, rel=1e-5)
    # smooth L1 (beta 1, the reference code's loss): per-row sums 5, 1, 3, 3
    assert masked_target_loss(pred, target, idx, "smooth_l1", eps=LN_EPS).item() == pytest.approx(12 / 8, rel=1e-5)


def test_default_loss_is_mse_through_the_trainer(tmp_path):
    trainer = tiny_trainer(tmp_path)
    assert trainer.cfg.loss.type == "mse" and not trainer.cfg.loss.normalize_embeddings
    batch = next(trainer.data.epoch(0))
    loss = step_on(trainer, batch)[0]["loss"]
    model = trainer.model
    with torch.no_grad():
        h = F.layer_norm(model.target_encoder(batch.images), (32,), eps=LN_EPS)
        tgt = torch.stack([h[b, batch.tgt_idx[m, b]] for m in range(4) for b in range(8)])
        pred = model.predictor(model.context_encoder(batch.images, batch.ctx_idx), batch.ctx_idx, batch.tgt_idx)
    torch.testing.assert_close(loss, F.mse_loss(pred, tgt), rtol=1e-5, atol=1e-7)
    assert abs(loss.item() - F.smooth_l1_loss(pred, tgt).item()) > 1e-3


def test_targets_are_layer_normed_without_affine(tmp_path):
    trainer = tiny_trainer(tmp_path)
    batch = next(trainer.data.epoch(0))

    def loss_of():
        return step_on(trainer, batch)[0]["loss"]
    loss = loss_of()
    encoder = trainer.target_encoder
    # a layer norm over the feature dimension with no learned scale/shift cannot see a global affine change
    trainer.target_encoder = lambda x: 3.0 * encoder(x) + 2.0
    torch.testing.assert_close(loss_of(), loss, rtol=1e-4, atol=1e-6)
    # ... but a per-feature one changes every normalised row
    trainer.target_encoder = lambda x: encoder(x) * torch.linspace(0.5, 2.0, 32)
    assert abs(loss_of().item() - loss.item()) > 1e-3
    # and without the normalisation the same global change is seen (the encoder's own final norm is not enough)
    trainer.target_encoder = lambda x: 3.0 * encoder(x) + 2.0
    trainer.cfg.loss.normalize_targets = False
    assert loss_of().item() > 2.0 * loss.item()
    # no learned normalisation on the target side: every parameter belongs to the three networks
    assert {n.split(".")[0] for n, _ in trainer.model.named_parameters()} == \
        {"context_encoder", "predictor", "target_encoder"}


# ------------------------------------------------------------------ §4 optimizer


def test_weight_decay_skips_biases_and_1d_parameters_in_an_actual_step(tmp_path):
    trainer = tiny_trainer(tmp_path, model__num_hierarchies=3)
    model, opt = trainer.model, trainer.optimizer
    for p in model.online_parameters():
        p.grad = torch.zeros_like(p)                              # Adam's own update is 0: only decay acts
    for g in opt.param_groups:
        g["lr"] = 1.0
        g["weight_decay"] = 0.5 if g["apply_wd"] else 0.0
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    decayed, kept = [], []
    for n, p in model.named_parameters():
        if n.startswith("target_encoder."):
            assert torch.equal(p, before[n])
            continue
        if p.ndim >= 2 and not n.endswith(".bias"):
            torch.testing.assert_close(p, 0.5 * before[n])
            decayed.append(n)
        else:
            assert torch.equal(p, before[n]), n
            kept.append(n)
    assert "predictor.mask_token" in decayed and "level_heads.0.weight" in decayed
    assert "level_heads.1.bias" in kept and any(n.endswith("norm1.weight") for n in kept)


# ------------------------------------------------------------------ the strict paper config


def test_pure_ijepa_builds_one_level_mse_with_flip_only_augmentation(tmp_path):
    cfg = load_config(CONFIGS / "pure_ijepa.yaml")
    assert cfg.model.num_hierarchies == 1 and cfg.loss.type == "mse" and cfg.loss.normalize_targets
    assert not cfg.loss.normalize_embeddings and tuple(cfg.optim.ema) == (0.996, 1.0)
    assert (tuple(cfg.masks.enc_scale), tuple(cfg.masks.pred_scale), cfg.masks.nenc, cfg.masks.npred) == \
        ((0.85, 1.0), (0.15, 0.2), 1, 4)

    aug = build_augment(cfg)
    images = torch.randint(0, 256, (16, 3, 224, 224), dtype=torch.uint8)
    out = aug(images, torch.Generator().manual_seed(0))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    plain = (images.float() / 255 - mean) / std
    same = [torch.allclose(o, p, atol=1e-5) for o, p in zip(out, plain)]
    flipped = [torch.allclose(o, p.flip(-1), atol=1e-5) for o, p in zip(out, plain)]
    assert all(a or b for a, b in zip(same, flipped)), "an image was cropped, resized or otherwise changed"
    assert any(same) and any(flipped)

    trainer = tiny_trainer(tmp_path, CONFIGS / "pure_ijepa.yaml", n_images=16, data__batch_size=4)
    model = trainer.model
    assert len(model.level_heads) == 0
    plain_params = sum(p.numel() for m in (model.context_encoder, model.predictor) for p in m.parameters())
    assert sum(p.numel() for p in model.online_parameters()) == plain_params
    parts, _ = step_on(trainer, next(trainer.data.epoch(0)))
    assert torch.isfinite(parts["loss"]) and not any(k.startswith("loss/") for k in parts)


# ------------------------------------------------------------------ §6 the VICReg warning


def test_vicreg_fields_without_the_combined_loss_warn_once_naming_them(tmp_path):
    with pytest.warns(UserWarning) as record:
        load_config(None, {"loss.vicreg_weight": "0.2", "loss.vicreg_cov_weight": "5"})
    assert len(record) == 1
    msg = str(record[0].message)
    assert "loss.vicreg_weight" in msg and "loss.vicreg_cov_weight" in msg and "loss.vicreg_var_weight" not in msg
    assert "combined" in msg

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_config(None, {"loss.type": "combined", "loss.vicreg_weight": "0.2"})
        load_config(None)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = tiny_trainer(tmp_path, loss__vicreg_inv_weight="2")
        for batch in list(trainer.data.epoch(0))[:2]:
            trainer.train_step([batch])
    vic = [w for w in caught if "vicreg" in str(w.message)]
    assert len(vic) == 1 and "loss.vicreg_inv_weight" in str(vic[0].message)
