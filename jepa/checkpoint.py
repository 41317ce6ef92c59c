"""Checkpoints that never lose work: atomic writes, retention, and finding the newest valid file.

A checkpoint is a dict of tensors and Python primitives (no pickled objects), so it
loads with ``torch.load(..., weights_only=True)``. Every write goes to a temp file in
the target's directory, is flushed and fsynced, then renamed over the target: a
process killed at any instant leaves the previous file intact.
"""
from __future__ import annotations

import os
import pickle
import re
import warnings
from pathlib import Path

import torch


FORMAT = "jepa-checkpoint-v1"
ENCODER_FORMAT = "jepa-encoder-v1"
REQUIRED_KEYS = ("model", "optimizer", "step", "epoch", "batch_in_epoch", "config")
BEST_NAME = "best.pt"
SUPERSEDED_DIR = "superseded"
_NAME = re.compile(r"^ckpt_step(\d+)\.pt$")
_TEMP = re.compile(r"^\.(ckpt_step\d+\.pt|best\.pt)\..+\.tmp$")  # our own temp files only


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, corrupt, truncated or not ours."""


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def _unpickler_reason(e: Exception) -> str:
    """The useful line of torch's long weights-only error (e.g. 'Unsupported global: GLOBAL mod.Class')."""
    text = str(e)
    tail = text.split("WeightsUnpickler error:", 1)[-1]
    for line in tail.strip().splitlines():
        if line.strip():
            return line.strip().split(" was not an allowed global")[0][:200]
    return _first_line(e)


def load_file(path: str | Path, map_location="cpu"):
    """``torch.load(weights_only=True)``; any failure becomes a CheckpointError naming the file and the cause."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file (expected a .pt checkpoint)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pickle-protocol notes on foreign files; the error says enough
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        reason = _unpickler_reason(e) if isinstance(e, pickle.UnpicklingError) else _first_line(e)
        if "Unsupported global" in reason:
            raise CheckpointError(
                f"cannot read checkpoint {path}: torch.load(weights_only=True) refused it because it holds pickled "
                f"Python objects, so it is not a jepa checkpoint ({reason})") from None
        raise CheckpointError(f"cannot read checkpoint {path}: the file is corrupt or truncated "
                              f"({path.stat().st_size} bytes; {reason})") from None


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a training checkpoint with ``weights_only=True``; any problem is a CheckpointError naming the file."""
    path = Path(path)
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
    return state


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"ckpt_step{step:08d}.pt"


def checkpoint_step(path: str | Path) -> int | None:
    m = _NAME.match(Path(path).name)
    return int(m.group(1)) if m else None


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
            warn(f"skipping unusable checkpoint {path}: {e}")
    return None, None


def set_aside_newer(run_dir: str | Path, step: int) -> list[Path]:
    """Move step checkpoints newer than ``step`` into ``checkpoints/superseded/`` (kept, never deleted).

    After resuming from step ``step`` they belong to an abandoned continuation (or are
    broken); left in place they would be pruned wrongly or picked by ``--resume auto``.
    """
    moved = []
    for path in list_checkpoints(run_dir):
        if checkpoint_step(path) > step:
            dest = path.parent / SUPERSEDED_DIR / path.name
            dest.parent.mkdir(exist_ok=True)
            if dest.exists():
                dest = dest.with_name(f"{path.stem}.{os.getpid()}{path.suffix}")
            os.replace(path, dest)
            moved.append(dest)
    return moved


def prune(run_dir: str | Path, keep_last: int):
    """Delete all but the newest ``keep_last`` step checkpoints and stale temp files.

    ``best.pt`` is a separate file (a hard link), so pruning never removes the best checkpoint.
    """
    folder = Path(run_dir) / "checkpoints"
    for path in list_checkpoints(run_dir)[keep_last:]:
        path.unlink(missing_ok=True)
    if folder.is_dir():
        for path in folder.iterdir():
            if _TEMP.match(path.name) and path.is_file():
                path.unlink(missing_ok=True)
