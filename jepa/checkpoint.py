"""Checkpoints that never lose work: atomic writes, retention, and finding the newest valid file."""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import torch

FORMAT = "jepa-checkpoint-v1"
_NAME = re.compile(r"^ckpt_step(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, corrupt, truncated or not ours."""


def atomic_save(obj, path: str | Path):
    """Write to a temp file in the same directory, flush + fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load with ``weights_only=True``; any failure becomes a CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint {path}: it is corrupt, truncated or not a jepa "
                              f"checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a jepa checkpoint (expected format '{FORMAT}')")
    return state


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"ckpt_step{step:08d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Step checkpoints of a run, newest first."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def find_latest_valid(run_dir: str | Path, map_location="cpu", warn=print):
    """The newest checkpoint that loads, skipping (and naming) broken ones; ``(None, None)`` if none."""
    for path in list_checkpoints(run_dir):
        try:
            return path, load_checkpoint(path, map_location)
        except CheckpointError as e:
            warn(f"skipping unusable checkpoint: {e}")
    return None, None


def prune(run_dir: str | Path, keep_last: int, protect: set[Path] = frozenset()):
    """Delete all but the newest ``keep_last`` step checkpoints (never one in ``protect``)."""
    for path in list_checkpoints(run_dir)[keep_last:]:
        if path not in protect:
            path.unlink(missing_ok=True)
