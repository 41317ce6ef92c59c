"""One checkpoint file, intact or refused: checksummed atomic saves, safe loading, and errors that say what is wrong.

A checkpoint is a dict of tensors and Python primitives (no pickled objects), so it
loads with ``torch.load(..., weights_only=True)``; it is written through ``jepa.io``,
so a process killed at any instant leaves the previous file intact. A file holding
pickled Python objects is refused, naming what it would have imported.
"""
from __future__ import annotations

import hashlib
import pickle
import pickletools
import re
import warnings
from pathlib import Path

import torch

from jepa.errors import UserError
from jepa.io import atomic_save, is_safetensors

FORMAT = "jepa-checkpoint-v1"
ENCODER_FORMAT = "jepa-encoder-v1"
REQUIRED_KEYS = ("model", "optimizer", "step", "epoch", "batch_in_epoch", "config")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file is missing, corrupt, truncated or not ours."""


class IncompatibleCheckpointError(CheckpointError):
    """A valid checkpoint written for another model or mask setting: resuming from any file of the run would fail."""


CHECKSUM_KEY = "checksum"


def state_digest(state: dict) -> str:
    """SHA-256 of everything in ``state`` but its checksum: tensors by dtype, shape and bytes, the rest by repr."""
    h = hashlib.sha256()
    _digest_into(h, {k: v for k, v in state.items() if k != CHECKSUM_KEY})
    return "sha256:" + h.hexdigest()


def _digest_into(h, obj):
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        h.update(b"{")
        for key in sorted(obj, key=repr):
            h.update(repr(key).encode() + b":")
            _digest_into(h, obj[key])
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[")
        for item in obj:
            _digest_into(h, item)
        h.update(b"]")
    else:
        h.update(f"{type(obj).__name__}:{obj!r},".encode())


def with_checksum(state: dict) -> dict:
    """``state`` plus the checksum its reader verifies."""
    return {**state, CHECKSUM_KEY: state_digest(state)}


def save_checkpoint(state: dict, path: Path) -> None:
    """Write ``state`` with its checksum to ``path`` atomically: a crash leaves the previous file whole."""
    atomic_save(with_checksum(state), path)


def verify_checksum(state, path: Path):
    """A CheckpointError if ``state`` carries a checksum that its content no longer matches (files from before
    checksums carry none and are read as they are)."""
    if isinstance(state, dict) and CHECKSUM_KEY in state:
        stored, actual = state[CHECKSUM_KEY], state_digest(state)
        if stored != actual:
            raise CheckpointError(f"{path} fails its checksum: the file was changed or damaged after it was written "
                                  f"(stored {str(stored)[:23]}..., content {actual[:23]}...)")


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


_GLOBAL = re.compile(r"unsupported global:?\s+(?:GLOBAL\s+)?([\w.]+)", re.IGNORECASE)
_CODE_OPS = {"GLOBAL", "STACK_GLOBAL", "REDUCE", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "BUILD"}


def _pickled_object(path: Path, error: Exception) -> str | None:
    """What shows that ``path`` holds pickled Python objects (a class or function to import), or None.

    A raw stream counts only if it parses whole, up to its STOP: garbage bytes often begin like opcodes."""
    found = _GLOBAL.search(str(error))
    if found:
        return f"GLOBAL {found.group(1)}"
    code = None
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 26)
        for op, arg, _ in pickletools.genops(data):
            if code is None and op.name in _CODE_OPS:
                code = f"pickle opcode {op.name}{f' {arg}' if arg else ''}"
    except Exception:  # not a whole pickle stream: nothing to show
        return None
    return code


def _unpickler_reason(e: Exception) -> str:
    """The useful line of torch's long weights-only error (e.g. 'Unsupported global: GLOBAL mod.Class')."""
    text = str(e)
    tail = text.split("WeightsUnpickler error:", 1)[-1]
    for line in tail.strip().splitlines():
        if line.strip():
            return line.strip().split(" was not an allowed global")[0][:200]
    return _first_line(e)


def load_file(path: str | Path, map_location="cpu", mmap: bool = False):
    """``torch.load(weights_only=True)``; any failure becomes a CheckpointError naming the file and the cause.

    ``mmap``: map the file instead of reading it (a large foreign checkpoint of which only part is used);
    files in the old non-zip format cannot be mapped and are read whole.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file (expected a .pt checkpoint)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pickle-protocol notes on foreign files; the error says enough
            if mmap:
                try:
                    return torch.load(path, map_location=map_location, weights_only=True, mmap=True)
                except pickle.UnpicklingError:
                    raise
                except Exception:
                    pass  # not mappable (old format, or broken: then the plain load says why)
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        reason = _unpickler_reason(e) if isinstance(e, pickle.UnpicklingError) else _first_line(e)
        code = _pickled_object(path, e)
        if code:
            raise CheckpointError(f"{path} holds pickled Python objects: refused (a jepa checkpoint holds only "
                                  f"tensors and plain values; found {code})") from None
        raise CheckpointError(f"cannot read checkpoint {path}: the file is corrupt or truncated "
                              f"({path.stat().st_size} bytes; {reason})") from None


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a training checkpoint with ``weights_only=True``; any problem is a CheckpointError naming the file."""
    path = Path(path)
    if is_safetensors(path):
        raise CheckpointError(f"{path} is a safetensors file (an encoder export or foreign weights), not a training "
                              "checkpoint: it holds no optimizer and cannot be resumed; start a run from it with "
                              "model.init_from")
    return check_checkpoint(load_file(path, map_location), path)


def check_checkpoint(state, path: Path) -> dict:
    """``state`` (what ``load_file(path)`` returned) if it is a complete training checkpoint, else a CheckpointError."""
    if isinstance(state, dict) and state.get("format") == ENCODER_FORMAT:
        raise CheckpointError(f"{path} is an exported encoder (python -m jepa.export), not a training "
                              "checkpoint: it holds no optimizer or predictor and cannot be resumed")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        keys = sorted(map(str, state))[:6] if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path} is not a jepa checkpoint (expected format '{FORMAT}', found {keys})")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path} is an incomplete jepa checkpoint: missing {', '.join(missing)}")
    verify_checksum(state, path)
    problems = [f"'{k}' is {type(state[k]).__name__} {state[k]!r}, not a count >= 0" for k in ("step", "epoch",
                "batch_in_epoch") if type(state[k]) is not int or state[k] < 0]
    problems += [f"'{k}' is {type(state[k]).__name__}, not a mapping" for k in ("model", "optimizer", "config")
                 if not isinstance(state[k], dict)]
    if isinstance(state["model"], dict):
        problems += [f"'model.{k}' is {type(v).__name__}, not a tensor" for k, v in state["model"].items()
                     if not isinstance(v, torch.Tensor)][:3]
    if problems:
        raise CheckpointError(f"{path} is not a valid jepa checkpoint: {'; '.join(problems)}")
    return state
