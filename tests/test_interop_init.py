"""``model.init_from`` with our own files: what goes where, other grids, and mismatches as errors naming both shapes."""
import logging

import pytest
import torch

from jepa.checkpoint import CheckpointError
import jepa
from jepa.config import ConfigError, load_config
from jepa.errors import FlagError
from jepa.export import main as export_main
from jepa.train import Trainer
from jepa.train import main as train_main

from interop_helpers import SMALL, perturb_

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A 2-level H-JEPA checkpoint whose every part differs from a fresh initialisation."""
    tmp = tmp_path_factory.mktemp("init")
    trainer = Trainer(load_config(None, {**SMALL, "model.num_hierarchies": "2"}), run_dir=tmp / "run")
    model = trainer.model
    for seed, part in enumerate((model.context_encoder, model.target_encoder, model.predictor, model.level_heads)):
        perturb_(part, seed=10 + seed)
    return trainer, trainer.save_checkpoint()


def start(tmp_path, **over):
    cfg = load_config(None, {**SMALL, "model.num_hierarchies": "2", **{k: str(v) for k, v in over.items()}})
    return Trainer(cfg, run_dir=tmp_path / "run")


def same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_init_from_a_training_checkpoint_loads_every_part_and_nothing_else(source, tmp_path, caplog):
    trainer, ckpt = source
    with caplog.at_level(logging.INFO, logger="jepa"):
        started = start(tmp_path, **{"model.init_from": ckpt})
    for part in ("context_encoder", "target_encoder", "predictor", "level_heads"):
        assert same(getattr(started.model, part), getattr(trainer.model, part)), part
    assert not same(started.model.context_encoder, started.model.target_encoder)
    assert started.step == 0 and started.epoch == 0 and not started.optimizer.state
    assert "predictor loaded, level heads loaded; optimizer, schedules and step start fresh" in caplog.text


def test_an_export_fills_both_encoders_and_leaves_the_rest_new(source, tmp_path, caplog):
    trainer, ckpt = source
    out = tmp_path / "enc.safetensors"
    assert export_main(["--checkpoint", str(ckpt), "--out", str(out)]) == 0
    with caplog.at_level(logging.INFO, logger="jepa"):
        started = start(tmp_path, **{"model.init_from": out})
    assert same(started.model.context_encoder, trainer.model.target_encoder)
    assert same(started.model.target_encoder, trainer.model.target_encoder)
    assert not same(started.model.predictor, trainer.model.predictor)
    assert "predictor newly initialised (the file holds no predictor)" in caplog.text


def test_our_sin_cos_table_is_recomputed_for_another_grid(source, tmp_path, caplog):
    trainer, ckpt = source
    with caplog.at_level(logging.INFO, logger="jepa"):
        started = start(tmp_path, **{"model.init_from": ckpt, "data.image_size": 32})
    assert "sin-cos position table recomputed for the 8x8 patch grid (saved on 7x7)" in caplog.text
    enc = started.model.target_encoder
    assert enc.pos_embed.shape == (1, 64, 32) and "pos_embed" not in enc.state_dict()
    assert enc(torch.randn(2, 1, 32, 32)).shape == (2, 64, 32)
    mine, theirs = enc.state_dict(), trainer.model.target_encoder.state_dict()
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)


@pytest.mark.parametrize("override, message", [
    ({"model.embed_dim": 48}, r"embed dim 32 but the config gives 48 \('patch_embed.weight' \[32, 1, 4, 4\] in the "
                              r"file, \[48, 1, 4, 4\] here\); set model.embed_dim: 32"),
    ({"model.depth": 3}, r"depth 2 but the config gives 3; set model.depth: 2"),
    ({"model.patch_size": 7, "masks.npred": 3}, r"patch size 4 but the config gives 7 \('patch_embed.weight' \[32, 1, 4, 4\] in the "
                              r"file, \[32, 1, 7, 7\] here\); set model.patch_size: 4"),
    ({"model.num_heads": 4}, r"num heads 2 but the config gives 4; set model.num_heads: 2"),
    ({"data.channels": 3}, r"in chans 1 but the config gives 3 .*set data.channels: 1"),
    ({"model.mlp_ratio": 2.0}, r"mlp hidden 128 but the config gives 64 \('blocks.0.mlp.fc1.weight' \[128, 32\] in the "
                               r"file, \[64, 32\] here\); set model.mlp_ratio: 4.0"),
])
def test_a_mismatched_encoder_is_an_error_naming_the_key_and_both_shapes(source, tmp_path, override, message):
    _, ckpt = source
    with pytest.raises(CheckpointError, match=message) as e:  # size custom: the config's shapes, checked
        start(tmp_path, **{"model.init_from": ckpt, "model.size": "custom", **override})
    assert str(ckpt) in str(e.value) and "\n" not in str(e.value)


def test_the_train_command_reports_a_bad_init_from_in_one_line(tmp_path, capsys):
    missing = tmp_path / "nowhere.pth.tar"
    args = ["--run-dir", str(tmp_path / "run")] + [f"--{k}={v}" for k, v in SMALL.items()]
    assert train_main(args + [f"--model.init_from={missing}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: checkpoint not found: {missing}"
    with pytest.raises(ConfigError, match="model.init_from: must be a path"):
        load_config(None, {**SMALL, "model.init_from": "''"})


def test_evaluation_rebuilds_an_encoder_for_another_image_size(source):
    from jepa.eval import load_source
    trainer, ckpt = source
    cfg, encoder, step, _ = load_source(ckpt, "target", "cpu", image_size=32)
    assert cfg.data.image_size == 32 and encoder.grid == (8, 8) and step == 0
    assert encoder(torch.randn(1, 1, 32, 32)).shape == (1, 64, 32)
    with pytest.raises(FlagError, match=r"--image-size 30 must be a positive multiple of the patch size 4 .*28 or 32"):
        load_source(ckpt, "target", "cpu", image_size=30)
    with pytest.raises(FlagError, match=r"img_size 2 must be a positive multiple of the patch size 4 .*\(e.g. 4, 8"):
        jepa.load_encoder(ckpt, img_size=2)
