"""Official I-JEPA checkpoints: one is written here in the official layout from our model, then read back by
``model.init_from``, ``jepa.load_encoder`` and ``jepa.eval`` with the official model's outputs (its stored,
column-first position tables included), and the run started from it keeps those tables through a resume."""
import logging

import pytest
import torch
import torch.nn.functional as F

import jepa
from jepa.checkpoint import CheckpointError, load_checkpoint
from jepa.config import ConfigError, load_config
from jepa.data.datasets import dataset_stats
from jepa.models import build_model
from jepa.models.pos_embed import resize_grid, sincos_2d
from jepa.train import Trainer

from interop_helpers import OFFICIAL, SMALL, official_checkpoint, official_table, perturb_, with_table

pytestmark = pytest.mark.usefixtures("one_thread")


def _official_file(folder, overrides):
    model = build_model(load_config(None, overrides))
    for seed, part in enumerate((model.context_encoder, model.target_encoder, model.predictor)):
        perturb_(part, seed=seed)  # "trained" weights, unlike a fresh initialisation
    path = folder / "IN1K-vit.t.4-3e.pth.tar"
    torch.save(official_checkpoint(model), path)
    return model, path


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    return _official_file(tmp_path_factory.mktemp("official"), OFFICIAL)


def test_the_official_table_is_ours_with_its_halves_swapped():
    for dim, grid in ((192, 7), (48, 5), (64, 16)):
        theirs, ours, half = official_table(dim, grid)[0], sincos_2d(dim, grid, grid), dim // 2
        assert torch.allclose(torch.cat([theirs[:, half:], theirs[:, :half]], dim=1), ours, atol=1e-6)
        assert not torch.allclose(theirs, ours, atol=1e-2), "the two conventions must differ, or nothing is tested"


def test_load_encoder_computes_what_the_official_model_computes(official):
    model, path = official
    x = torch.randn(3, 1, 28, 28)
    table = official_table(192, 7)
    with torch.no_grad():
        for which, part in (("target", "target_encoder"), ("context", "context_encoder")):
            encoder = jepa.load_encoder(path, which=which)
            assert torch.equal(encoder.pos_embed, table)
            assert torch.equal(encoder(x), with_table(getattr(model, part), table)(x))
    assert encoder.blocks[0].attn.num_heads == 3  # not stored: the official table's ViT-Tiny entry
    mean, std = dataset_stats("imagefolder", 1)
    assert encoder.normalization == {"mean": list(mean), "std": list(std)}


def test_heads_come_from_the_width_table_unless_overridden(official, tmp_path):
    _, path = official
    assert jepa.load_encoder(path, num_heads=6).blocks[0].attn.num_heads == 6
    _, narrow = _official_file(tmp_path, SMALL)  # width 32: not in the official table
    with pytest.raises(CheckpointError, match=r"IN1K-vit.t.4-3e.pth.tar: .*width 32 is not in the official table"):
        jepa.load_encoder(narrow)
    assert jepa.load_encoder(narrow, num_heads=2).blocks[0].attn.num_heads == 2


def test_init_from_official_loads_both_encoders_and_the_predictor_and_keeps_the_tables(official, tmp_path, caplog):
    model, path = official
    cfg = load_config(None, {**OFFICIAL, "model.init_from": str(path), "training.stop_at_step": "1"})
    with caplog.at_level(logging.INFO, logger="jepa"):
        trainer = Trainer(cfg, run_dir=tmp_path / "run")
    assert "predictor loaded" in caplog.text and "optimizer, schedules and step start fresh" in caplog.text
    x = torch.randn(2, 1, 28, 28)
    enc_table, pred_table = official_table(192, 7), official_table(48, 7)
    with torch.no_grad():
        for part in ("context_encoder", "target_encoder"):
            assert torch.equal(getattr(trainer.model, part)(x), with_table(getattr(model, part), enc_table)(x))
    theirs = model.predictor.state_dict()
    ours = trainer.model.predictor.state_dict()
    assert torch.equal(ours.pop("pos_embed"), pred_table)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert trainer.step == 0 and not trainer.optimizer.state

    trainer.train()  # one step; the checkpoint must keep the official tables, not fall back to ours
    ckpt = tmp_path / "run" / "checkpoints" / "ckpt_step00000001.pt"
    state = load_checkpoint(ckpt)["model"]
    for key, table in (("context_encoder.pos_embed", enc_table), ("target_encoder.pos_embed", enc_table),
                       ("predictor.pos_embed", pred_table)):
        assert torch.equal(state[key], table)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="jepa"):
        resumed = Trainer(cfg, run_dir=tmp_path / "run", resume="auto")
    assert "is not read again" in caplog.text and resumed.step == 1
    assert torch.equal(resumed.model.target_encoder.pos_embed, enc_table)
    assert torch.equal(jepa.load_encoder(ckpt).pos_embed, enc_table)


def test_an_incompatible_official_predictor_is_newly_initialised_and_the_log_says_why(official, tmp_path, caplog):
    model, path = official
    cfg = load_config(None, {**OFFICIAL, "model.init_from": str(path), "model.pred_heads": "4"})
    with caplog.at_level(logging.INFO, logger="jepa"):
        trainer = Trainer(cfg, run_dir=tmp_path / "run")
    assert "predictor newly initialised (its pred heads is 3, model.pred_heads gives 4)" in caplog.text
    assert not torch.equal(trainer.model.predictor.embed.weight, model.predictor.embed.weight)


def test_model_num_heads_overrides_the_width_table_with_a_warning(official, tmp_path, caplog):
    _, path = official
    cfg = load_config(None, {**OFFICIAL, "model.init_from": str(path), "model.num_heads": "6"})
    with caplog.at_level(logging.INFO, logger="jepa"):
        trainer = Trainer(cfg, run_dir=tmp_path / "run")
    assert "gives 3 heads for width 192, model.num_heads=6 is used" in caplog.text
    assert trainer.model.context_encoder.blocks[0].attn.num_heads == 6


def test_a_stored_table_is_interpolated_to_another_grid(official, tmp_path, caplog):
    model, path = official
    cfg = load_config(None, {**OFFICIAL, "model.init_from": str(path), "data.image_size": "32"})
    with caplog.at_level(logging.INFO, logger="jepa"):
        trainer = Trainer(cfg, run_dir=tmp_path / "run")
    assert "interpolated (bicubic) from a 7x7 to a 8x8 patch grid" in caplog.text
    table = official_table(192, 7).reshape(1, 7, 7, 192).permute(0, 3, 1, 2)
    expected = F.interpolate(table, size=(8, 8), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    assert torch.allclose(trainer.model.context_encoder.pos_embed, expected.reshape(1, 64, 192), atol=1e-6)
    assert trainer.model.predictor.pos_embed.shape == (1, 64, 48)
    assert trainer.model.context_encoder(torch.randn(2, 1, 32, 32)).shape == (2, 64, 192)
    encoder = jepa.load_encoder(path, img_size=32)
    assert torch.allclose(encoder.pos_embed, expected.reshape(1, 64, 192), atol=1e-6)
    same = official_table(192, 7)
    assert resize_grid(same, (7, 7), (7, 7)) is same  # the same grid is the identity


def test_jepa_eval_evaluates_official_weights(official, tmp_path, capsys):
    from jepa.eval import evaluate, main
    _, path = official
    with pytest.raises(ConfigError, match="--dataset is required"):
        evaluate(path, cache=False, progress=False)
    assert main(["--checkpoint", str(path), "--dataset", "fashion_mnist", "--protocol", "knn", "--train-subset",
                 "60", "--test-subset", "20", "--no-progress", "--out", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "target encoder" in out and "k-NN top-1" in out and (tmp_path / "r.json").is_file()


def test_a_bad_num_heads_for_an_official_checkpoint_names_the_flag_and_the_valid_counts(official, tmp_path, capsys):
    from jepa.export import main
    _, path = official
    out = tmp_path / "enc.safetensors"
    assert main(["--checkpoint", str(path), "--out", str(out), "--num-heads", "0"]) == 2
    assert capsys.readouterr().err == "error: --num-heads must be a positive divisor of the encoder width, got 0\n"
    assert main(["--checkpoint", str(path), "--out", str(out), "--num-heads", "5"]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {path}: the head count 5 (--num-heads, num_heads=) must be a positive divisor of the "
                   "encoder width 192: one of 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 192\n")
    with pytest.raises(CheckpointError, match="the head count 0 .* must be a positive divisor"):
        jepa.load_encoder(path, num_heads=0)
    assert not out.exists()


def test_eval_image_size_off_the_patch_grid_is_one_line_naming_the_flag(official, tmp_path, capsys):
    from jepa.eval import main
    _, path = official
    assert main(["--checkpoint", str(path), "--dataset", "fashion_mnist", "--image-size", "30", "--no-progress",
                 "--out", str(tmp_path / "r.json")]) == 2
    assert capsys.readouterr().err == (f"error: --image-size 30 must be a positive multiple of the patch size 4 of "
                                       f"{path} (e.g. 28 or 32)\n")
    assert not (tmp_path / "r.json").exists()


def test_finetune_takes_an_official_checkpoints_architecture_from_the_file(official):
    from jepa.finetune import finetune_config
    _, path = official
    cfg = finetune_config(path, {"finetune.epochs": "1"})
    assert (cfg.model.embed_dim, cfg.model.depth, cfg.model.num_heads, cfg.model.patch_size) == (192, 2, 3, 4)
    assert cfg.finetune.epochs == 1 and cfg.training.stop_at_step is None
