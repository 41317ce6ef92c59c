"""timm naming: the no-class-token, average-pooled ``VisionTransformer`` timm uses for I-JEPA (``vit_*_gap``).

timm's state dict differs from ours only in the patch embedding (``patch_embed.proj.*``) and in
holding the position table as a parameter (``pos_embed``). The official I-JEPA encoder has the
same layout, so ``official`` reuses these two functions.
"""
from __future__ import annotations

import json
from pathlib import Path

from jepa.checkpoint import CheckpointError
from jepa.io import atomic_write_text
from jepa.interop.layout import imagenet_normalization, spec_from_weights
from jepa.interop.safetensors_io import metadata_json, write_safetensors

TIMM_FORMAT = "jepa-timm-v1"
_OURS_TO_TIMM = {"patch_embed.weight": "patch_embed.proj.weight", "patch_embed.bias": "patch_embed.proj.bias"}
_TIMM_TO_OURS = {v: k for k, v in _OURS_TO_TIMM.items()}
_UNSUPPORTED = {"cls_token": "a class token", "reg_token": "register tokens", "fc_norm.weight": "a norm after pooling",
                "norm_pre.weight": "a norm before the blocks", "blocks.0.ls1.gamma": "layer scale"}


def to_timm(weights: dict) -> dict:
    """Our encoder state dict (with its ``pos_embed`` table) in timm's names."""
    if "pos_embed" not in weights:
        raise ValueError("timm stores the position table: pass the encoder's weights with 'pos_embed'")
    return {_OURS_TO_TIMM.get(k, k): v for k, v in weights.items()}


def from_timm(state: dict, path: Path) -> dict:
    """A timm-named encoder (no class token, average pool) in our names; its classifier ``head.*`` is dropped."""
    for key, what in _UNSUPPORTED.items():
        if key in state:
            raise CheckpointError(f"{path}: holds '{key}', a ViT with {what}; only timm's no-class-token "
                                  "average-pooled layout (vit_*_gap, class_token=False, fc_norm=False) is supported")
    return {_TIMM_TO_OURS.get(k, k): v for k, v in state.items() if not k.startswith("head.")}


def timm_kwargs(spec: dict) -> dict:
    """Keyword arguments of ``timm.models.vision_transformer.VisionTransformer`` for the encoder ``spec``."""
    return {"img_size": spec["img_size"], "patch_size": spec["patch_size"], "in_chans": spec["in_chans"],
            "embed_dim": spec["embed_dim"], "depth": spec["depth"], "num_heads": spec["num_heads"],
            "mlp_ratio": spec["mlp_ratio"], "qkv_bias": True, "class_token": False, "global_pool": "avg",
            "fc_norm": False, "num_classes": 0}


def kwargs_path(out: Path) -> Path:
    return out.with_suffix(".json")


def write_timm(out: Path, weights: dict, spec: dict, normalization: dict, source: str) -> tuple[Path, Path]:
    """``out`` (safetensors, timm names) and the JSON beside it with the kwargs that build the model."""
    kwargs = timm_kwargs(spec)
    info = {"format": TIMM_FORMAT, "timm_kwargs": kwargs, "normalization": normalization, "source": source,
            "build": "timm.models.vision_transformer.VisionTransformer(**timm_kwargs)"}
    path = write_safetensors(out, to_timm(weights), {"format": TIMM_FORMAT, "timm_kwargs": json.dumps(kwargs),
                                                     "normalization": json.dumps(normalization)})
    side = atomic_write_text(kwargs_path(out), json.dumps(info, indent=2) + "\n")
    return path, side


def read_timm(tensors: dict, meta: dict, path: Path, num_heads: int | None) -> dict:
    """An encoder record from a timm-named safetensors file (ours, or timm's own I-JEPA weights)."""
    weights = from_timm(tensors, path)
    ours = meta.get("format") == TIMM_FORMAT
    stored = metadata_json(meta, "timm_kwargs", path) if ours else {}
    heads = stored.get("num_heads", num_heads)
    spec = spec_from_weights(weights, path, heads)
    normalization = (metadata_json(meta, "normalization", path) if ours
                     else imagenet_normalization(spec["in_chans"]))
    return {"weights": weights, "spec": spec, "normalization": normalization, "config": None, "step": None,
            "encoder": None, "kind": "timm safetensors", "heads_stored": "num_heads" in stored}
