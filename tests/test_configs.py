"""Every config users expect exists, validates, keeps the paper settings, and trains for 2 steps.

The 2-step runs keep each config's image size, patch grid, masks, loss, levels and optimizer, and shrink only
what makes them slow: the model (tiny ViT), the batch, the device (cpu) and, where the real data cannot be
here, the images (synthetic ones of the config's size; Fashion-MNIST is read for real).
"""
import math
from pathlib import Path

import pytest
import torch
import yaml

from jepa.config import load_config
from jepa.train import Trainer

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
NAMES = ["default", "pure_ijepa", "cpu_fashion_mnist", "cpu_cifar10", "quick_validation", "small_experiment",
         "foundation_model_mini", "m1_max_quick_val", "m1_max_full_20epoch", "m1_max_full_100epoch",
         "m1_max_imagenet100_100epoch", "hjepa_3level", "lejepa_fashion_mnist"]
TINY = {"model.size": "custom", "model.embed_dim": "32", "model.depth": "1", "model.num_heads": "2",
        "model.pred_dim": "16", "model.pred_depth": "1", "model.pred_heads": "2", "data.batch_size": "4",
        "data.num_workers": "0", "training.device": "cpu", "training.compile": "false",
        "training.stop_at_step": "2", "logging.progress": "false", "logging.tensorboard": "false",
        "logging.log_every": "1"}


@pytest.mark.parametrize("name", NAMES)
def test_config_loads_with_paper_settings(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.name == name
    loss = cfg.loss
    assert (loss.base if loss.type == "combined" else loss.type) == "mse"
    assert loss.normalize_targets and not loss.normalize_embeddings
    assert tuple(cfg.optim.ema) == (0.996, 1.0)
    assert tuple(cfg.masks.pred_scale) == (0.15, 0.2)
    assert len(loss.level_weights) == cfg.model.num_hierarchies
    if name.startswith("m1_max_"):
        # a proxy for "fits a 32 GB laptop": at most ViT-S width and ViT-S/16 at 224 px with batch 64 per step
        tokens = cfg.data.batch_size * (cfg.data.image_size // cfg.model.patch_size) ** 2
        assert cfg.training.device == "mps" and cfg.model.embed_dim <= 384 and tokens <= 64 * 196


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_config_validates(path):
    assert load_config(path).name == path.stem


def test_hjepa_3level_differs_from_cpu_fashion_mnist_only_in_the_hierarchy():
    one = load_config(CONFIGS / "cpu_fashion_mnist.yaml").to_dict()
    three = load_config(CONFIGS / "hjepa_3level.yaml").to_dict()
    assert three["model"].pop("num_hierarchies") == 3 and one["model"].pop("num_hierarchies") == 1
    assert three["loss"].pop("level_weights") == [1.0, 0.5, 0.25] and one["loss"].pop("level_weights") == [1.0]
    assert three["data"]["dataset"] == "fashion_mnist"
    for section in ("model", "data", "masks", "loss", "optim", "training"):
        assert three[section] == one[section], section


def test_lejepa_fashion_mnist_is_cpu_fashion_mnist_with_online_targets_and_sigreg_instead_of_vicreg():
    base = load_config(CONFIGS / "cpu_fashion_mnist.yaml").to_dict()
    le = load_config(CONFIGS / "lejepa_fashion_mnist.yaml").to_dict()
    assert (base["model"].pop("target_encoder"), le["model"].pop("target_encoder")) == ("ema", "online")
    assert le["loss"]["type"] == "mse" and le["loss"]["sigreg_weight"] > 0 and le["loss"]["sigreg_on"] == "context"
    assert base["loss"]["sigreg_weight"] == 0
    for section in ("model", "data", "masks", "optim", "training"):
        assert le[section] == base[section], section


def test_foundation_model_mini_mixes_datasets():
    mix = load_config(CONFIGS / "foundation_model_mini.yaml").data.mix
    assert len({p.name for p in mix}) >= 2 and math.isclose(sum(p.weight for p in mix), 1.0)


def two_step_overrides(cfg) -> dict:
    """TINY plus data small enough for exactly 2 optimizer steps, synthetic unless it is Fashion-MNIST."""
    images = int(TINY["data.batch_size"]) * cfg.training.accum_steps * 2
    over = dict(TINY)
    if cfg.data.mix:
        parts = [{"name": "synthetic", "weight": p.weight} for p in cfg.data.mix]
        over.update({"data.mix": yaml.safe_dump(parts, default_flow_style=True), "data.synthetic_size": images})
    elif cfg.data.dataset == "fashion_mnist":
        over["data.subset"] = images
    else:
        over.update({"data.dataset": "synthetic", "data.synthetic_size": images})
    return {k: str(v) for k, v in over.items()}


@pytest.mark.parametrize("name", NAMES)
def test_config_trains_two_steps(name, tmp_path):
    path = CONFIGS / f"{name}.yaml"
    original = load_config(path)
    cfg = load_config(path, two_step_overrides(original))
    trainer = Trainer(cfg, run_dir=tmp_path)
    assert trainer.steps_per_epoch >= 2  # a mixture holds synthetic_size images per part
    assert len(trainer.model.level_heads) == original.model.num_hierarchies - 1
    assert trainer.data.sampler.grid == (original.data.image_size // original.model.patch_size,) * 2
    losses = []
    step = trainer.train_step

    def record(group):
        out = step(group)
        losses.append(out)
        return out
    trainer.train_step = record
    result = trainer.train()
    assert result["step"] == 2 and result["stopped"] == "stop_at_step 2"
    assert all(torch.isfinite(out["loss"]) for out in losses)
    levels = {k for k in losses[-1] if k.startswith("loss/level")}
    assert levels == ({f"loss/level{i}" for i in range(original.model.num_hierarchies)}
                      if original.model.num_hierarchies > 1 else set())
    assert list((tmp_path / "checkpoints").glob("*.pt"))
