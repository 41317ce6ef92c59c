"""Ranges and cross-field rules of a built config, checked before anything is built from it.

Every message names the key and what would be valid. Floats are already finite and integers
within 64 bits (``parse``); here each field gets its own range, and the rules that tie fields
together (patch grid, batch vs subset) are decided from the config alone. What needs the code it
checks runs where that code is built: the block sizes and the trial of the mask geometry run when
the mask sampler is built (``jepa.data.build_mask_sampler``), so ``--print-config`` does not catch them.
"""
from __future__ import annotations

import dataclasses
import warnings

from jepa.config.braces import expand_braces
from jepa.config.choices import DATASETS, DEVICE, MODEL_SIZES
from jepa.config.grid import patch_grid
from jepa.config.schema import VICREG_DEFAULTS, Config
from jepa.errors import ConfigError

BIG = 1 << 40  # an upper bound for counts that only need to be sane
# training images of the datasets whose train split has a fixed size (stl10: its labelled train split)
TRAIN_SIZES = {"fashion_mnist": 60000, "mnist": 60000, "cifar10": 50000, "cifar100": 50000, "stl10": 5000}

# inclusive integer ranges per key (optional fields may also be null)
INT_RANGES = {
    "model.embed_dim": (1, 1 << 16), "model.depth": (1, 1024), "model.num_heads": (1, 1024),
    "model.patch_size": (1, 4096), "model.pred_dim": (1, 1 << 16), "model.pred_depth": (1, 1024),
    "model.pred_heads": (1, 1024), "model.num_hierarchies": (1, 4),
    "data.image_size": (1, 1 << 15), "data.batch_size": (1, 1 << 20), "data.num_workers": (0, 1024),
    "data.subset": (1, BIG), "data.synthetic_size": (1, 1 << 24), "data.max_bad_images": (0, BIG),
    "data.shuffle_buffer": (1, 1 << 24),
    "masks.nenc": (1, 64), "masks.npred": (1, 64), "masks.min_keep": (0, BIG),
    "training.epochs": (1, 1 << 20), "training.accum_steps": (1, 1 << 16), "training.seed": (0, (1 << 63) - 1),
    "training.stop_at_step": (1, BIG), "loss.sigreg_slices": (1, 1 << 16),
    "logging.log_every": (1, BIG), "logging.rankme_batch": (0, 1 << 20), "logging.images_every_epochs": (0, 1 << 20),
    "checkpoint.every_epochs": (0, 1 << 20), "checkpoint.every_steps": (0, BIG), "checkpoint.keep_last": (1, 1 << 20),
    "eval.every_epochs": (0, 1 << 20), "eval.knn_k": (1, 1 << 20), "eval.max_train": (1, BIG),
    "eval.max_test": (1, BIG),
    "probe.batch_size": (1, 1 << 20), "probe.seed": (0, (1 << 63) - 1), "probe.attentive_epochs": (1, 1 << 20),
    "probe.attentive_queries": (1, 1024), "probe.attentive_heads": (1, 1024), "probe.sgd_epochs": (1, 1 << 20),
    "finetune.epochs": (1, 1 << 20), "finetune.lowshot_epochs": (1, 1 << 20), "finetune.batch_size": (1, 1 << 20),
    "finetune.seed": (0, (1 << 63) - 1),
    "profiling.wait": (0, 1 << 20), "profiling.warmup": (0, 1 << 20), "profiling.active": (1, 1 << 20),
}
# float ranges per key: (low, high, low excluded)
FLOAT_RANGES = {
    "model.mlp_ratio": (0.0, 64.0, True), "model.drop_path": (0.0, 0.99, False), "model.layer_scale": (0.0, 1e3, True), "loss.beta": (0.0, 1e6, True),
    "optim.lr": (0.0, 1e3, False), "optim.start_lr": (0.0, 1e3, False), "optim.final_lr": (0.0, 1e3, False),
    "optim.warmup_epochs": (0.0, 1e6, False), "optim.weight_decay": (0.0, 1e3, False),
    "optim.final_weight_decay": (0.0, 1e3, False), "optim.eps": (0.0, 1.0, True), "optim.grad_clip": (0.0, 1e12, False),
    "eval.knn_temperature": (0.0, 1e6, True), "logging.collapse_warn_fraction": (0.0, 0.999, False),
    "probe.attentive_lr": (0.0, 1e3, False), "probe.attentive_warmup_epochs": (0.0, 1e6, False),
    "probe.attentive_weight_decay": (0.0, 1e3, False), "probe.sgd_lr": (0.0, 1e3, False),
    "probe.sgd_momentum": (0.0, 0.999, False), "probe.sgd_weight_decay": (0.0, 1e3, False),
    "finetune.lr": (0.0, 1e3, False), "finetune.final_lr": (0.0, 1e3, False),
    "finetune.warmup_fraction": (0.0, 0.999, False), "finetune.weight_decay": (0.0, 1e3, False),
    "finetune.layer_decay": (0.0, 1.0, True), "finetune.label_smoothing": (0.0, 0.999, False),
    "finetune.grad_clip": (0.0, 1e12, False),
    **{f"loss.{k}": (0.0, 1e6, False) for k in VICREG_DEFAULTS}, "loss.sigreg_weight": (0.0, 1e6, False),
}


def _check(cond: bool, path: str, msg: str):
    if not cond:
        raise ConfigError(f"{path}: {msg}")


def _get(cfg: Config, path: str):
    section, key = path.split(".")
    return getattr(getattr(cfg, section), key)


def _check_pair(pair, path: str, lo: float, hi: float | None, lo_open: bool = True):
    """``pair`` is ``[low, high]`` with ``lo < low <= high <= hi`` (``lo <= low`` when not ``lo_open``)."""
    a, b = pair
    ok = (a > lo if lo_open else a >= lo) and a <= b and (hi is None or b <= hi)
    bound = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]" if hi is not None else f"> {lo:g}"
    _check(ok, path, f"must be a pair [low, high] in {bound} with low <= high, got {list(pair)}")


def _check_normalisation(d):
    """``data.mean`` / ``data.std``: one value per channel, in range, or null (the dataset's statistics)."""
    for key in ("mean", "std"):
        val = getattr(d, key)
        _check(val is None or len(val) == d.channels, f"data.{key}",
               f"must have data.channels={d.channels} values or be null, got {val}")
    _check(d.mean is None or all(-1e3 <= x <= 1e3 for x in d.mean), "data.mean", f"must be in [-1e3, 1e3], got {d.mean}")
    _check(d.std is None or all(0 < s <= 1e3 for s in d.std), "data.std", f"must be > 0 and <= 1e3, got {d.std}")


def validate(cfg: Config, explicit: set[str] | None = None) -> Config:
    """Check ranges and cross-field rules; fill derived fields (named model sizes, level weights, VICReg)."""
    explicit = explicit or set()
    m, d, k, ls, o, t = cfg.model, cfg.data, cfg.masks, cfg.loss, cfg.optim, cfg.training
    _check_text(cfg)
    _check(m.size != "from_file" or m.init_from, "model.size", "from_file takes the architecture from "
           "model.init_from, which is not set; set model.init_from or use a named size or custom")
    if m.size in MODEL_SIZES:
        for key, val in zip(("embed_dim", "depth", "num_heads"), MODEL_SIZES[m.size]):
            if f"model.{key}" in explicit and getattr(m, key) != val:
                raise ConfigError(f"model.{key}={getattr(m, key)} conflicts with model.size={m.size} "
                                  f"({key}={val}); use model.size: custom for other dimensions")
            setattr(m, key, val)
    for path, (lo, hi) in INT_RANGES.items():
        val = _get(cfg, path)
        _check(val is None or lo <= val <= hi, path, f"must be an integer in {lo}..{hi}, got {val}")
    for path, (lo, hi, lo_open) in FLOAT_RANGES.items():
        val = _get(cfg, path)
        ok = val is None or ((val > lo if lo_open else val >= lo) and val <= hi)
        _check(ok, path, f"must be a number in {'(' if lo_open else '['}{lo:g}, {hi:g}], got {val}")

    _check(m.embed_dim % m.num_heads == 0, "model.num_heads",
           f"must divide model.embed_dim={m.embed_dim}, got {m.num_heads}")
    _check(m.pred_dim % m.pred_heads == 0, "model.pred_heads",
           f"must divide model.pred_dim={m.pred_dim}, got {m.pred_heads}")
    _check_mlp_width(m)
    _check(m.init_from is None or m.init_from.strip() != "", "model.init_from",
           "must be a path (a checkpoint, export, official .pth.tar or Hugging Face directory) or null, got ''")

    for i, part in enumerate(d.mix or []):
        _check(part.name is not None and part.name != "shards", f"data.mix[{i}].name",
               f"must be one of {', '.join(n for n in DATASETS if n != 'shards')}, got {part.name!r}")
        _check(0 < part.weight <= 1e6, f"data.mix[{i}].weight", f"must be in (0, 1e6], got {part.weight}")
    _check_data_files(d, cfg.eval.every_epochs)
    _check_hf(d, cfg.eval.every_epochs)
    _check(d.image_size % m.patch_size == 0, "model.patch_size",
           f"must divide data.image_size={d.image_size}, got {m.patch_size}")
    grid = patch_grid(d.image_size, m.patch_size)[0]
    _check(grid >= 2, "model.patch_size", f"leaves a {grid}x{grid} patch grid on data.image_size={d.image_size}; "
           "context and targets need at least 2x2 patches")
    _check(d.subset is None or d.batch_size <= d.subset, "data.batch_size",
           f"must be <= data.subset={d.subset} (a batch is never partial), got {d.batch_size}")
    _check(d.dataset != "synthetic" or d.mix or d.batch_size <= d.synthetic_size, "data.batch_size",
           f"must be <= data.synthetic_size={d.synthetic_size}, got {d.batch_size}")
    _check_epoch_length(d, t.accum_steps)
    _check_pair(d.crop_scale, "data.crop_scale", 0.0, 1.0)
    _check_pair(d.crop_ratio, "data.crop_ratio", 0.0, 100.0)
    _check_normalisation(d)

    _check_pair(k.enc_scale, "masks.enc_scale", 0.0, 1.0)
    _check_pair(k.pred_scale, "masks.pred_scale", 0.0, 1.0)
    _check_pair(k.aspect_ratio, "masks.aspect_ratio", 0.0, 100.0)
    _check_masks(k, grid)

    _fill_level_weights(ls, m.num_hierarchies)
    _fill_vicreg(ls)
    _check_targets(m, ls, cfg.distributed.strategy)

    _check(all(0 <= b < 1 for b in o.betas), "optim.betas", f"must be in [0, 1), got {list(o.betas)}")
    _check(0 <= o.ema[0] <= o.ema[1] <= 1, "optim.ema",
           f"must be a pair [start, end] with 0 <= start <= end <= 1, got {list(o.ema)}")
    _check(bool(DEVICE.match(t.device)), "training.device", f"must be auto, cpu, mps, cuda or cuda:N, got {t.device!r}")

    ev, c = cfg.eval, cfg.checkpoint
    _check(c.monitor != "knn" or ev.every_epochs > 0, "checkpoint.monitor",
           "'knn' needs the k-NN monitor: set eval.every_epochs >= 1")
    _check(not (cfg.distributed.strategy == "fsdp" and t.precision == "fp16"), "training.precision",
           "fp16 needs a grad scaler that agrees across shards, which the fsdp strategy does not have; "
           "use bf16 or fp32 with distributed.strategy fsdp")
    _check(not (cfg.distributed.strategy == "fsdp" and ev.every_epochs > 0), "eval.every_epochs",
           "the k-NN monitor runs on rank 0 alone and cannot read FSDP-sharded weights; set eval.every_epochs: 0 "
           "with distributed.strategy fsdp and evaluate checkpoints with python -m jepa.eval")
    _check_wandb_project(cfg.logging.wandb_project)
    heads = cfg.probe.attentive_heads or m.num_heads
    _check(m.embed_dim % heads == 0, "probe.attentive_heads", f"must divide model.embed_dim={m.embed_dim}, got {heads}")
    return cfg


def _check_wandb_project(project: str):
    """A name W&B accepts as a project (it refuses these characters and longer names)."""
    _check(0 < len(project) <= 128 and not set(project) & set("/\\#?%:"), "logging.wandb_project",
           f"must be a W&B project name: 1 to 128 characters, none of / \\ # ? % :, got {project!r}")


def _fill_level_weights(ls, levels: int):
    """Default the level weights to halving; each must be in [0, 1e6] and together they must weigh something."""
    if ls.level_weights is None:
        ls.level_weights = [1.0, 0.5, 0.25, 0.125][:levels]
    _check(len(ls.level_weights) == levels, "loss.level_weights",
           f"must have model.num_hierarchies={levels} values, got {ls.level_weights}")
    _check(all(0 <= w <= 1e6 for w in ls.level_weights), "loss.level_weights",
           f"must be in [0, 1e6], got {ls.level_weights}")
    _check(any(w > 0 for w in ls.level_weights), "loss.level_weights",
           f"all {levels} weights of the model.num_hierarchies={levels} levels are 0, got {ls.level_weights}: "
           "the loss would be 0 and nothing would train; give at least one level a weight > 0")


def _fill_vicreg(ls):
    """VICReg weights default with the combined loss and are warned about (unused) with any other."""
    for key, default in VICREG_DEFAULTS.items():
        if ls.type == "combined" and getattr(ls, key) is None:
            setattr(ls, key, default)
    unused = [f"loss.{key}" for key in VICREG_DEFAULTS if ls.type != "combined" and getattr(ls, key) is not None]
    if unused:
        warnings.warn(f"{', '.join(unused)} set but loss.type is '{ls.type}': they are ignored "
                      "(set loss.type: combined to use the VICReg term)", UserWarning, stacklevel=4)


def _check_targets(m, ls, strategy: str):
    """SIGReg on the target embeddings needs a gradient there, which only online targets have; FSDP is EMA-only."""
    _check(ls.sigreg_on == "context" or m.target_encoder == "online", "loss.sigreg_on",
           f"{ls.sigreg_on!r} regularises the target embeddings, but with model.target_encoder: ema they come "
           "from the EMA copy, which no gradient reaches; use loss.sigreg_on: context, or "
           "model.target_encoder: online")
    _check(not (m.target_encoder == "online" and strategy == "fsdp"), "model.target_encoder",
           "online targets are not supported with distributed.strategy fsdp (it shards an EMA copy beside the "
           "context encoder); use distributed.strategy ddp or model.target_encoder: ema")
    if m.target_encoder == "online" and not ls.sigreg_weight and ls.type != "combined":
        warnings.warn("model.target_encoder: online without a regulariser (loss.sigreg_weight is 0 and loss.type is "
                      f"'{ls.type}'): nothing keeps the encoder from collapsing to a constant; set "
                      "loss.sigreg_weight > 0", UserWarning, stacklevel=4)


def _strings(obj, path: str):
    """``(key path, value)`` of every string in the config, inside sections and lists (data.mix[i].root)."""
    if isinstance(obj, str):
        yield path, obj
    elif dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            yield from _strings(getattr(obj, f.name), f"{path}.{f.name}" if path else f.name)
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _strings(value, f"{path}[{i}]")


def _check_text(cfg: Config):
    """Every string encodes as UTF-8: names and paths become file names, and a lone surrogate cannot be written."""
    for path, value in _strings(cfg, ""):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ConfigError(f"{path}: {value!r} is not valid text: the character {value[e.start]!r} at position "
                              f"{e.start} cannot be written as UTF-8 (nor name a file); use valid UTF-8 text") from None


def _check_mlp_width(m):
    """Every block's MLP has int(width * model.mlp_ratio) hidden units (``jepa.models.vit.Block``): at least 1."""
    for key, width in sorted((("model.pred_dim", m.pred_dim), ("model.embed_dim", m.embed_dim)), key=lambda kv: kv[1]):
        hidden = int(width * m.mlp_ratio)
        _check(hidden >= 1, "model.mlp_ratio",
               f"{m.mlp_ratio:g} leaves the MLPs of the {key}={width} blocks int({width} * {m.mlp_ratio:g}) = "
               f"{hidden} hidden units; use model.mlp_ratio >= {1 / width:.4g} so that {key} * model.mlp_ratio >= 1")


def known_train_images(d) -> tuple[int, str] | None:
    """How many training images ``data`` gives, where the config alone says (synthetic, fixed-size datasets,
    a mixture of them; cut by data.subset), with where the number comes from; None when only loading tells."""
    names = [p.name for p in d.mix] if d.mix else [d.dataset]
    sizes = [d.synthetic_size if n == "synthetic" else TRAIN_SIZES.get(n) for n in names]
    if None in sizes:
        return None
    counts = [min(n, d.subset) if d.subset is not None else n for n in sizes]
    source = "the data.mix datasets" if d.mix else (
        "data.synthetic_size" if d.dataset == "synthetic" else f"the {d.dataset} train split")
    cut = f" with data.subset={d.subset}" if counts != sizes else ""
    return sum(counts), source + cut


def check_accum_steps(accum: int, batch_size: int, batches: int, where: str):
    """An optimizer step accumulates training.accum_steps micro-batches, so an epoch must hold at least that many."""
    _check(accum <= batches, "training.accum_steps",
           f"{accum} micro-batches per optimizer step, but an epoch has only {batches} batch(es) of "
           f"data.batch_size={batch_size} ({where}); use training.accum_steps <= {batches} or a smaller "
           "data.batch_size")


def _check_epoch_length(d, accum: int):
    """Batch size and accumulation against the epoch length, where the config alone gives it (at most one process)."""
    known = known_train_images(d)
    if known is None:
        return
    images, where = known
    _check(d.batch_size <= images, "data.batch_size",
           f"must be <= the {images} training images of {where} (a batch is never partial), got {d.batch_size}")
    check_accum_steps(accum, d.batch_size, images // d.batch_size, f"{images} training images of {where}")


def _check_data_files(d, monitor_every: int):
    """The shard keys of ``data``: only with data.dataset: shards, where they are required."""
    streamed = d.dataset == "shards" and not d.mix
    _check(d.shards is None or streamed, "data.shards", f"is only read with data.dataset: shards, not {d.dataset!r}")
    if not streamed:
        return
    _check(bool(d.shards), "data.shards", "is required with data.dataset: shards: the tar shards python -m jepa.shards "
                                          "wrote, as a brace pattern like /data/in1k/shard-{000000..000127}.tar")
    expand_braces(d.shards)
    _check(monitor_every == 0, "eval.every_epochs", "the k-NN monitor needs a labelled image folder, not a stream "
                                                    "of shards; set eval.every_epochs: 0 with data.dataset: shards "
                                                    "and evaluate checkpoints with python -m jepa.eval")


def _check_hf(d, monitor_every: int):
    """The Hugging Face keys of ``data``: a path wherever an hf dataset is read, streaming only for data.dataset."""
    names = [p.name for p in d.mix] if d.mix else [d.dataset]
    used = "hf" in names
    _check(d.hf_path is None or used, "data.hf_path", f"is only read with data.dataset: hf, not {d.dataset!r}")
    _check(not d.hf_streaming or (d.dataset == "hf" and not d.mix), "data.hf_streaming",
           "streams data.dataset: hf alone, not a data.mix part; set it to false")
    for key in ("hf_split", "hf_image_column", "hf_label_column"):
        value = getattr(d, key)
        _check(value is None and key == "hf_label_column" or bool(value and value.strip()), f"data.{key}",
               f"must be a non-empty name{' or null' if key == 'hf_label_column' else ''}, got {value!r}")
    if not used:
        return
    rootless = not d.mix or any(p.name == "hf" and p.root is None for p in d.mix)
    _check(not rootless or bool(d.hf_path and d.hf_path.strip()), "data.hf_path",
           "is required with data.dataset: hf: a hub name (owner/name), a save_to_disk folder, a folder of parquet "
           "files or a parquet glob such as /data/in1k/{split}-*.parquet")
    _check(not d.hf_streaming or monitor_every == 0, "eval.every_epochs",
           "the k-NN monitor needs a dataset it can index, not a stream; set eval.every_epochs: 0 with "
           "data.hf_streaming: true and evaluate checkpoints with python -m jepa.eval")


def _check_masks(k, side: int):
    """masks.min_keep against the patch grid; the block sizes are checked when the sampler is built (jepa.data)."""
    n = side * side
    _check(k.min_keep < n, "masks.min_keep", f"must be in [0, {n}) for a {side}x{side} grid, got {k.min_keep}")
