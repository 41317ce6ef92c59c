"""Put weights (our names) into a module: position tables resized or recomputed, every mismatch a clear error."""
from __future__ import annotations

import math
from pathlib import Path

import torch.nn as nn

from jepa.checkpoint import CheckpointError
from jepa.models.pos_embed import is_our_sincos, resize_grid


def module_grid(module: nn.Module) -> tuple[int, int]:
    """The patch grid of a ``VisionTransformer`` or ``Predictor`` (square), from its position table."""
    g = math.isqrt(module.pos_embed.shape[1])
    return g, g


def check_shapes(module: nn.Module, weights: dict, path: Path, what: str, hint=lambda key: ""):
    """A CheckpointError naming the first missing, extra or differently shaped key, with both shapes."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    if "pos_embed" in weights:
        expected["pos_embed"] = tuple(module.pos_embed.shape)
    missing = [k for k in expected if k not in weights]
    extra = [k for k in weights if k not in expected]
    if missing or extra:
        detail = (f"missing {', '.join(missing[:3])}" if missing else "") + ("; " if missing and extra else "") + \
                 (f"unexpected {', '.join(extra[:3])}" if extra else "")
        raise CheckpointError(f"{path}: the {what} weights do not match the model's keys ({detail}){hint(None)}")
    for key, shape in expected.items():
        got = tuple(weights[key].shape)
        if got != shape:
            raise CheckpointError(f"{path}: {what} weight '{key}' has shape {list(got)} in the file but "
                                  f"{list(shape)} in the model{hint(key)}")


def split_table(weights: dict, from_grid: tuple[int, int], path: Path, what: str) -> tuple[dict, object]:
    """``(weights without pos_embed, the stored table or None)``; a table equal to our sin-cos table counts as none."""
    weights = dict(weights)
    table = weights.pop("pos_embed", None)
    if table is not None and table.shape[-2] != from_grid[0] * from_grid[1]:
        raise CheckpointError(f"{path}: the {what}'s position table has {table.shape[-2]} positions, not the "
                              f"{from_grid[0]}x{from_grid[1]} grid its image and patch size give")
    if table is not None and is_our_sincos(table, from_grid):
        table = None
    return weights, table


def fit_weights(module: nn.Module, weights: dict, from_grid: tuple[int, int], path: Path, what: str,
                hint=lambda key: "") -> list[str]:
    """Load ``weights`` saved on ``from_grid`` into ``module``; returns what was done to the position table.

    A stored table that is this project's sin-cos table is dropped (the module computes it for its own
    grid); any other table is kept, bicubic-interpolated when the grids differ.
    """
    notes = []
    grid = module_grid(module)
    weights, table = split_table(weights, from_grid, path, what)
    if table is not None:
        if tuple(from_grid) != grid:
            table = resize_grid(table, from_grid, grid)
            notes.append(f"{what}: stored position table interpolated (bicubic) from a {from_grid[0]}x{from_grid[1]} "
                         f"to a {grid[0]}x{grid[1]} patch grid")
        weights["pos_embed"] = table.reshape(1, *table.shape[-2:])
    elif tuple(from_grid) != grid:
        notes.append(f"{what}: sin-cos position table recomputed for the {grid[0]}x{grid[1]} patch grid "
                     f"(saved on {from_grid[0]}x{from_grid[1]})")
    check_shapes(module, weights, path, what, hint)
    module.load_state_dict(weights)
    return notes
