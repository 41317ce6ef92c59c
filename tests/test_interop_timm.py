"""timm naming: our export has exactly the state dict of timm's no-class-token, average-pooled ViT (``vit_*_gap``),
and reads back identically. timm does not import beside the CPU torch here, so its keys and shapes are checked
against a table written from timm's public ``timm/models/vision_transformer.py`` (see ``timm_state_shapes``)."""
import json

import pytest
import torch
from safetensors import safe_open

import jepa
from jepa.config import load_config
from jepa.export import main, read_encoder
from jepa.interop.layout import strip_prefix
from jepa.interop.timm import from_timm, to_timm
from jepa.models import build_model

from interop_helpers import SMALL, make_checkpoint, official_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def timm_state_shapes(img, patch, chans, dim, depth, hidden) -> dict:
    """``VisionTransformer(class_token=False, global_pool='avg', fc_norm=False, num_classes=0)``'s state dict.

    From timm's source: ``PatchEmbed.proj`` is the conv; ``pos_embed`` covers the patches only (no prefix
    tokens without a class token); each ``Block`` holds ``norm1``, ``attn.qkv`` (fused, bias by default),
    ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2`` (q/k norms, layer scale and the MLP norm are
    ``Identity``); with ``fc_norm=False`` the final ``norm`` stays before pooling; ``head`` is ``Identity``.
    """
    n = (img // patch) ** 2
    shapes = {"patch_embed.proj.weight": (dim, chans, patch, patch), "patch_embed.proj.bias": (dim,),
              "pos_embed": (1, n, dim), "norm.weight": (dim,), "norm.bias": (dim,)}
    for i in range(depth):
        b = f"blocks.{i}."
        shapes.update({b + "norm1.weight": (dim,), b + "norm1.bias": (dim,), b + "norm2.weight": (dim,),
                       b + "norm2.bias": (dim,), b + "attn.qkv.weight": (3 * dim, dim), b + "attn.qkv.bias": (3 * dim,),
                       b + "attn.proj.weight": (dim, dim), b + "attn.proj.bias": (dim,),
                       b + "mlp.fc1.weight": (hidden, dim), b + "mlp.fc1.bias": (hidden,),
                       b + "mlp.fc2.weight": (dim, hidden), b + "mlp.fc2.bias": (dim,)})
    return shapes


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("timm")
    trainer, ckpt = make_checkpoint(tmp / "run")
    assert main(["--checkpoint", str(ckpt), "--out", str(tmp / "vit_gap.safetensors"), "--format", "timm"]) == 0
    return trainer, ckpt, tmp / "vit_gap.safetensors"


def test_timm_export_has_timms_keys_and_shapes_and_its_kwargs(exported, capsys):
    trainer, _, out = exported
    with safe_open(str(out), "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    assert shapes == timm_state_shapes(28, 4, 1, 32, 2, 128)
    info = json.loads(out.with_suffix(".json").read_text())
    assert info["timm_kwargs"] == {"img_size": 28, "patch_size": 4, "in_chans": 1, "embed_dim": 32, "depth": 2,
                                   "num_heads": 2, "mlp_ratio": 4.0, "qkv_bias": True, "class_token": False,
                                   "global_pool": "avg", "fc_norm": False, "num_classes": 0}
    assert info["normalization"] == {"mean": [0.286], "std": [0.353]}


def test_ours_to_timm_and_back_is_identical(exported):
    trainer, ckpt, out = exported
    weights = {**trainer.model.target_encoder.state_dict(), "pos_embed": trainer.model.target_encoder.pos_embed}
    back = from_timm(to_timm(weights), out)
    assert back.keys() == weights.keys() and all(torch.equal(back[k], weights[k]) for k in weights)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(jepa.load_encoder(out)(x), trainer.model.target_encoder.eval()(x))
    assert read_encoder(out)["spec"] == read_encoder(ckpt)["spec"]


def test_the_official_encoder_layout_is_timms(tmp_path):
    """timm loads official I-JEPA weights by dropping ``module.`` from ``encoder``: the same table must hold."""
    raw = official_checkpoint(build_model(load_config(None, SMALL)))
    for part in ("encoder", "target_encoder"):
        shapes = {k: tuple(v.shape) for k, v in strip_prefix(raw[part], "module.").items()}
        assert shapes == timm_state_shapes(28, 4, 1, 32, 2, 128)
