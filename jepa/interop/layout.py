"""What every foreign format shares: prefixes, the encoder spec read off weight shapes, head counts, normalisation.

Weights here are always in our ``VisionTransformer`` naming (``patch_embed.weight``,
``blocks.i.attn.qkv.weight``, ...); a ``pos_embed`` entry ``[1, N, D]`` is a stored position table.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from jepa.checkpoint import CheckpointError
from jepa.config.grid import patch_grid
from jepa.models import MODEL_SIZES
from jepa.data.datasets import dataset_stats

# The official model table: width -> heads (tiny 192/3 ... giant 1408/16); official checkpoints do not store heads.
WIDTH_HEADS = {dim: heads for dim, _, heads in MODEL_SIZES.values()}
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def imagenet_normalization(channels: int) -> dict:
    """The ImageNet mean/std that the official I-JEPA weights (and their transformers and timm copies) expect."""
    mean, std = dataset_stats("imagefolder", channels)
    return {"mean": list(mean), "std": list(std)}


def strip_prefix(state: dict, prefix: str) -> dict:
    """``state`` with ``prefix`` removed from every key that has it (DDP's ``module.``, ``ijepa.``)."""
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


def depth_of(weights: dict) -> int:
    """Number of transformer blocks in an encoder or predictor state dict (our naming)."""
    ids = {int(m.group(1)) for k in weights if (m := _BLOCK.match(k))}
    return max(ids) + 1 if ids else 0


def mlp_ratio_of(hidden: int, dim: int) -> float:
    """The ratio our ``MLP`` turns back into exactly ``hidden`` units (``int(dim * ratio)``)."""
    ratio = hidden / dim
    while int(dim * ratio) < hidden:
        ratio = math.nextafter(ratio, math.inf)
    return ratio


def heads_for(width: int, num_heads: int | None, path: Path) -> int:
    """``num_heads`` if given, else the official table's head count for ``width``; an error for other widths."""
    if num_heads is not None:
        if num_heads < 1 or width % num_heads:
            divisors = ", ".join(str(d) for d in range(1, width + 1) if width % d == 0)
            raise CheckpointError(f"{path}: the head count {num_heads} (--num-heads, num_heads=) must be a positive "
                                  f"divisor of the encoder width {width}: one of {divisors}")
        return num_heads
    if width not in WIDTH_HEADS:
        table = ", ".join(f"{d}/{h}" for d, h in WIDTH_HEADS.items())
        raise CheckpointError(f"{path}: the file does not store the head count and width {width} is not in the "
                              f"official table (width/heads {table}); set model.num_heads (or num_heads=)")
    return WIDTH_HEADS[width]


def _shape(weights: dict, key: str, path: Path, what: str) -> list[int]:
    if key not in weights:
        raise CheckpointError(f"{path}: the {what} has no '{key}' weight (found {', '.join(sorted(weights)[:6])}, ...)")
    return list(weights[key].shape)


def spec_from_weights(weights: dict, path: Path, num_heads: int | None, what: str = "encoder") -> dict:
    """Our encoder spec read off the shapes: patch kernel, stored position table, block count, MLP width."""
    try:
        dim, chans, ph, pw = _shape(weights, "patch_embed.weight", path, what)
        n = _shape(weights, "pos_embed", path, what)[-2]
        hidden = _shape(weights, "blocks.0.mlp.fc1.weight", path, what)[0]
    except (ValueError, IndexError):
        raise CheckpointError(f"{path}: the {what}'s patch_embed, pos_embed or blocks.0.mlp.fc1 weight does not "
                              "have the shape of a ViT's") from None
    if ph != pw:
        raise CheckpointError(f"{path}: patch_embed.weight {[dim, chans, ph, pw]} has a non-square patch; only "
                              "square patches are supported")
    grid = math.isqrt(n)
    if grid * grid != n:
        raise CheckpointError(f"{path}: pos_embed has {n} positions, not a square grid")
    spec = {"img_size": grid * ph, "patch_size": ph, "in_chans": chans, "embed_dim": dim, "depth": depth_of(weights),
            "num_heads": heads_for(dim, num_heads, path), "mlp_ratio": mlp_ratio_of(hidden, dim)}
    return check_spec(spec, path)


ENCODER_KEYS = ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio")


def check_spec(spec, path: Path) -> dict:
    """``spec`` if it describes an encoder we can build (the keys of ``ENCODER_KEYS``, sizes that fit), else an error."""
    if not isinstance(spec, dict) or set(spec) != set(ENCODER_KEYS):
        found = sorted(spec) if isinstance(spec, dict) else type(spec).__name__
        raise CheckpointError(f"{path}: its encoder spec must have the keys {', '.join(ENCODER_KEYS)}, found {found}")
    ints = all(isinstance(spec[k], int) and spec[k] >= 1 for k in ENCODER_KEYS[:-1])
    if not ints or not spec["mlp_ratio"] > 0 or spec["img_size"] % spec["patch_size"] \
            or spec["embed_dim"] % spec["num_heads"]:
        raise CheckpointError(f"{path}: its encoder spec {spec} does not describe a buildable encoder")
    return spec


def grid_of(spec: dict) -> tuple[int, int]:
    return patch_grid(spec["img_size"], spec["patch_size"])


def as_float_tensors(state: dict, path: Path, what: str) -> dict:
    """Check every value is a tensor (a state dict), so later errors are about shapes, not types."""
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: the {what} is not a state dict of tensors ('{bad[0]}' is "
                              f"{type(state[bad[0]]).__name__})")
    return state
