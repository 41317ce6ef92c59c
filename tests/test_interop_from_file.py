"""``model.size: from_file``: a run started from foreign weights takes their architecture, and only a key the user
fixed to another value stops it, in one message naming every such key."""
import pytest
import torch

from jepa.checkpoint import CheckpointError
from jepa.config import ConfigError, load_config
from jepa.export import main as export_main
from jepa.models import build_model
from jepa.train import Trainer

from interop_helpers import SMALL, make_checkpoint, official_checkpoint, perturb_

pytestmark = pytest.mark.usefixtures("one_thread")

# the run's own settings, no model shapes: those of the defaults (width 192, depth 6, patch 4) or the file's
RUN = {k: v for k, v in SMALL.items() if not k.startswith("model.")}
FILE_SHAPES = {"model.embed_dim": "48", "model.depth": "3", "model.num_heads": "4", "model.mlp_ratio": "2.0",
               "model.patch_size": "7", "model.pred_dim": "24", "model.pred_depth": "1", "model.pred_heads": "2"}


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A Hugging Face IJepaModel directory of a 48-wide, 3-deep, 4-head encoder on 7-pixel patches."""
    tmp = tmp_path_factory.mktemp("from_file")
    trainer, ckpt = make_checkpoint(tmp / "run", FILE_SHAPES)
    assert export_main(["--checkpoint", str(ckpt), "--out", str(tmp / "hf"), "--format", "hf"]) == 0
    return trainer, ckpt, tmp / "hf"


def same(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_an_unset_size_takes_the_architecture_of_a_hugging_face_directory(hf_dir, tmp_path):
    trainer, _, path = hf_dir
    started = Trainer(load_config(None, {**RUN, "model.init_from": str(path)}), run_dir=tmp_path / "run")
    m = started.cfg.model
    assert (m.size, m.embed_dim, m.depth, m.num_heads, m.mlp_ratio, m.patch_size) == ("from_file", 48, 3, 4, 2.0, 7)
    assert same(started.model.target_encoder, trainer.model.target_encoder)
    assert same(started.model.context_encoder, trainer.model.target_encoder)


def test_one_flag_is_enough_over_a_config_file_with_a_named_size(hf_dir, tmp_path):
    """As configs/default.yaml (size base, its own patch size) with a ViT-H/14 directory, scaled down."""
    trainer, _, path = hf_dir
    yaml = tmp_path / "base.yaml"
    yaml.write_text("model:\n  size: small\n  patch_size: 4\n  pred_dim: 24\n  pred_heads: 2\n")
    over = {**RUN, "model.init_from": str(path)}
    with pytest.raises(CheckpointError, match=r"embed dim 48 but the config gives 384 .*; set model.embed_dim: 48, "
                                              r"model.patch_size: 7, model.depth: 3, model.mlp_ratio: 2.0, "
                                              r"model.num_heads: 4 to start from it \(or model.size: from_file"):
        Trainer(load_config(yaml, over), run_dir=tmp_path / "a")
    started = Trainer(load_config(yaml, {**over, "model.size": "from_file"}), run_dir=tmp_path / "b")
    assert (started.cfg.model.embed_dim, started.cfg.model.patch_size) == (48, 7)
    assert (started.cfg.model.pred_dim, started.cfg.model.pred_heads) == (24, 2)  # no predictor in the directory
    assert same(started.model.target_encoder, trainer.model.target_encoder)


def test_keys_fixed_to_other_values_are_one_error_naming_each(hf_dir, tmp_path):
    _, _, path = hf_dir
    over = {**RUN, "model.init_from": str(path), "model.size": "from_file", "model.embed_dim": "64",
            "model.depth": "3", "model.patch_size": "4", "model.num_heads": "4"}
    with pytest.raises(ConfigError) as e:
        Trainer(load_config(None, over), run_dir=tmp_path / "run")
    assert str(e.value) == (f"model.size from_file: {path} has model.embed_dim=48, model.patch_size=7 but the config "
                            "sets model.embed_dim=64, model.patch_size=4; set model.embed_dim: 48, model.patch_size: 7 "
                            "(or leave them out)")
    assert not (tmp_path / "run").exists()


def test_from_file_takes_an_official_checkpoints_predictor_and_heads_too(tmp_path):
    shapes = {**SMALL, "model.embed_dim": "192", "model.depth": "2", "model.num_heads": "3", "model.pred_dim": "48",
              "model.pred_depth": "2", "model.pred_heads": "3"}
    model = build_model(load_config(None, shapes))
    for seed, part in enumerate((model.context_encoder, model.target_encoder, model.predictor)):
        perturb_(part, seed=seed)
    path = tmp_path / "official.pth.tar"
    torch.save(official_checkpoint(model), path)
    started = Trainer(load_config(None, {**RUN, "model.init_from": str(path)}), run_dir=tmp_path / "run")
    m = started.cfg.model
    assert (m.embed_dim, m.num_heads, m.pred_dim, m.pred_depth, m.pred_heads) == (192, 3, 48, 2, 3)
    assert same(started.model.predictor.blocks, model.predictor.blocks)


def test_from_file_needs_init_from():
    with pytest.raises(ConfigError, match="model.size: from_file takes the architecture from model.init_from, which "
                                          "is not set"):
        load_config(None, {**RUN, "model.size": "from_file"})
