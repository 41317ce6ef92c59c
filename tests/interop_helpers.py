"""Small models and checkpoints for the interop tests, and an official I-JEPA checkpoint written from scratch.

The official layout is spelled out here key by key from the public facebookresearch/ijepa sources
(``src/models/vision_transformer.py``: timm-style encoder with ``patch_embed.proj`` and a ``pos_embed``
parameter, predictor parts prefixed ``predictor_``; ``src/train.py`` saves the DDP-wrapped state dicts,
so every key starts with ``module.``), independently of ``jepa.interop``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from jepa.config import load_config
from jepa.train import Trainer

SMALL = {"model.embed_dim": "32", "model.depth": "2", "model.num_heads": "2", "model.pred_dim": "16",
         "model.pred_depth": "1", "model.pred_heads": "2", "masks.min_keep": "4", "data.batch_size": "32",
         "data.subset": "64", "training.epochs": "1", "logging.progress": "false", "logging.tensorboard": "false",
         "training.device": "cpu", "training.precision": "fp32"}
# width 192 is in the official table (ViT-Tiny: 3 heads); the official predictor uses the encoder's heads
OFFICIAL = {**SMALL, "model.embed_dim": "192", "model.num_heads": "3", "model.pred_dim": "48", "model.pred_heads": "3"}


def config(**over):
    return load_config(None, {**SMALL, **{k: str(v) for k, v in over.items()}})


def perturb_(module: torch.nn.Module, scale: float = 0.05, seed: int = 1):
    """Add noise to every parameter, so two modules built alike (context and target) differ."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def make_checkpoint(run_dir: Path, overrides: dict | None = None):
    """``(trainer, checkpoint path)``: a step-0 checkpoint whose target encoder differs from the context encoder."""
    trainer = Trainer(load_config(None, {**SMALL, **(overrides or {})}), run_dir=run_dir)
    perturb_(trainer.model.target_encoder)
    return trainer, trainer.save_checkpoint()


def official_table(dim: int, grid: int) -> torch.Tensor:
    """The official code's sin-cos table ``[1, grid², dim]``: coordinates from ``np.meshgrid(w, h)``
    ('xy' indexing, so the first coordinate is the column), first half of the channels from it."""
    def one_axis(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=float) / (d / 2.0))
        out = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    first, second = np.meshgrid(np.arange(grid, dtype=float), np.arange(grid, dtype=float))
    emb = np.concatenate([one_axis(dim // 2, first), one_axis(dim // 2, second)], axis=1)
    return torch.from_numpy(emb).float().unsqueeze(0)


def _official_encoder(module) -> dict:
    out = {}
    for key, value in module.state_dict().items():
        name = "patch_embed.proj." + key.split(".", 1)[1] if key.startswith("patch_embed.") else key
        out["module." + name] = value.clone()
    grid = module.grid[0]
    out["module.pos_embed"] = official_table(module.embed_dim, grid)
    return out


_PREDICTOR_NAMES = {"embed": "predictor_embed", "blocks": "predictor_blocks", "norm": "predictor_norm",
                    "proj": "predictor_proj", "mask_token": "mask_token"}


def official_checkpoint(model) -> dict:
    """What the official ``train.py`` saves, from our JEPA ``model`` (encoder = context, target_encoder = EMA)."""
    pred = {}
    for key, value in model.predictor.state_dict().items():
        head, _, rest = key.partition(".")
        pred["module." + _PREDICTOR_NAMES[head] + ("." + rest if rest else "")] = value.clone()
    pred_dim, grid = model.predictor.pos_embed.shape[-1], model.context_encoder.grid[0]
    pred["module.predictor_pos_embed"] = official_table(pred_dim, grid)
    opt = torch.optim.AdamW(model.online_parameters())
    return {"encoder": _official_encoder(model.context_encoder), "predictor": pred,
            "target_encoder": _official_encoder(model.target_encoder), "opt": opt.state_dict(), "scaler": None,
            "epoch": 3, "loss": 0.25, "batch_size": 32, "world_size": 1, "lr": 1e-3}


def with_table(encoder, table):
    """A copy of ``encoder`` computing with ``table`` as its position table (what the official model computes)."""
    import copy
    from jepa.models.vit import use_stored_pos_embed
    twin = copy.deepcopy(encoder).eval()
    use_stored_pos_embed(twin, table)
    return twin
