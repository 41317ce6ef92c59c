"""H-JEPA levels and the combined VICReg loss (docs/algorithm.md, "H-JEPA levels" and "Combined loss"): pooling,
parity with pure I-JEPA, gradients, the target side, logging and config errors."""
import pytest
import torch
import torch.nn.functional as F

from jepa.config import ConfigError, load_config
from jepa.data import Batch
from jepa.data.datasets import load_dataset
from jepa.losses import LN_EPS, pool_blocks, vicreg_loss
from jepa.models.vit import Predictor, VisionTransformer
from jepa.train import Trainer

from small_config import SMALL_BASE
from step_probe import step_on

TINY = {**SMALL_BASE, "data.dataset": "synthetic", "data.channels": "1", "data.image_size": "28",
        "data.synthetic_size": "32", "data.batch_size": "8", "logging.log_every": "1"}


def cfg_with(**over):
    o = dict(TINY)
    o.update({k.replace("__", "."): str(v) for k, v in over.items()})
    return load_config(None, o)


def trainer_for(tmp_path, name="run", **over):
    cfg = cfg_with(**over)
    data = load_dataset("synthetic", channels=1, image_size=28, synthetic_size=32, seed=0)
    return Trainer(cfg, run_dir=tmp_path / name, dataset=data)


def first_batch(trainer) -> Batch:
    return next(trainer.data.epoch(0))


# ------------------------------------------------------------------ pooling


def test_pool_blocks_is_the_hand_computed_2d_average_on_odd_non_square_blocks():
    # a 3x5 block, tokens row-major:   0  1  2  3  4 /  5  6  7  8  9 / 10 11 12 13 14
    wide = torch.arange(15.0).view(1, 15, 1)
    wide = torch.cat([wide, -10 * wide], dim=2)                    # a second channel, pooled on its own
    two = pool_blocks(wide, (3, 5), 2)
    assert two.shape == (1, 6, 2)                                  # ceil(3/2) x ceil(5/2) windows
    assert two[0, :, 0].tolist() == [3.0, 5.0, 6.5, 10.5, 12.5, 14.0]
    assert two[0, :, 1].tolist() == [-30.0, -50.0, -65.0, -105.0, -125.0, -140.0]
    assert pool_blocks(wide, (3, 5), 4)[0, :, 0].tolist() == [6.5, 9.0]
    assert pool_blocks(wide, (3, 5), 8)[0, :, 0].tolist() == [7.0]

    # the same 15 tokens read as a 5x3 block:  0 1 2 / 3 4 5 / 6 7 8 / 9 10 11 / 12 13 14
    tall = pool_blocks(torch.arange(15.0).view(1, 15, 1), (5, 3), 2)
    assert tall[0, :, 0].tolist() == [2.0, 3.5, 8.0, 9.5, 12.5, 14.0]


def test_pool_blocks_rejects_a_block_shape_that_does_not_match():
    with pytest.raises(ValueError, match="not 3x4"):
        pool_blocks(torch.zeros(2, 15, 4), (3, 4), 2)


def test_level_predictions_are_the_head_applied_to_the_2d_pooled_prediction(tmp_path):
    trainer = trainer_for(tmp_path, model__num_hierarchies=3)
    model = trainer.model
    with torch.no_grad():
        for head in model.level_heads:
            head.weight.copy_(torch.eye(32))
            head.bias.zero_()
    batch = first_batch(trainer)
    _, preds = model(batch.images, batch.ctx_idx, batch.tgt_idx, batch.block_hw)
    bh, bw = batch.block_hw
    assert len(preds) == 3
    for level in (1, 2):
        f = 2 ** level
        grid = preds[0].detach().view(-1, bh, bw, 32).permute(0, 3, 1, 2)
        manual = F.avg_pool2d(grid, f, f, ceil_mode=True, count_include_pad=False).flatten(2).transpose(1, 2)
        assert preds[level].shape == (preds[0].shape[0], -(-bh // f) * -(-bw // f), 32)
        torch.testing.assert_close(preds[level], manual, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ L = 1 is pure I-JEPA


def test_one_level_has_the_numbers_and_parameters_of_a_model_without_the_feature(tmp_path):
    trainer = trainer_for(tmp_path, model__num_hierarchies=1)
    model = trainer.model
    # the same networks, built directly from the ViT and predictor classes with no hierarchy code around them
    encoder = VisionTransformer(28, 4, 1, 32, 2, 2)
    target = VisionTransformer(28, 4, 1, 32, 2, 2)
    predictor = Predictor((7, 7), 32, 16, 1, 2)
    encoder.load_state_dict(model.context_encoder.state_dict())
    target.load_state_dict(model.target_encoder.state_dict())
    predictor.load_state_dict(model.predictor.state_dict())
    plain = sum(p.numel() for p in encoder.parameters()) + sum(p.numel() for p in predictor.parameters())
    assert sum(p.numel() for p in model.online_parameters()) == plain
    assert not any(k.startswith("level_heads") for k in model.state_dict())

    batch = first_batch(trainer)
    parts, _ = step_on(trainer, batch)
    loss = parts["loss"]
    with torch.no_grad():
        h = F.layer_norm(target(batch.images), (32,), eps=LN_EPS)
        M, B, K = batch.tgt_idx.shape
        tgt = torch.stack([h[b, batch.tgt_idx[m, b]] for m in range(M) for b in range(B)])
        pred = predictor(encoder(batch.images, batch.ctx_idx), batch.ctx_idx, batch.tgt_idx)
        expected = F.mse_loss(pred, tgt)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-7)
    assert not any(k.startswith("loss/level") for k in parts)

    # a 3-level model with the same weights: its level-0 loss is the 1-level loss, its total the weighted sum
    three = trainer_for(tmp_path, "three", model__num_hierarchies=3)
    missing, unexpected = three.model.load_state_dict(model.state_dict(), strict=False)
    assert unexpected == [] and all(k.startswith("level_heads.") for k in missing) and len(missing) == 4
    p3, _ = step_on(three, batch)
    torch.testing.assert_close(p3["loss/level0"], loss, rtol=1e-6, atol=1e-7)
    weighted = p3["loss/level0"] + 0.5 * p3["loss/level1"] + 0.25 * p3["loss/level2"]
    torch.testing.assert_close(p3["loss"], weighted, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------ gradients and the target side


def test_gradients_reach_every_level_head_and_level_weights_gate_them(tmp_path):
    trainer = trainer_for(tmp_path, model__num_hierarchies=4)
    batch = first_batch(trainer)
    _, grads = step_on(trainer, batch)
    for i in range(len(trainer.model.level_heads)):
        assert grads[f"level_heads.{i}.weight"].abs().sum() > 0 and grads[f"level_heads.{i}.bias"].abs().sum() > 0
    assert not any(name.startswith("target_encoder.") for name in grads)

    gated = trainer_for(tmp_path, "gated", model__num_hierarchies=4, loss__level_weights="[0, 1, 0, 0]")
    gated.model.load_state_dict(trainer.model.state_dict())
    _, grads = step_on(gated, batch)
    assert grads["level_heads.0.weight"].abs().sum() > 0
    assert grads["level_heads.1.weight"].abs().sum() == 0 and grads["level_heads.2.weight"].abs().sum() == 0
    # the coarse level alone still trains the predictor and the context encoder through the pooled predictions
    assert grads["predictor.mask_token"].abs().sum() > 0
    assert any(g.abs().sum() > 0 for name, g in grads.items() if name.startswith("context_encoder."))


def test_target_side_has_no_trainable_parameters(tmp_path):
    trainer = trainer_for(tmp_path, model__num_hierarchies=3)
    model = trainer.model
    assert all(not p.requires_grad for p in model.target_encoder.parameters())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, p in model.named_parameters() if not n.startswith("target_encoder.")}
    optimised = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in optimised for p in model.target_encoder.parameters())

    # with the heads zeroed every coarse prediction is 0, so each coarse loss is the mean square of its
    # target: exactly the pooled, layer-normed target-encoder features, nothing trainable in between
    with torch.no_grad():
        for head in model.level_heads:
            head.weight.zero_()
            head.bias.zero_()
    batch = first_batch(trainer)
    parts, _ = step_on(trainer, batch)
    with torch.no_grad():
        h = F.layer_norm(model.target_encoder(batch.images), (32,), eps=LN_EPS)
        M, B, K = batch.tgt_idx.shape
        tgt = torch.stack([h[b, batch.tgt_idx[m, b]] for m in range(M) for b in range(B)])
    for level in (1, 2):
        expected = pool_blocks(tgt, batch.block_hw, 2 ** level).pow(2).mean()
        torch.testing.assert_close(parts[f"loss/level{level}"], expected, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------ logging


def test_per_level_losses_are_logged_separately_to_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    trainer = trainer_for(tmp_path, model__num_hierarchies=3, logging__tensorboard="true",
                          training__stop_at_step=2)
    result = trainer.train()
    assert result["step"] == 2
    events = EventAccumulator(str(tmp_path / "run" / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/level0", "loss/level1", "loss/level2", "train/loss"} <= tags
    for step in (1, 2):
        value = {t: next(e.value for e in events.Scalars(t) if e.step == step)
                 for t in ("loss/level0", "loss/level1", "loss/level2", "train/loss")}
        weighted = value["loss/level0"] + 0.5 * value["loss/level1"] + 0.25 * value["loss/level2"]
        assert value["train/loss"] == pytest.approx(weighted, rel=1e-5)
        assert len({value["loss/level0"], value["loss/level1"], value["loss/level2"]}) == 3


# ------------------------------------------------------------------ config errors


def test_level_weights_must_match_the_number_of_levels():
    with pytest.raises(ConfigError, match=r"loss\.level_weights.*num_hierarchies=3"):
        load_config(None, {"model.num_hierarchies": "3", "loss.level_weights": "[1.0, 0.5]"})
    with pytest.raises(ConfigError, match=r"loss\.level_weights.*num_hierarchies=1"):
        load_config(None, {"loss.level_weights": "[1.0, 0.5]"})
    with pytest.raises(ConfigError, match=r"model\.num_hierarchies.*1\.\.4"):
        load_config(None, {"model.num_hierarchies": "5"})
    assert load_config(None, {"model.num_hierarchies": "4"}).loss.level_weights == [1.0, 0.5, 0.25, 0.125]


def test_unknown_loss_type_lists_the_valid_ones():
    with pytest.raises(ConfigError) as e:
        load_config(None, {"loss.type": "l1"})
    msg = str(e.value)
    assert "loss.type" in msg and "'l1'" in msg
    assert all(name in msg for name in ("mse", "smooth_l1", "combined"))


# ------------------------------------------------------------------ combined loss (VICReg term)


def test_vicreg_loss_on_a_hand_made_example():
    # E = 2 context masks x B = 2 images, rows ordered (e, b); each mask has one token
    z = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]]).view(4, 1, 2)
    h = torch.tensor([[3.0, 1.0], [1.0, 3.0]]).view(2, 1, 2)      # layer-normed: [1, -1] and [-1, 1]
    # variance: dim 0 has std sqrt(4/3) >= 1 (no penalty), dim 1 has std sqrt(1e-4) -> mean(0, 0.99) = 0.495
    # covariance: the off-diagonal entry is 0; invariance: every row differs from its image's target by 1 in
    # one of 2 dims -> 0.5 (with the rows matched to the wrong images it would be 2.5)
    assert vicreg_loss(z, h, 2, 25.0, 25.0, 0.0).item() == pytest.approx(25 * 0.495, rel=1e-5)
    assert vicreg_loss(z, h, 2, 25.0, 25.0, 1.0).item() == pytest.approx(25 * 0.495 + 0.5, rel=1e-5)
    assert vicreg_loss(z, h, 2, 0.0, 0.0, 2.0).item() == pytest.approx(1.0, rel=1e-5)


def test_combined_loss_adds_the_weighted_vicreg_term(tmp_path):
    plain = trainer_for(tmp_path, "plain")
    combined = trainer_for(tmp_path, "combined", loss__type="combined", loss__vicreg_weight="0.3")
    combined.model.load_state_dict(plain.model.state_dict())
    batch = first_batch(plain)
    base = step_on(plain, batch)[0]["loss"]
    parts, _ = step_on(combined, batch)
    torch.testing.assert_close(parts["loss/prediction"], base, rtol=1e-6, atol=1e-7)
    z = combined.model.context_encoder(batch.images, batch.ctx_idx)
    h = combined.model.target_encoder(batch.images)
    reg = vicreg_loss(z, h, 1, 25.0, 25.0, 1.0)
    torch.testing.assert_close(parts["loss/vicreg"], reg.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(parts["loss"], base + 0.3 * reg.detach(), rtol=1e-5, atol=1e-6)
    assert parts["loss/vicreg"] > 0
