"""SIGReg in training and online targets (docs/algorithm.md, "SIGReg" and "Online targets"): the step's loss by
hand, the stop-gradient on online targets, the gradient of target-side SIGReg, exact resume, no EMA and no copy
with online targets, checkpoints and exports of them, and the config errors."""
import warnings

import pytest
import torch

import jepa_kernels
from jepa.checkpoint import checkpoint_path, load_checkpoint
from jepa.config import ConfigError, load_config
from jepa.data.datasets import load_dataset
from jepa.export import read_encoder
from jepa.interop.init import init_from
from jepa.models import build_model
from jepa.sigreg import null_value, sigreg, sigreg_directions
from jepa.train import Trainer

from small_config import SMALL_BASE
from step_probe import step_on

TINY = {**SMALL_BASE, "data.dataset": "synthetic", "data.channels": "1", "data.image_size": "28",
        "data.synthetic_size": "32", "data.batch_size": "8", "logging.log_every": "1", "training.seed": "3"}
ONLINE = {"model.target_encoder": "online", "loss.sigreg_weight": "0.7", "loss.sigreg_slices": "16"}

pytestmark = pytest.mark.usefixtures("one_thread")


def cfg_with(**over):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # online targets without SIGReg warn; tests set that on purpose
        return load_config(None, {**TINY, **{k.replace("__", "."): str(v) for k, v in over.items()}})


def trainer_for(tmp_path, name="run", **over):
    data = load_dataset("synthetic", channels=1, image_size=28, synthetic_size=32, seed=0)
    return Trainer(cfg_with(**over), run_dir=tmp_path / name, dataset=data)


def first_batch(trainer):
    return next(trainer.data.epoch(0))


def copy_weights(src, dst):
    """``src``'s context encoder, predictor and level heads into ``dst`` (and into its EMA copy, if it has one)."""
    for part in ("context_encoder", "predictor", "level_heads"):
        getattr(dst.model, part).load_state_dict(getattr(src.model, part).state_dict())
    if dst.model.has_ema:
        dst.model.target_encoder.load_state_dict(src.model.context_encoder.state_dict())


# ------------------------------------------------------------------ the step


@pytest.mark.parametrize("targets,where", [("ema", "context"), ("online", "context"), ("online", "both")])
def test_step_loss_is_prediction_plus_weighted_sigreg_with_that_steps_directions(tmp_path, targets, where):
    plain = trainer_for(tmp_path, "plain", model__target_encoder=targets)
    reg = trainer_for(tmp_path, "reg", **{**ONLINE, "model.target_encoder": targets, "loss.sigreg_on": where})
    copy_weights(plain, reg)
    reg.step = plain.step = 5  # the directions of step 5
    batch = first_batch(plain)
    base = step_on(plain, batch)[0]["loss"]
    parts, _ = step_on(reg, batch)
    torch.testing.assert_close(parts["loss/prediction"], base, rtol=1e-6, atol=1e-7)

    enc = reg.model.context_encoder
    with torch.no_grad():
        pooled = {"context": enc(batch.images, batch.ctx_idx).mean(dim=1), "target": enc(batch.images).mean(dim=1)}
    for name, seed, step in (("this step", 3, 5), ("another step", 3, 6), ("another seed", 4, 5)):
        dirs = sigreg_directions(32, 16, step=step, seed=seed)
        terms = [sigreg(pooled[k], dirs) for k in ("context", "target") if where in (k, "both")]
        hand = sum(terms) / len(terms)
        if name == "this step":
            torch.testing.assert_close(parts["loss/sigreg"], hand, rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(parts["loss"], base + 0.7 * hand, rtol=1e-5, atol=1e-6)
        else:
            assert abs(parts["loss/sigreg"].item() - hand.item()) > 1e-4, name
    assert parts["loss/sigreg_null"] == pytest.approx(null_value(8))


def test_online_targets_are_a_stop_gradient(tmp_path):
    """At equal weights an EMA copy equals the encoder, so online targets held without gradient give the EMA
    step's loss and gradients exactly."""
    online = trainer_for(tmp_path, "online", model__target_encoder="online")
    ema = trainer_for(tmp_path, "ema")
    copy_weights(online, ema)
    batch = first_batch(online)
    (a, grads_online), (b, grads_ema) = step_on(online, batch), step_on(ema, batch)
    torch.testing.assert_close(a["loss"], b["loss"], rtol=0, atol=0)
    assert grads_online.keys() == grads_ema.keys()
    for name in grads_online:
        torch.testing.assert_close(grads_online[name], grads_ema[name], rtol=1e-6, atol=1e-9, msg=name)


@pytest.mark.parametrize("levels", ["1", "2"])  # level 1 reads the targets outside the fused level-0 kernel
def test_target_side_sigreg_backpropagates_through_the_target_forward_alone(tmp_path, levels):
    plain = trainer_for(tmp_path, "plain", model__target_encoder="online", model__num_hierarchies=levels)
    reg = trainer_for(tmp_path, "reg", **{**ONLINE, "loss.sigreg_on": "target", "model.num_hierarchies": levels})
    copy_weights(plain, reg)
    batch = first_batch(plain)
    base, with_reg = step_on(plain, batch)[1], step_on(reg, batch)[1]
    enc = reg.model.context_encoder
    params = dict(enc.named_parameters())
    term = sigreg(enc(batch.images).mean(dim=1), sigreg_directions(32, 16, step=0, seed=3))
    hand = dict(zip(params, torch.autograd.grad(0.7 * term, list(params.values()), allow_unused=True)))
    for name, g in hand.items():
        if g is not None:
            torch.testing.assert_close(with_reg[f"context_encoder.{name}"] - base[f"context_encoder.{name}"], g,
                                       rtol=1e-4, atol=1e-7, msg=name)
    for name in base:
        if not name.startswith("context_encoder."):  # the predictor never sees the target embeddings
            torch.testing.assert_close(with_reg[name], base[name], rtol=1e-6, atol=1e-9, msg=name)


# ------------------------------------------------------------------ online targets


def test_online_model_holds_no_target_copy_and_half_the_encoder_parameters():
    ema, online = build_model(cfg_with()), build_model(cfg_with(model__target_encoder="online"))
    count = lambda params: sum(p.numel() for p in params)  # noqa: E731
    encoder = count(online.context_encoder.parameters())
    assert online.target_encoder is online.context_encoder
    assert not [k for k in online.state_dict() if k.startswith("target_encoder.")]
    assert count(ema.parameters()) - count(online.parameters()) == encoder
    enc_ema = count(ema.context_encoder.parameters()) + count(ema.target_encoder.parameters())
    assert enc_ema == 2 * encoder
    assert count(online.online_parameters()) == count(ema.online_parameters())


def test_online_run_never_calls_the_ema_and_its_monitors_and_exports_work(tmp_path, monkeypatch):
    def no_ema(*args, **kwargs):
        raise AssertionError("ema_update_ called with online targets")
    monkeypatch.setattr(jepa_kernels, "ema_update_", no_ema)
    trainer = trainer_for(tmp_path, "online", **ONLINE, **{"eval.every_epochs": "1", "eval.max_train": "16",
                                                            "eval.max_test": "8", "logging.images_every_epochs": "1"})
    seen = []
    step = trainer.train_step
    trainer.train_step = lambda group: seen.append(step(group)) or seen[-1]
    assert trainer.train()["stopped"] == "completed" and trainer.step == 4
    assert trainer.ema_pairs is None and all("momentum" not in m for m in seen)
    assert trainer.collapse.start is not None and trainer.knn_monitor.data  # RankMe and the k-NN monitor ran

    path = checkpoint_path(tmp_path / "online", 4)
    state = load_checkpoint(path)
    assert not [k for k in state["model"] if k.startswith("target_encoder.")]
    context = trainer.model.context_encoder.state_dict()
    for which in ("target", "context"):  # the target encoder of an online run is its context encoder
        weights = read_encoder(path, which)["weights"]
        assert weights.keys() == context.keys()
        assert all(torch.equal(weights[k], context[k]) for k in context)


def test_an_online_model_starts_its_encoder_from_a_checkpoints_context_encoder(tmp_path):
    ema = trainer_for(tmp_path, "ema")
    ema.model.target_encoder.load_state_dict({k: v + 1 for k, v in ema.model.target_encoder.state_dict().items()})
    path = ema.save_checkpoint()
    online = build_model(cfg_with(model__target_encoder="online"))
    summary = init_from(online, cfg_with(model__target_encoder="online"), path)
    assert summary["context"] == summary["target"] == "context"
    want = ema.model.context_encoder.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in online.context_encoder.state_dict().items())


# ------------------------------------------------------------------ resume


def test_resume_with_sigreg_and_online_targets_is_bit_identical(tmp_path):
    over = {**ONLINE, "loss.sigreg_on": "both", "training.epochs": "2", "optim.warmup_epochs": "0.5",
            "checkpoint.keep_last": "3"}
    full = trainer_for(tmp_path, "full", **over)
    assert full.train()["step"] == 8
    first = trainer_for(tmp_path, "cut", **over, training__stop_at_step=3)
    assert first.train()["stopped"] == "stop_at_step 3"
    second = Trainer(cfg_with(**over), run_dir=tmp_path / "cut", resume="auto",
                     dataset=load_dataset("synthetic", channels=1, image_size=28, synthetic_size=32, seed=0))
    assert second.step == 3 and second.train()["stopped"] == "completed"
    for (name, p), q in zip(full.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(p, q), f"parameter {name} differs after resume"


# ------------------------------------------------------------------ config


@pytest.mark.parametrize("over,match", [
    ({"loss.sigreg_weight": "-0.1"}, "loss.sigreg_weight: must be a number in"),
    ({"loss.sigreg_slices": "0"}, "loss.sigreg_slices: must be an integer in 1..65536, got 0"),
    ({"loss.sigreg_on": "target"}, "loss.sigreg_on: 'target' .*model.target_encoder: ema.*model.target_encoder: online"),
    ({"loss.sigreg_on": "both", "loss.sigreg_weight": "1"}, "loss.sigreg_on: 'both'"),
    ({"loss.sigreg_on": "pooled"}, "loss.sigreg_on: must be one of context, target, both"),
    ({"model.target_encoder": "momentum"}, "model.target_encoder: must be one of ema, online"),
    ({"model.target_encoder": "online", "distributed.strategy": "fsdp"}, "model.target_encoder: online .*fsdp"),
])
def test_bad_sigreg_and_target_settings_name_the_keys(over, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, over)


def test_online_targets_without_a_regulariser_warn_of_collapse():
    with pytest.warns(UserWarning, match="model.target_encoder: online without a regulariser"):
        load_config(None, {"model.target_encoder": "online"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_config(None, {"model.target_encoder": "online", "loss.sigreg_weight": "1", "loss.sigreg_on": "both"})
        load_config(None, {"model.target_encoder": "online", "loss.type": "combined"})
