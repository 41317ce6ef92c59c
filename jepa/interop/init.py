"""``model.init_from``: start a training run from any weights jepa reads (docs/interop.md).

Encoder weights go into the context and the target encoder (each its own when the file holds both);
the predictor and H-JEPA level heads are loaded when present and compatible, otherwise left newly
initialised, and the log says which. The optimizer, schedules and step start fresh: this is not ``--resume``.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

from jepa.checkpoint import CheckpointError
from jepa.interop.fit import check_shapes, fit_weights
from jepa.interop.layout import WIDTH_HEADS, grid_of
from jepa.config import ConfigError, validate
from jepa.interop.sources import read_architecture, read_source
from jepa.models import encoder_spec

log = logging.getLogger("jepa")

# encoder spec field -> (config key, the weight whose shape shows it)
_FIELDS = {"embed_dim": ("model.embed_dim", "patch_embed.weight"), "patch_size": ("model.patch_size",
           "patch_embed.weight"), "in_chans": ("data.channels", "patch_embed.weight"), "depth": ("model.depth", None),
           "mlp_hidden": ("model.mlp_ratio", "blocks.0.mlp.fc1.weight"), "num_heads": ("model.num_heads", None)}


def _encoder_hint(key: str | None) -> str:
    if key is None:
        return "; set model.embed_dim, model.depth, model.patch_size, model.mlp_ratio and data.channels to the file's"
    if key.startswith("patch_embed"):
        return " (model.embed_dim, model.patch_size, data.channels)"
    return " (model.embed_dim, model.mlp_ratio)" if ".mlp." in key else " (model.embed_dim)"


def _with_hidden(spec: dict) -> dict:
    return {**spec, "mlp_hidden": int(spec["embed_dim"] * spec["mlp_ratio"])}


def check_encoder(source: dict, weights: dict, model, cfg, path: Path):
    """Width, depth, heads, patch size, channels, MLP width: mismatches are one error naming every key and the
    shapes."""
    theirs, ours = _with_hidden(source["spec"]), _with_hidden(encoder_spec(cfg))
    found, keys = [], []
    for field, (cfg_key, weight_key) in _FIELDS.items():
        if theirs[field] == ours[field] or (field == "num_heads" and not source["heads_stored"]):
            continue
        if field == "mlp_hidden" and int(theirs["embed_dim"] * cfg.model.mlp_ratio) == theirs[field]:
            continue  # the width alone differs: the ratio is right
        shapes = ""
        if weight_key is not None and weight_key in weights:
            mine = model.context_encoder.state_dict()[weight_key].shape
            shapes = f" ('{weight_key}' {list(weights[weight_key].shape)} in the file, {list(mine)} here)"
        value = source["spec"]["mlp_ratio"] if field == "mlp_hidden" else theirs[field]
        found.append(f"{field.replace('_', ' ')} {theirs[field]} but the config gives {ours[field]}{shapes}")
        keys.append(f"{cfg_key}: {value}")
    if found:
        other = any(k.startswith("model.") for k in keys) and cfg.model.size != "from_file"
        raise CheckpointError(f"{path}: the file's encoder has {', '.join(found)}; set {', '.join(keys)} to start "
                              "from it" + (" (or model.size: from_file to take the architecture from the file)"
                                           if other else ""))
    table = WIDTH_HEADS.get(theirs["embed_dim"])
    if not source["heads_stored"] and table is not None and table != cfg.model.num_heads:
        log.warning("%s does not store its head count; the official model table gives %d heads for width %d, "
                    "model.num_heads=%d is used as configured", path, table, theirs["embed_dim"], cfg.model.num_heads)


def _predictor_mismatch(source: dict, cfg) -> str | None:
    """Why the file's predictor cannot be loaded into the configured one (None: it can)."""
    if source["predictor"] is None:
        return "the file holds no predictor"
    p, m = source["predictor_spec"], cfg.model
    mine = {"pred_dim": m.pred_dim, "pred_depth": m.pred_depth, "pred_heads": m.pred_heads,
            "mlp_hidden": int(m.pred_dim * m.mlp_ratio)}
    theirs = {**p, "mlp_hidden": int(p["pred_dim"] * p["mlp_ratio"])}
    for key, value in mine.items():
        if theirs[key] != value:
            cfg_key = "model.mlp_ratio" if key == "mlp_hidden" else f"model.{key}"
            return f"its {key.replace('_', ' ')} is {theirs[key]}, {cfg_key} gives {value}"
    return None


def _load_predictor(model, source: dict, grid, cfg, path: Path) -> str:
    reason = _predictor_mismatch(source, cfg)
    if reason is None:
        try:
            for note in fit_weights(model.predictor, source["predictor"], grid, path, "predictor"):
                log.info("%s", note)
            return "loaded"
        except CheckpointError as e:
            reason = str(e)
    return f"newly initialised ({reason})"


def _load_level_heads(model, source: dict, path: Path) -> str:
    heads = source["level_heads"]
    if not len(model.level_heads):
        return "none (one level)"
    if heads is None:
        return "newly initialised (the file holds none)"
    try:
        check_shapes(model.level_heads, heads, path, "level heads")
    except CheckpointError as e:
        return f"newly initialised ({e})"
    model.level_heads.load_state_dict(heads)
    return "loaded"


def takes_size_from_file(cfg) -> bool:
    """``model.size: from_file``, or no size set at all (``load_config`` records what was) with ``model.init_from``."""
    explicit = getattr(cfg, "explicit", None)
    return bool(cfg.model.init_from) and (cfg.model.size == "from_file" or
                                          (explicit is not None and "model.size" not in explicit))


def fixed_keys(cfg) -> set[str]:
    """The keys the file's architecture must agree with: those set where model.size is set, or later.

    ``--model.size from_file`` on the command line replaces what the config file says; in the config file (or
    left unset) it must agree with every key the user set.
    """
    explicit = getattr(cfg, "explicit", None) or {}
    if explicit.get("model.size") == "command line":
        return {key for key, where in explicit.items() if where == "command line"}
    return set(explicit)


def _file_values(cfg, fixed: set[str]) -> tuple[dict, dict]:
    """``(encoder keys, predictor keys)``: config key -> the value the file gives."""
    m = cfg.model
    spec, pred = read_architecture(m.init_from, m.num_heads if "model.num_heads" in fixed else None)
    encoder = {f"model.{k}": spec[k] for k in ("embed_dim", "depth", "num_heads", "mlp_ratio", "patch_size")}
    predictor = {f"model.{k}": pred[k] for k in ("pred_dim", "pred_depth", "pred_heads")} if pred else {}
    return encoder, predictor


def _differs(cfg, key: str, value) -> bool:
    m = cfg.model
    if key == "model.mlp_ratio":  # the same MLP width is the same architecture
        return int(m.embed_dim * m.mlp_ratio) != int(m.embed_dim * value)
    return getattr(m, key.split(".")[1]) != value


def adopt_architecture(cfg) -> None:
    """Under ``model.size: from_file`` set the encoder's (and, where the file has one, the predictor's) shape from
    ``model.init_from``, before the model is built; a key the user fixed to another value is an error naming all.

    A predictor key the user fixed keeps its value (the predictor then starts new, logged as ever).
    """
    if not takes_size_from_file(cfg):
        return
    fixed = fixed_keys(cfg)
    encoder, predictor = _file_values(cfg, fixed)
    clash = {key: value for key, value in encoder.items() if key in fixed and _differs(cfg, key, value)}
    if clash:
        raise ConfigError(f"model.size from_file: {cfg.model.init_from} has "
                          f"{', '.join(f'{k}={v}' for k, v in clash.items())} but the config sets "
                          f"{', '.join(f'{k}={getattr(cfg.model, k[6:])}' for k in clash)}; set "
                          f"{', '.join(f'{k}: {v}' for k, v in clash.items())} (or leave them out)")
    for key, value in {**predictor, **encoder}.items():
        if key not in fixed:
            setattr(cfg.model, key.split(".")[1], value)
    cfg.model.size = "from_file"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # load_config warned already
        validate(cfg)
    log.info("model.size from_file: %s", ", ".join(f"{k}={getattr(cfg.model, k[6:])}" for k in {**encoder,
                                                                                                 **predictor}))


def start_from(model, cfg, resumed: bool, announce: bool = True):
    """``model.init_from`` at the start of a run, read by every rank before any wrapping or sharding; a resumed
    run has its weights already."""
    if cfg.model.init_from and not resumed:
        init_from(model, cfg)
    elif cfg.model.init_from and announce:
        log.info("resuming: model.init_from %s is not read again", cfg.model.init_from)


def init_from(model, cfg, path: str | Path | None = None) -> dict:
    """Load ``path`` (default ``cfg.model.init_from``) into a freshly built JEPA ``model``; returns what went where."""
    path = Path(path or cfg.model.init_from)
    source = read_source(path, num_heads=cfg.model.num_heads)
    encoders = source["encoders"]
    ctx_role = "context" if "context" in encoders else next(iter(encoders))
    tgt_role = "target" if "target" in encoders and model.has_ema else ctx_role  # online: the context encoder
    grid = grid_of(source["spec"])
    for role in {ctx_role, tgt_role}:
        check_encoder(source, encoders[role], model, cfg, path)
    notes = []
    for part, role in (("context_encoder", ctx_role), ("target_encoder", tgt_role))[:1 + model.has_ema]:
        notes += fit_weights(getattr(model, part), encoders[role], grid, path, part.replace("_", " "), _encoder_hint)
    summary = {"kind": source["kind"], "context": ctx_role, "target": tgt_role,
               "predictor": _load_predictor(model, source, grid, cfg, path),
               "level_heads": _load_level_heads(model, source, path), "notes": sorted(set(notes))}
    name = {"context": "its context encoder", "target": "its target encoder", "encoder": "its encoder"}
    log.info("model.init_from %s (%s): context encoder <- %s, target encoder <- %s, predictor %s, level heads %s; "
             "optimizer, schedules and step start fresh", path, source["kind"], name[ctx_role], name[tgt_role],
             summary["predictor"], summary["level_heads"])
    for note in summary["notes"]:
        log.info("%s", note)
    return summary
