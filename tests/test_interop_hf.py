"""Hugging Face transformers: our ``--format hf`` export loads in ``IJepaModel`` with our outputs, and directories
(ours, or with transformers' own weight names and no jepa metadata) start runs and load as encoders."""
import json
import logging
import shutil

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoImageProcessor, IJepaModel

import jepa
from jepa.config import load_config
from jepa.data.datasets import dataset_stats
from jepa.data.transforms import EvalTransform
from jepa.export import main
from jepa.train import Trainer

from interop_helpers import SMALL, make_checkpoint, perturb_

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``(trainer, checkpoint, hf directory)``."""
    tmp = tmp_path_factory.mktemp("hf")
    trainer, ckpt = make_checkpoint(tmp / "run")
    assert main(["--checkpoint", str(ckpt), "--out", str(tmp / "hf"), "--format", "hf"]) == 0
    return trainer, ckpt, tmp / "hf"


def images(n=4, seed=0):
    return torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_ijepa_model_loads_the_export_and_gives_our_outputs(exported):
    trainer, ckpt, hf = exported
    model, info = IJepaModel.from_pretrained(hf, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    ours = jepa.load_encoder(ckpt)
    x = EvalTransform(28, **ours.normalization)(images())
    with torch.no_grad():
        expected = trainer.model.target_encoder.eval()(x)
        got = model.eval()(pixel_values=x).last_hidden_state
    assert got.shape == expected.shape == (4, 49, 32)
    assert (got - expected).abs().max().item() <= 1e-5
    with torch.no_grad():  # naming the weights file instead of its directory reads the directory
        assert torch.equal(jepa.load_encoder(hf / "model.safetensors")(x), expected)


def test_the_preprocessor_normalises_as_our_eval_transform(exported):
    _, ckpt, hf = exported
    processor = AutoImageProcessor.from_pretrained(hf)
    batch = images(3, seed=1)
    theirs = processor(images=[im.permute(1, 2, 0).numpy() for im in batch], return_tensors="pt")["pixel_values"]
    mean, std = dataset_stats("fashion_mnist", 1)
    ours = EvalTransform(28, mean, std)(batch)
    assert theirs.shape == ours.shape and torch.allclose(theirs, ours, atol=1e-5)


def test_hf_round_trip_into_init_from_gives_identical_weights(exported, tmp_path, caplog):
    trainer, _, hf = exported
    with caplog.at_level(logging.INFO, logger="jepa"):
        started = Trainer(load_config(None, {**SMALL, "model.init_from": str(hf)}), run_dir=tmp_path / "run")
    source = trainer.model.target_encoder.state_dict()
    for part in (started.model.context_encoder, started.model.target_encoder):
        mine = part.state_dict()
        assert mine.keys() == source.keys()  # our own sin-cos table is recognised, not stored
        assert all(torch.equal(mine[k], source[k]) for k in source)
    assert "predictor newly initialised (the file holds no predictor)" in caplog.text


def test_a_directory_with_transformers_own_names_and_no_jepa_metadata_loads(exported, tmp_path, caplog):
    """What ``save_pretrained`` of a model, or a published ``facebook/ijepa_*`` directory, holds: no jepa header."""
    trainer, _, hf = exported
    model = IJepaModel.from_pretrained(hf)
    perturb_(model, seed=3)  # weights of "someone else's" model
    plain = tmp_path / "plain"
    plain.mkdir()
    shutil.copy(hf / "config.json", plain / "config.json")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, plain / "model.safetensors")
    x = torch.randn(2, 1, 28, 28)
    with caplog.at_level(logging.INFO, logger="jepa"):
        encoder = jepa.load_encoder(plain, which="context")  # one encoder of unknown role serves both
    with torch.no_grad():
        assert (encoder(x) - model.eval()(pixel_values=x).last_hidden_state).abs().max().item() <= 1e-5
    mean, std = dataset_stats("imagefolder", 1)
    assert encoder.normalization == {"mean": list(mean), "std": list(std)}
    assert "no usable preprocessor_config.json" in caplog.text
    assert torch.equal(encoder.pos_embed, model.embeddings.position_embeddings.detach())


def test_an_hf_export_never_replaces_a_foreign_directory(exported, tmp_path, capsys):
    _, ckpt, hf = exported
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert main(["--checkpoint", str(ckpt), "--out", str(mine), "--format", "hf"]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert main(["--checkpoint", str(ckpt), "--out", str(mine), "--format", "hf", "--force"]) == 2
    assert "already exists and is not an earlier export" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "keep me" and len(list(mine.iterdir())) == 1
    again = tmp_path / "again"
    shutil.copytree(hf, again)
    assert main(["--checkpoint", str(ckpt), "--out", str(again), "--format", "hf", "--force"]) == 0  # an earlier export
    assert json.loads((again / "config.json").read_text())["model_type"] == "ijepa"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temp or old directory left"
