"""Official I-JEPA checkpoints (facebookresearch/ijepa ``.pth.tar``): ``encoder``, ``predictor``, ``target_encoder``.

Each is a state dict saved from a DDP-wrapped model (keys prefixed ``module.``). The encoders have
timm's layout (``patch_embed.proj``, ``blocks.i.attn.qkv``, ..., a ``pos_embed`` parameter); the
predictor prefixes its parts with ``predictor_``. Their sin-cos tables encode the column in the first
half of the channels (ours: the row), so the stored tables are loaded with the weights, never recomputed.
The head count is not stored: the official model table gives it from the width (``layout.heads_for``).
"""
from __future__ import annotations

from pathlib import Path

from jepa.checkpoint import CheckpointError
from jepa.interop.layout import (as_float_tensors, depth_of, heads_for, imagenet_normalization, mlp_ratio_of,
                                 spec_from_weights, strip_prefix)
from jepa.interop.timm import from_timm

PARTS = ("encoder", "target_encoder", "predictor")
_PREDICTOR = {"predictor_embed.": "embed.", "predictor_pos_embed": "pos_embed", "predictor_blocks.": "blocks.",
              "predictor_norm.": "norm.", "predictor_proj.": "proj.", "mask_token": "mask_token"}


def is_official(raw) -> bool:
    """Whether a loaded file looks like an official checkpoint: an ``encoder`` or ``target_encoder`` state dict."""
    return isinstance(raw, dict) and any(isinstance(raw.get(k), dict) for k in ("encoder", "target_encoder"))


def _part(raw: dict, name: str, path: Path) -> dict | None:
    state = raw.get(name)
    if state is None:
        return None
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path}: '{name}' is not a state dict (found {type(state).__name__})")
    return strip_prefix(as_float_tensors(state, path, f"'{name}' state dict"), "module.")


def predictor_from_official(state: dict) -> dict:
    """The official predictor's state dict in our ``Predictor`` names."""
    out = {}
    for key, value in state.items():
        for theirs, ours in _PREDICTOR.items():
            if key.startswith(theirs):
                out[ours + key[len(theirs):]] = value
                break
        else:
            out[key] = value
    return out


def predictor_spec(weights: dict) -> dict:
    """What our config calls the predictor: width, depth and MLP ratio, read off the shapes."""
    dim = weights["embed.weight"].shape[0]
    return {"pred_dim": dim, "pred_depth": depth_of(weights),
            "mlp_ratio": mlp_ratio_of(weights["blocks.0.mlp.fc1.weight"].shape[0], dim)}


def read_official(raw: dict, path: Path, num_heads: int | None) -> dict:
    """The parts of an official checkpoint in our names: ``{"encoders", "predictor", "spec", ...}``."""
    encoders = {}
    for role, name in (("context", "encoder"), ("target", "target_encoder")):
        state = _part(raw, name, path)
        if state is not None:
            encoders[role] = from_timm(state, path)
    first = encoders.get("target", encoders.get("context"))
    spec = spec_from_weights(first, path, num_heads)
    predictor = _part(raw, "predictor", path)
    if predictor is not None:
        predictor = predictor_from_official(predictor)
        if "embed.weight" not in predictor or "blocks.0.mlp.fc1.weight" not in predictor:
            raise CheckpointError(f"{path}: 'predictor' is not an I-JEPA predictor (no predictor_embed or "
                                  "predictor_blocks weights)")
    heads = heads_for(spec["embed_dim"], num_heads, path)
    return {"kind": "official I-JEPA checkpoint", "encoders": encoders, "predictor": predictor,
            "predictor_spec": predictor_spec(predictor) | {"pred_heads": heads} if predictor else None,
            "spec": spec, "normalization": imagenet_normalization(spec["in_chans"]), "config": None,
            "step": None, "epoch": raw.get("epoch"), "heads_stored": False, "level_heads": None}
