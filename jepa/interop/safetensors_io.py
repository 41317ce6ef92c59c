"""safetensors files: named tensors plus string metadata, read and written without pickle.

Files we write carry a checksum of their tensors and metadata in the header, verified on read.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save

from jepa.checkpoint import CHECKSUM_KEY, CheckpointError, state_digest, verify_checksum
from jepa.io import atomic_write


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file; a CheckpointError naming the file if it is not one."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read {path}: not a valid safetensors file, it is corrupt or truncated "
                              f"({path.stat().st_size} bytes; {reason})") from None
    if CHECKSUM_KEY in meta:  # ours; foreign files carry none
        rest = {k: v for k, v in meta.items() if k != CHECKSUM_KEY}
        verify_checksum({"tensors": tensors, "metadata": rest, CHECKSUM_KEY: meta[CHECKSUM_KEY]}, path)
    return tensors, meta


def metadata_json(meta: dict[str, str], key: str, path: Path):
    """The JSON value stored under ``key`` in a safetensors header, or a CheckpointError naming the file."""
    try:
        return json.loads(meta[key])
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: its safetensors metadata has no valid '{key}' entry ({e})") from None


def write_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write ``tensors`` (contiguous CPU copies) with string ``metadata`` to ``path`` atomically."""
    plain = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = {k: str(v) for k, v in metadata.items() if k != CHECKSUM_KEY}
    metadata[CHECKSUM_KEY] = state_digest({"tensors": plain, "metadata": metadata})
    data = save(plain, metadata=metadata)
    return atomic_write(path, lambda f: f.write(data))
