"""Our own files: training checkpoints, ``.pt`` encoder exports (v1) and safetensors encoder exports (v2).

A v2 export is one safetensors file: the encoder's tensors, and in its header (JSON strings) what
rebuilds it (``spec``), the input normalisation, the run's config, the step and which encoder it is.
"""
from __future__ import annotations

import json
from pathlib import Path

from jepa.checkpoint import ENCODER_FORMAT, CheckpointError, check_checkpoint, verify_checksum, with_checksum
from jepa.config import ConfigError, config_from_dict
from jepa.data import normalisation
from jepa.interop.layout import check_spec
from jepa.interop.safetensors_io import metadata_json, write_safetensors
from jepa.io import atomic_save
from jepa.models import encoder_spec

ENCODERS = ("target", "context")
SAFETENSORS_FORMAT = "jepa-encoder-v2"


def saved_config(raw: dict, path: Path):
    """The ``Config`` a checkpoint or export saved; a CheckpointError naming ``path`` if it no longer validates."""
    try:
        return config_from_dict(raw)
    except ConfigError as e:
        raise CheckpointError(f"{path}: its saved config is not valid for this version of jepa ({e})") from None


def part_weights(model_state: dict, prefix: str) -> dict:
    """Entries of a JEPA state dict under ``prefix`` (e.g. ``predictor.``), without it."""
    return {k[len(prefix):]: v for k, v in model_state.items() if k.startswith(prefix)}


def encoder_weights(model_state: dict, which: str = "target", source: str | Path = "checkpoint",
                    online: bool = False) -> dict:
    """The ``which`` encoder's entries of a JEPA state dict, without the prefix; with ``online`` targets (no copy
    stored) the target encoder is the context encoder."""
    if which not in ENCODERS:
        raise ValueError(f"encoder must be one of {', '.join(ENCODERS)}, got {which!r}")
    out = part_weights(model_state, f"{'context' if online else which}_encoder.")
    if not out:
        raise CheckpointError(f"{source} holds no '{which}_encoder.*' weights")
    return out


def read_training_checkpoint(raw: dict, path: Path) -> dict:
    """A source record (both encoders, predictor, level heads) of a training checkpoint."""
    state = check_checkpoint(raw, path)
    cfg = saved_config(state["config"], path)
    mean, std = normalisation(cfg)
    model = state["model"]
    m = cfg.model
    online = m.target_encoder == "online"
    return {"kind": "jepa training checkpoint",
            "encoders": {w: encoder_weights(model, w, path, online) for w in ENCODERS},
            "predictor": part_weights(model, "predictor.") or None,
            "predictor_spec": {"pred_dim": m.pred_dim, "pred_depth": m.pred_depth, "pred_heads": m.pred_heads,
                               "mlp_ratio": m.mlp_ratio},
            "level_heads": part_weights(model, "level_heads.") or None, "spec": encoder_spec(cfg),
            "normalization": {"mean": list(mean), "std": list(std)}, "config": state["config"],
            "step": state["step"], "heads_stored": True}


def read_pt_export(raw: dict, path: Path) -> dict:
    """A source record of a v1 ``.pt`` encoder export."""
    verify_checksum(raw, path)
    missing = [k for k in ("weights", "spec", "normalization") if k not in raw]
    if missing:
        raise CheckpointError(f"{path} is an incomplete jepa encoder export ('{ENCODER_FORMAT}'): missing "
                              f"{', '.join(missing)}")
    return export_record(raw["weights"], check_spec(raw["spec"], path), raw["normalization"], raw.get("config"),
                         raw.get("step"), raw.get("encoder", "target"), "jepa encoder export (.pt)")


def read_safetensors_export(tensors: dict, meta: dict, path: Path) -> dict:
    """A source record of a v2 safetensors encoder export."""
    get = lambda key: metadata_json(meta, key, path)  # noqa: E731
    return export_record(tensors, check_spec(get("spec"), path), get("normalization"), get("config"), get("step"),
                         get("encoder"), "jepa encoder export (safetensors)")


def export_record(weights, spec, normalization, config, step, which, kind) -> dict:
    return {"kind": kind, "encoders": {which or "encoder": weights}, "predictor": None, "predictor_spec": None,
            "level_heads": None, "spec": spec, "normalization": normalization, "config": config, "step": step,
            "heads_stored": True}


def write_safetensors_export(out: Path, enc: dict, source: str) -> Path:
    """``out``: the encoder record ``enc`` (``read_encoder``'s) as a v2 export."""
    meta = {"format": SAFETENSORS_FORMAT, "source": json.dumps(source),
            **{k: json.dumps(enc[k]) for k in ("spec", "normalization", "config", "step", "encoder")}}
    return write_safetensors(out, enc["weights"], meta)



def write_pt_export(out: Path, enc: dict, source: str) -> Path:
    """``out``: the encoder record ``enc`` as a ``.pt`` export (tensors and plain values, ``torch.load(weights_only=
    True)`` reads it), with the checksum its reader verifies."""
    payload = {"format": ENCODER_FORMAT, "source": source,
               **{k: enc[k] for k in ("weights", "spec", "normalization", "config", "step", "encoder")}}
    return atomic_save(with_checksum(payload), out)
