"""Ranges and cross-field rules of a built config, checked before anything is built from it."""
from __future__ import annotations

import math
import warnings

from jepa.config.schema import VICREG_DEFAULTS, Config
from jepa.datasets import DATASETS
from jepa.errors import ConfigError
from jepa.models import MODEL_SIZES


def _check(cond: bool, path: str, msg: str):
    if not cond:
        raise ConfigError(f"{path}: {msg}")


def _check_range(pair, path: str, lo=0.0, hi=1.0, lo_open=True):
    a, b = pair
    ok = (a > lo if lo_open else a >= lo) and b <= hi and a <= b
    low = "(" if lo_open else "["
    _check(ok, path, f"must be a pair [low, high] with {low}{lo}, {hi}] and low <= high, got {list(pair)}")


def validate(cfg: Config, explicit: set[str] | None = None) -> Config:
    """Check ranges and cross-field rules; fill derived fields (named model sizes)."""
    explicit = explicit or set()
    m = cfg.model
    if m.size != "custom":
        dims = dict(zip(("embed_dim", "depth", "num_heads"), MODEL_SIZES[m.size]))
        for key, val in dims.items():
            if f"model.{key}" in explicit and getattr(m, key) != val:
                raise ConfigError(f"model.{key}={getattr(m, key)} conflicts with model.size={m.size} "
                                  f"({key}={val}); use model.size: custom for other dimensions")
            setattr(m, key, val)
    for key in ("embed_dim", "depth", "num_heads", "patch_size", "pred_dim", "pred_depth", "pred_heads"):
        _check(getattr(m, key) >= 1, f"model.{key}", f"must be >= 1, got {getattr(m, key)}")
    _check(m.embed_dim % m.num_heads == 0, "model.num_heads",
           f"must divide model.embed_dim={m.embed_dim}, got {m.num_heads}")
    _check(m.pred_dim % m.pred_heads == 0, "model.pred_heads",
           f"must divide model.pred_dim={m.pred_dim}, got {m.pred_heads}")
    _check(m.mlp_ratio > 0, "model.mlp_ratio", f"must be > 0, got {m.mlp_ratio}")
    _check(1 <= m.num_hierarchies <= 4, "model.num_hierarchies", f"must be in 1..4, got {m.num_hierarchies}")

    d = cfg.data
    for i, part in enumerate(d.mix or []):
        _check(part.name is not None, f"data.mix[{i}].name", f"is required: one of {', '.join(DATASETS)}")
        _check(part.weight > 0, f"data.mix[{i}].weight", f"must be > 0, got {part.weight}")
    _check(d.image_size >= 1, "data.image_size", f"must be >= 1, got {d.image_size}")
    _check(d.image_size % m.patch_size == 0, "model.patch_size",
           f"must divide data.image_size={d.image_size}, got {m.patch_size}")
    _check(d.batch_size >= 1, "data.batch_size", f"must be >= 1, got {d.batch_size}")
    _check(d.num_workers >= 0, "data.num_workers", f"must be >= 0, got {d.num_workers}")
    _check(d.subset is None or d.subset >= 1, "data.subset", f"must be >= 1 or null, got {d.subset}")
    _check_range(d.crop_scale, "data.crop_scale")
    _check(0 < d.crop_ratio[0] <= d.crop_ratio[1], "data.crop_ratio",
           f"must be a pair [low, high] with 0 < low <= high, got {list(d.crop_ratio)}")
    for key in ("mean", "std"):
        val = getattr(d, key)
        _check(val is None or len(val) == d.channels, f"data.{key}",
               f"must have data.channels={d.channels} values or be null, got {val}")
    _check(d.std is None or all(s > 0 for s in d.std), "data.std", f"must be > 0, got {d.std}")

    k = cfg.masks
    _check_range(k.enc_scale, "masks.enc_scale")
    _check_range(k.pred_scale, "masks.pred_scale")
    _check(0 < k.aspect_ratio[0] <= k.aspect_ratio[1], "masks.aspect_ratio",
           f"must be a pair [low, high] with 0 < low <= high, got {list(k.aspect_ratio)}")
    _check(k.nenc >= 1, "masks.nenc", f"must be >= 1, got {k.nenc}")
    _check(k.npred >= 1, "masks.npred", f"must be >= 1, got {k.npred}")
    n_tokens = (d.image_size // m.patch_size) ** 2
    _check(0 <= k.min_keep < n_tokens, "masks.min_keep",
           f"must be in [0, {n_tokens}) for a {d.image_size // m.patch_size}x{d.image_size // m.patch_size} grid, "
           f"got {k.min_keep}")

    ls = cfg.loss
    _check(ls.beta > 0, "loss.beta", f"must be > 0, got {ls.beta}")
    if ls.level_weights is None:
        ls.level_weights = [1.0, 0.5, 0.25, 0.125][: m.num_hierarchies]
    _check(len(ls.level_weights) == m.num_hierarchies, "loss.level_weights",
           f"must have model.num_hierarchies={m.num_hierarchies} values, got {ls.level_weights}")
    _check(all(w >= 0 for w in ls.level_weights), "loss.level_weights", f"must be >= 0, got {ls.level_weights}")
    for key, default in VICREG_DEFAULTS.items():
        val = getattr(ls, key)
        _check(val is None or val >= 0, f"loss.{key}", f"must be >= 0 or null, got {val}")
        if ls.type == "combined" and val is None:
            setattr(ls, key, default)
    unused = [f"loss.{k}" for k in VICREG_DEFAULTS if ls.type != "combined" and getattr(ls, k) is not None]
    if unused:
        warnings.warn(f"{', '.join(unused)} set but loss.type is '{ls.type}': they are ignored "
                      "(set loss.type: combined to use the VICReg term)", UserWarning, stacklevel=2)

    o = cfg.optim
    for key in ("lr", "start_lr", "final_lr", "weight_decay", "final_weight_decay", "warmup_epochs", "grad_clip"):
        val = getattr(o, key)
        _check(val >= 0 and math.isfinite(val), f"optim.{key}", f"must be a finite number >= 0, got {val}")
    _check(all(0 <= b < 1 for b in o.betas), "optim.betas", f"must be in [0, 1), got {list(o.betas)}")
    _check(0 <= o.ema[0] <= o.ema[1] <= 1, "optim.ema",
           f"must be a pair [start, end] with 0 <= start <= end <= 1, got {list(o.ema)}")

    t = cfg.training
    _check(t.epochs >= 1, "training.epochs", f"must be >= 1, got {t.epochs}")
    _check(t.accum_steps >= 1, "training.accum_steps", f"must be >= 1, got {t.accum_steps}")
    _check(t.stop_at_step is None or t.stop_at_step >= 1, "training.stop_at_step",
           f"must be >= 1 or null, got {t.stop_at_step}")
    _check(t.device in ("auto", "cpu", "mps", "cuda") or t.device.startswith("cuda:"), "training.device",
           f"must be auto, cpu, mps, cuda or cuda:N, got {t.device!r}")
    _check(t.compile in (True, False, "max-autotune", "default"), "training.compile",
           f"must be false, true or max-autotune, got {t.compile!r}")

    _check(cfg.logging.log_every >= 1, "logging.log_every", f"must be >= 1, got {cfg.logging.log_every}")
    c = cfg.checkpoint
    _check(c.keep_last >= 1, "checkpoint.keep_last", f"must be >= 1, got {c.keep_last}")
    _check(c.every_epochs >= 0 and c.every_steps >= 0, "checkpoint.every_epochs",
           "every_epochs and every_steps must be >= 0")
    ev = cfg.eval
    _check(ev.every_epochs >= 0, "eval.every_epochs", f"must be >= 0 (0 disables the monitor), got {ev.every_epochs}")
    _check(ev.knn_k >= 1, "eval.knn_k", f"must be >= 1, got {ev.knn_k}")
    _check(ev.knn_temperature > 0, "eval.knn_temperature", f"must be > 0, got {ev.knn_temperature}")
    _check(ev.max_train >= 1 and ev.max_test >= 1, "eval.max_train",
           f"eval.max_train and eval.max_test must be >= 1, got {ev.max_train} and {ev.max_test}")
    _check(c.monitor != "knn" or ev.every_epochs > 0, "checkpoint.monitor",
           "'knn' needs the k-NN monitor: set eval.every_epochs >= 1")
    p = cfg.profiling
    _check(p.wait >= 0 and p.warmup >= 0 and p.active >= 1, "profiling.active",
           "wait and warmup must be >= 0 and active >= 1")
    _check(not (cfg.distributed.strategy == "fsdp" and t.precision == "fp16"), "training.precision",
           "fp16 needs a grad scaler that agrees across shards, which the fsdp strategy does not have; "
           "use bf16 or fp32 with distributed.strategy fsdp")
    _check(not (cfg.distributed.strategy == "fsdp" and cfg.eval.every_epochs > 0), "eval.every_epochs",
           "the k-NN monitor runs on rank 0 alone and cannot read FSDP-sharded weights; set eval.every_epochs: 0 "
           "with distributed.strategy fsdp and evaluate checkpoints with python -m jepa.eval")
    return cfg
