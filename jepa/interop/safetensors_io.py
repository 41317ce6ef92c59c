"""safetensors files: named tensors plus string metadata, read and written without pickle.

Files we write carry a checksum of their tensors and metadata in the header, verified on read.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

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


_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
           torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
           torch.bool: "BOOL"}
_FROM_NAME = {name: dtype for dtype, name in _DTYPES.items()}


def _raw_bytes(t: torch.Tensor):
    """A contiguous CPU tensor's bytes as a NumPy view (no copy)."""
    return t.reshape(-1).view(torch.uint8).numpy()


def write_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write ``tensors`` with string ``metadata`` to ``path`` atomically, streaming one tensor at a time.

    Nothing is gathered in memory: a memory-mapped source is hashed and written straight from its pages.
    """
    plain = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = {k: str(v) for k, v in metadata.items() if k != CHECKSUM_KEY}
    metadata[CHECKSUM_KEY] = state_digest({"tensors": plain, "metadata": metadata})
    header, offset = {"__metadata__": metadata}, 0
    for name in sorted(plain):
        t = plain[name]
        if t.dtype not in _DTYPES:
            raise ValueError(f"tensor '{name}' has dtype {t.dtype}, which safetensors files here do not store")
        size = t.numel() * t.element_size()
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)

    def write(f):
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for name in sorted(plain):
            f.write(_raw_bytes(plain[name]))
    return atomic_write(path, write, size_hint=8 + len(blob) + offset)


class _FromFile(dict):
    """Tensors of a safetensors file read on access, one at a time (a checksum pass holds one tensor)."""

    def __init__(self, f, start: int, entries: dict):
        super().__init__((name, None) for name in entries)
        self.f, self.start, self.entries = f, start, entries

    def __getitem__(self, name):
        entry = self.entries[name]
        begin, end = entry["data_offsets"]
        self.f.seek(self.start + begin)
        data = bytearray(self.f.read(end - begin))
        if len(data) != end - begin:
            raise ValueError(f"'{name}' is cut short")
        dtype = _FROM_NAME[entry["dtype"]]
        return torch.frombuffer(data, dtype=dtype).reshape(entry["shape"]) if data else \
            torch.empty(entry["shape"], dtype=dtype)


def verify_safetensors(path: str | Path) -> dict[str, str]:
    """Re-read a file ``write_safetensors`` wrote, one tensor at a time, and check its checksum; its metadata."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
            meta = header.pop("__metadata__", {})
            tensors = _FromFile(f, 8 + n, header)
            actual = state_digest({"tensors": tensors, "metadata": {k: v for k, v in meta.items()
                                                                    if k != CHECKSUM_KEY}})
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} does not read back as the safetensors file just written ({e})") from None
    if meta.get(CHECKSUM_KEY) != actual:
        raise CheckpointError(f"{path} fails its checksum right after writing: the disk did not keep what was "
                              "written")
    return meta
