"""The ``probe`` and ``finetune`` config sections: the fixed downstream protocols and their checks.

They are sections of ``jepa.config.Config`` (``--probe.sgd_epochs 5``, ``finetune:`` in a YAML file);
the defaults are the protocols docs/evaluation.md documents.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

from jepa.errors import ConfigError


@dataclass
class ProbeConfig:
    """``python -m jepa.eval --protocol attentive|linear-sgd``."""
    batch_size: int = 256
    seed: int = 0  # batch order and probe initialisation
    attentive_epochs: int = 10
    attentive_lr: float = 1.0e-3  # AdamW peak; linear warm-up from 0, then cosine to 0
    attentive_warmup_epochs: float = 1.0
    attentive_weight_decay: float = 0.05
    attentive_queries: int = 1  # learned queries of the cross-attention pooling
    attentive_heads: Optional[int] = None  # null: the encoder's model.num_heads
    sgd_epochs: int = 10
    sgd_lr: float = 0.1  # SGD with momentum on standardised features; cosine to 0
    sgd_momentum: float = 0.9
    sgd_weight_decay: float = 0.0
    sgd_augment: bool = False  # features of training-augmented images, drawn anew every epoch


@dataclass
class FinetuneConfig:
    """``python -m jepa.finetune``: the whole encoder and a linear head, trained on labels."""
    epochs: int = 10  # on the whole train split
    lowshot_epochs: int = 100  # with --fraction or --shots
    batch_size: int = 128
    lr: float = 1.0e-3  # AdamW peak of the head and final norm
    final_lr: float = 1.0e-6
    warmup_fraction: float = 0.1  # of all steps, linear from 0
    weight_decay: float = 0.05
    layer_decay: float = 0.75  # lr x this per block nearer the input (head x1, patch embedding x this^(depth+1))
    label_smoothing: float = 0.1
    grad_clip: float = 1.0  # 0 disables
    augment: bool = True  # the training crop/flip (data.*) on the fine-tuning images
    seed: int = 0  # low-shot subset, batch order, augmentation, head initialisation


def _check(ok: bool, path: str, msg: str):
    if not ok:
        raise ConfigError(f"{path}: {msg}")


def check_downstream(cfg):
    """Counts >= 1 (seeds >= 0), rates finite and >= 0, fractions below 1; a ConfigError names the key."""
    for section in ("probe", "finetune"):
        for f in dataclasses.fields(getattr(cfg, section)):
            val, path = getattr(getattr(cfg, section), f.name), f"{section}.{f.name}"
            if isinstance(val, int) and not isinstance(val, bool):
                low = 0 if f.name == "seed" else 1
                _check(val >= low, path, f"must be >= {low}, got {val}")
            elif isinstance(val, float):
                _check(val >= 0 and math.isfinite(val), path, f"must be a finite number >= 0, got {val}")
    for path, val in (("probe.sgd_momentum", cfg.probe.sgd_momentum), ("finetune.label_smoothing",
                      cfg.finetune.label_smoothing), ("finetune.warmup_fraction", cfg.finetune.warmup_fraction)):
        _check(val < 1, path, f"must be in [0, 1), got {val}")
    _check(0 < cfg.finetune.layer_decay <= 1, "finetune.layer_decay",
           f"must be in (0, 1] (1: no decay), got {cfg.finetune.layer_decay}")
    heads = cfg.probe.attentive_heads or cfg.model.num_heads
    _check(cfg.model.embed_dim % heads == 0, "probe.attentive_heads",
           f"must divide model.embed_dim={cfg.model.embed_dim}, got {heads}")
