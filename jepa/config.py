"""One typed config object for a run: dataclasses, YAML loading, CLI overrides, validation.

Every problem is reported as a ``ConfigError`` that names the key path and what
would be valid, so a user never meets a traceback from deep inside the trainer.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import math
import sys
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from jepa.errors import ConfigError
from jepa.probes.settings import FinetuneConfig, ProbeConfig, check_downstream




MODEL_SIZES = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "huge": (1280, 32, 16),
    "giant": (1408, 40, 16),
}


@dataclass
class ModelConfig:
    size: str = "custom"  # tiny|small|base|large|huge|giant fill embed_dim/depth/num_heads
    embed_dim: int = 192
    depth: int = 6
    num_heads: int = 3
    mlp_ratio: float = 4.0
    patch_size: int = 4
    pred_dim: int = 96
    pred_depth: int = 4
    pred_heads: int = 3
    attention: str = "auto"  # auto|xformers|sdpa|math
    num_hierarchies: int = 1
    predictor_shared_context: bool = False


@dataclass
class MixPart:
    name: str = ""
    root: Optional[str] = None
    weight: float = 1.0


@dataclass
class DataConfig:
    dataset: str = "fashion_mnist"
    root: Optional[str] = None
    download: bool = False
    download_url: Optional[str] = None
    image_size: int = 28
    channels: int = 1
    batch_size: int = 128
    num_workers: int = 0
    subset: Optional[int] = None
    random_crop: bool = True
    crop_scale: tuple[float, float] = (0.3, 1.0)
    crop_ratio: tuple[float, float] = (0.75, 1.3333333333333333)
    hflip: bool = True
    mean: Optional[list[float]] = None  # None: the dataset's train-set statistics
    std: Optional[list[float]] = None
    synthetic_size: int = 1024
    mix: Optional[list[MixPart]] = None


@dataclass
class MaskConfig:
    enc_scale: tuple[float, float] = (0.85, 1.0)
    pred_scale: tuple[float, float] = (0.15, 0.2)
    aspect_ratio: tuple[float, float] = (0.75, 1.5)
    nenc: int = 1
    npred: int = 4
    min_keep: int = 10
    allow_overlap: bool = False


VICREG_DEFAULTS = {"vicreg_weight": 0.1, "vicreg_var_weight": 25.0, "vicreg_cov_weight": 25.0,
                   "vicreg_inv_weight": 1.0}


@dataclass
class LossConfig:
    type: str = "mse"  # mse|smooth_l1|combined
    beta: float = 1.0  # smooth_l1 beta
    base: str = "mse"  # prediction term of the combined loss: mse|smooth_l1
    normalize_targets: bool = True  # layer_norm without affine on target features
    normalize_embeddings: bool = False  # L2-normalise predictions and targets
    level_weights: Optional[list[float]] = None  # default 1, 0.5, 0.25, 0.125
    # VICReg term of the combined loss; null means VICREG_DEFAULTS, filled in when loss.type is combined
    vicreg_weight: Optional[float] = None
    vicreg_var_weight: Optional[float] = None
    vicreg_cov_weight: Optional[float] = None
    vicreg_inv_weight: Optional[float] = None


@dataclass
class OptimConfig:
    lr: float = 1e-3
    start_lr: float = 2e-4
    final_lr: float = 1e-6
    warmup_epochs: float = 15.0
    weight_decay: float = 0.04
    final_weight_decay: float = 0.4
    wd_schedule: str = "cosine"  # cosine|linear
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    ema: tuple[float, float] = (0.996, 1.0)
    grad_clip: float = 0.0  # 0 disables


@dataclass
class TrainingConfig:
    epochs: int = 10
    device: str = "auto"  # auto|cpu|cuda|cuda:N|mps
    precision: str = "auto"  # auto|fp32|bf16|fp16
    accum_steps: int = 1
    seed: int = 0
    stop_at_step: Optional[int] = None
    kernels: str = "auto"  # auto|triton|torch
    compile: Union[bool, str] = False  # false|true|max-autotune
    deterministic: bool = False


@dataclass
class LoggingConfig:
    run_dir: Optional[str] = None  # default runs/<config name>
    log_every: int = 10
    tensorboard: bool = True
    progress: bool = True
    rankme_batch: Optional[int] = None  # held-out images for train/rankme; null: data.batch_size, 0: off
    collapse_warn_fraction: float = 0.6  # warn once when train/rankme < this x its step-0 value; 0: never
    images_every_epochs: Optional[int] = None  # TensorBoard pictures; null: at each checkpoint epoch, 0: never


@dataclass
class CheckpointConfig:
    every_epochs: int = 1
    every_steps: int = 0  # 0 disables
    keep_last: int = 2
    monitor: str = "loss"


@dataclass
class EvalConfig:
    every_epochs: int = 0  # periodic k-NN monitor; 0 disables
    knn_k: int = 20
    knn_temperature: float = 0.07
    max_train: int = 10000  # monitor: labelled train images used as the k-NN memory
    max_test: int = 2000  # monitor: test images classified
    encoder: str = "target"  # target|context
    features: str = "mean"  # mean|last4 (concatenated means of the last 4 blocks)


@dataclass
class ProfilingConfig:
    enabled: bool = False
    wait: int = 1
    warmup: int = 1
    active: int = 3


@dataclass
class DistributedConfig:
    """Used only under torchrun (WORLD_SIZE > 1); a plain run ignores it."""
    backend: str = "auto"  # auto (nccl on CUDA, gloo otherwise)|nccl|gloo
    strategy: str = "ddp"  # ddp (replicated weights)|fsdp (fully_shard on ViT blocks; bf16 or fp32)


@dataclass
class Config:
    name: str = "run"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    masks: MaskConfig = field(default_factory=MaskConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    profiling: ProfilingConfig = field(default_factory=ProfilingConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def to_dict(self) -> dict:
        return _to_plain(self)


# ---------------------------------------------------------------- conversion


def _to_plain(obj):
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    return obj


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Union:
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None)) + (
            " or null" if type(None) in typing.get_args(tp) else "")
    if origin in (list, tuple):
        args = typing.get_args(tp)
        if origin is tuple:
            return "a pair [" + ", ".join(_type_name(a) for a in args) + "]"
        return f"a list of {_type_name(args[0])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping with keys " + ", ".join(f.name for f in dataclasses.fields(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value, tp, path: str):
    """Convert a YAML/CLI value to the declared type or raise ConfigError."""
    origin = typing.get_origin(tp)
    if origin is Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, path)
            except ConfigError:
                pass
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple:
            if len(value) != len(args):
                raise ConfigError(f"{path}: expected {_type_name(tp)} ({len(args)} values), got {value!r}")
            return tuple(_coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        return [_coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
        return _build(tp, value, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{path}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{path}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    raise ConfigError(f"{path}: unsupported type {tp}")


def _unknown_key(key: str, valid: list[str], path: str) -> ConfigError:
    where = f"{path}.{key}" if path else key
    near = difflib.get_close_matches(key, valid, n=1)
    hint = f"; did you mean '{near[0]}'?" if near else ""
    return ConfigError(f"unknown config key '{where}'{hint} (valid keys: {', '.join(valid)})")


def _build(cls, raw: dict, path: str = ""):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            raise _unknown_key(str(key), names, path)
        sub = f"{path}.{key}" if path else key
        kwargs[key] = _coerce(value, hints[key], sub)
    return cls(**kwargs)


# ---------------------------------------------------------------- validation


def _check(cond: bool, path: str, msg: str):
    if not cond:
        raise ConfigError(f"{path}: {msg}")


def _check_range(pair, path: str, lo=0.0, hi=1.0, lo_open=True):
    a, b = pair
    ok = (a > lo if lo_open else a >= lo) and b <= hi and a <= b
    low = "(" if lo_open else "["
    _check(ok, path, f"must be a pair [low, high] with {low}{lo}, {hi}] and low <= high, got {list(pair)}")


def _choice(value, valid, path):
    _check(value in valid, path, f"must be one of {', '.join(map(str, valid))}, got {value!r}")


def validate(cfg: Config, explicit: set[str] | None = None) -> Config:
    """Check ranges and cross-field rules; fill derived fields (named model sizes)."""
    explicit = explicit or set()
    m = cfg.model
    _choice(m.size, ["custom", *MODEL_SIZES], "model.size")
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
    _choice(m.attention, ["auto", "xformers", "sdpa", "math"], "model.attention")
    _check(1 <= m.num_hierarchies <= 4, "model.num_hierarchies", f"must be in 1..4, got {m.num_hierarchies}")

    d = cfg.data
    from jepa.datasets import DATASETS  # local: keeps config importable on its own
    if d.mix:
        for i, part in enumerate(d.mix):
            _choice(part.name, [x for x in DATASETS if x != "imagefolder"] + ["imagefolder"], f"data.mix[{i}].name")
            _check(part.weight > 0, f"data.mix[{i}].weight", f"must be > 0, got {part.weight}")
    else:
        _choice(d.dataset, DATASETS, "data.dataset")
    _check(d.image_size >= 1, "data.image_size", f"must be >= 1, got {d.image_size}")
    _check(d.image_size % m.patch_size == 0, "model.patch_size",
           f"must divide data.image_size={d.image_size}, got {m.patch_size}")
    _choice(d.channels, [1, 3], "data.channels")
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
    _choice(ls.type, ["mse", "smooth_l1", "combined"], "loss.type")
    _choice(ls.base, ["mse", "smooth_l1"], "loss.base")
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
    _choice(o.wd_schedule, ["cosine", "linear"], "optim.wd_schedule")
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
    _choice(t.precision, ["auto", "fp32", "bf16", "fp16"], "training.precision")
    _choice(t.kernels, ["auto", "triton", "torch"], "training.kernels")
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
    _choice(ev.encoder, ["target", "context"], "eval.encoder")
    _choice(ev.features, ["mean", "last4"], "eval.features")
    _choice(c.monitor, ["loss", "knn"], "checkpoint.monitor")
    _check(c.monitor != "knn" or ev.every_epochs > 0, "checkpoint.monitor",
           "'knn' needs the k-NN monitor: set eval.every_epochs >= 1")
    p = cfg.profiling
    _check(p.wait >= 0 and p.warmup >= 0 and p.active >= 1, "profiling.active",
           "wait and warmup must be >= 0 and active >= 1")
    _choice(cfg.distributed.backend, ["auto", "nccl", "gloo"], "distributed.backend")
    _choice(cfg.distributed.strategy, ["ddp", "fsdp"], "distributed.strategy")
    _check(not (cfg.distributed.strategy == "fsdp" and t.precision == "fp16"), "training.precision",
           "fp16 needs a grad scaler that agrees across shards, which the fsdp strategy does not have; "
           "use bf16 or fp32 with distributed.strategy fsdp")
    _check(not (cfg.distributed.strategy == "fsdp" and cfg.eval.every_epochs > 0), "eval.every_epochs",
           "the k-NN monitor runs on rank 0 alone and cannot read FSDP-sharded weights; set eval.every_epochs: 0 "
           "with distributed.strategy fsdp and evaluate checkpoints with python -m jepa.eval")
    lg = cfg.logging
    _check(lg.rankme_batch is None or lg.rankme_batch >= 0, "logging.rankme_batch",
           f"must be >= 0 (0 turns train/rankme off) or null (data.batch_size), got {lg.rankme_batch}")
    _check(0 <= lg.collapse_warn_fraction < 1, "logging.collapse_warn_fraction",
           f"must be in [0, 1) (0 never warns), got {lg.collapse_warn_fraction}")
    _check(lg.images_every_epochs is None or lg.images_every_epochs >= 0, "logging.images_every_epochs",
           f"must be >= 0 (0: no pictures) or null (at each checkpoint epoch), got {lg.images_every_epochs}")
    check_downstream(cfg)
    return cfg


# ---------------------------------------------------------------- loading


def _set_dotted(raw: dict, dotted: str, value: Any):
    """Set ``a.b.c`` in a nested dict, checking every key against the schema."""
    keys = dotted.split(".")
    cls = Config
    node = raw
    for i, key in enumerate(keys):
        names = [f.name for f in dataclasses.fields(cls)]
        if key not in names:
            raise _unknown_key(key, names, ".".join(keys[:i]))
        if i == len(keys) - 1:
            node[key] = value
            return
        tp = typing.get_type_hints(cls)[key]
        if not dataclasses.is_dataclass(tp):
            raise ConfigError(f"{'.'.join(keys[: i + 1])} is not a section; cannot set '{dotted}'")
        node = node.setdefault(key, {}) if isinstance(node.get(key), dict) or key not in node else node[key]
        cls = tp


def _flatten(raw: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in raw.items():
        p = f"{prefix}.{k}" if prefix else str(k)
        out.add(p)
        if isinstance(v, dict):
            out |= _flatten(v, p)
    return out


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Load a YAML file (or defaults), apply dotted overrides, validate."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
        raw.setdefault("name", path.stem)
    for dotted, value in (overrides or {}).items():
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                pass
        _set_dotted(raw, dotted, value)
    explicit = _flatten(raw)
    cfg = _build(Config, raw)
    return validate(cfg, explicit)


def parse_overrides(args: list[str]) -> dict[str, str]:
    """Turn ``--a.b value`` / ``--a.b=value`` pairs into a dict."""
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}; overrides look like --section.key value")
        key = arg[2:]
        if "=" in key:
            key, value = key.split("=", 1)
        else:
            if i + 1 >= len(args):
                raise ConfigError(f"--{key} needs a value")
            i += 1
            value = args[i]
        out[key] = value
        i += 1
    return out


def add_config_args(parser: argparse.ArgumentParser):
    parser.add_argument("--config", help="YAML config file (see configs/)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def config_from_cli(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> tuple[Config, argparse.Namespace]:
    """Parse known flags, treat the rest as dotted overrides; exit 2 with a message on errors."""
    args, rest = parser.parse_known_args(argv)
    try:
        cfg = load_config(args.config, parse_overrides(rest))
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        raise SystemExit(2)
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        raise SystemExit(0)
    return cfg, args


def _yaml_value(value):
    """A CLI string read as YAML (``3`` is an int, ``null`` None); anything else, or unparsable text, as it is."""
    if not isinstance(value, str):
        return value
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def config_from_dict(raw: dict, overrides: dict[str, Any] | None = None) -> Config:
    """Rebuild a Config saved with ``to_dict`` (checkpoints, exports), then apply dotted ``overrides``."""
    raw = copy.deepcopy(raw)
    raw.pop("__source__", None)
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, _yaml_value(value))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the run warned when it started; a reader need not
        return validate(_build(Config, raw))
