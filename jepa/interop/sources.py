"""Which file is it? One reader for every source of weights: ours, official I-JEPA, Hugging Face, timm.

``read_source`` returns a source record: ``encoders`` (``{"target"|"context"|"encoder": weights}``,
``"encoder"`` when the file holds one encoder of unknown role), ``predictor`` and ``level_heads``
(or None), ``spec`` (our encoder's constructor arguments), ``predictor_spec``, ``normalization``,
``config`` and ``step`` (ours only), ``kind`` and ``heads_stored`` (False when the head count came
from the official width table). Weights are in our names; ``pos_embed`` is a stored position table.
Nothing is unpickled: safetensors, or ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from jepa.checkpoint import ENCODER_FORMAT, FORMAT, CheckpointError, load_file
from jepa.interop.hf import hf_weights_file, read_hf_config, read_hf_dir
from jepa.interop.layout import strip_prefix
from jepa.interop.native import (ENCODERS, SAFETENSORS_FORMAT, read_pt_export, read_safetensors_export,
                                 read_training_checkpoint)
from jepa.interop.official import is_official, read_official
from jepa.interop.safetensors_io import read_safetensors
from jepa.interop.timm import read_timm
from jepa.io import file_hash, is_safetensors

EXPECTED = ("a jepa training checkpoint or encoder export, an official I-JEPA checkpoint (.pth.tar with encoder/"
            "predictor/target_encoder), a Hugging Face IJepaModel directory or a timm-named safetensors file")


def read_source(path: str | Path, num_heads: int | None = None) -> dict:
    """The source record of any supported file or directory (see the module docstring).

    ``num_heads`` is used only where the file does not store the head count (official checkpoints,
    foreign timm files); without it the official width table decides.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path} is a directory without config.json; expected {EXPECTED}")
        return _from_encoder(read_hf_dir(path))
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if is_safetensors(path):
        if hf_weights_file(path):
            return _from_encoder(read_hf_dir(path.parent))
        return _read_safetensors_file(path, num_heads)
    raw = load_file(path, mmap=True)  # an official ViT-H file also holds optimizer state we never touch
    fmt = raw.get("format") if isinstance(raw, dict) else None
    if fmt == FORMAT:
        return read_training_checkpoint(raw, path)
    if fmt == ENCODER_FORMAT:
        return read_pt_export(raw, path)
    if is_official(raw):
        return read_official(raw, path, num_heads)
    keys = sorted(map(str, raw))[:6] if isinstance(raw, dict) else type(raw).__name__
    raise CheckpointError(f"{path} is not a format jepa reads (found {keys}); expected {EXPECTED}")


def _read_safetensors_file(path: Path, num_heads: int | None) -> dict:
    tensors, meta = read_safetensors(path)
    if meta.get("format") == SAFETENSORS_FORMAT:
        return read_safetensors_export(tensors, meta, path)
    if "patch_embed.proj.weight" in tensors or "module.patch_embed.proj.weight" in tensors:
        return _from_encoder(read_timm(strip_prefix(tensors, "module."), meta, path, num_heads))
    if any(k.endswith("patch_embeddings.projection.weight") for k in tensors):
        raise CheckpointError(f"{path} holds Hugging Face weights; pass its directory, with its config.json")
    raise CheckpointError(f"{path} is a safetensors file jepa does not know (no '{SAFETENSORS_FORMAT}' header, "
                          f"no timm or Hugging Face ViT weights; found {', '.join(sorted(tensors)[:4])}); "
                          f"expected {EXPECTED}")


def _from_encoder(enc: dict) -> dict:
    """A source record from a one-encoder record (Hugging Face, timm)."""
    return {"kind": enc["kind"], "encoders": {enc["encoder"] or "encoder": enc["weights"]}, "predictor": None,
            "predictor_spec": None, "level_heads": None, **{k: enc[k] for k in (
                "spec", "normalization", "config", "step", "heads_stored")}}


def read_architecture(path: str | Path, num_heads: int | None = None) -> tuple[dict, dict | None]:
    """``(encoder spec, predictor spec or None)`` of any source; a Hugging Face directory by its config.json alone."""
    path = Path(path)
    if path.is_dir() and (path / "config.json").is_file():
        return read_hf_config(path)[1], None
    source = read_source(path, num_heads)
    return source["spec"], source["predictor_spec"]


def pick_encoder(source: dict, which: str, path: Path) -> tuple[dict, str]:
    """``(weights, role)`` of the ``which`` encoder; a file holding one encoder of unknown role serves both."""
    encoders = source["encoders"]
    if which in encoders:
        return encoders[which], which
    if "encoder" in encoders:
        return encoders["encoder"], "encoder"
    (role,) = encoders
    raise CheckpointError(f"{path} is an export of the {role} encoder; the {which} encoder is only in the "
                          "training checkpoint")


def read_encoder(path: str | Path, which: str = "target", num_heads: int | None = None) -> dict:
    """``{"weights", "spec", "normalization", "config", "step", "encoder", "kind"}`` of one encoder of any source."""
    if which not in ENCODERS:
        raise ValueError(f"encoder must be one of {', '.join(ENCODERS)}, got {which!r}")
    path = Path(path)
    source = read_source(path, num_heads)
    weights, role = pick_encoder(source, which, path)
    return {"weights": weights, "encoder": which if role == "encoder" else role,
            **{k: source[k] for k in ("spec", "normalization", "config", "step", "kind", "heads_stored")}}


def source_digest(path: str | Path) -> str:
    """sha256 of a file, or of a directory's files (names and contents): what a feature cache is keyed on."""
    path = Path(path)
    if not path.is_dir():
        return file_hash(path, "sha256")
    h = hashlib.sha256()
    for p in sorted(q for q in path.iterdir() if q.is_file()):
        h.update(f"{p.name}:{file_hash(p, 'sha256')};".encode())
    return h.hexdigest()
