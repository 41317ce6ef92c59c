"""Checkpoints that never lose work: atomic writes, retention, best, resuming, and finding the newest valid file.

A checkpoint is a dict of tensors and Python primitives (no pickled objects), so it
loads with ``torch.load(..., weights_only=True)``; it is written through ``jepa.io``,
so a process killed at any instant leaves the previous file intact.
"""
from __future__ import annotations

import logging
import math
import os
import pickle
import re
import shlex
import sys
import warnings
from pathlib import Path

import torch

from jepa import distributed as jdist
from jepa.io import atomic_link, atomic_save

log = logging.getLogger("jepa")


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


def rng_state(device: torch.device) -> dict:
    """The global torch RNG state (and the device's, on CUDA) as tensors, for a checkpoint."""
    rng = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def restore_rng(rng: dict, device: torch.device):
    torch.set_rng_state(rng["torch"])
    if device.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"], device)


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


class Checkpointer:
    """A run's checkpoints: step files, the newest ``keep_last`` of them, ``best.pt``, and resuming.

    Rank 0 writes; every rank takes part in a save (FSDP gathers collectively) and in resuming.
    Lower metrics are better (the epoch loss, or minus the k-NN accuracy). ``kind`` tells pre-training
    checkpoints from fine-tuning ones (``state["kind"]``, absent for pre-training), so neither resumes the
    other; ``command`` is the command line that continues the run (default: ``python -m jepa.train``).
    """

    def __init__(self, run_dir: str | Path, keep_last: int, dist, kind: str = "pretrain",
                 command: list[str] | None = None):
        self.run_dir = Path(run_dir)
        self.keep_last = keep_last
        self.dist = dist
        self.kind, self.command = kind, command
        self.best_metric = math.inf
        self.saved_step: int | None = None  # the step this process wrote last: saving it again is a no-op

    def save(self, step: int, state_dict, metric: float | None = None, collective: bool = False) -> Path:
        """Atomically write step ``step``'s checkpoint (``state_dict()`` is called only when needed), prune, link best.

        ``collective``: every rank must call ``state_dict()`` (FSDP gathers the shards).
        """
        path = checkpoint_path(self.run_dir, step)
        is_best = metric is not None and metric < self.best_metric
        if is_best:
            self.best_metric = metric
        state = state_dict() if collective else None
        if self.dist.is_main:
            if not (self.saved_step == step and path.is_file()):
                atomic_save(state if state is not None else state_dict(), path)
                self.saved_step = step
            if is_best:
                atomic_link(path, path.parent / BEST_NAME)
            prune(self.run_dir, self.keep_last)
        jdist.barrier(self.dist)
        return path

    def restore(self, resume: str | None, config: dict, data_stream: dict) -> dict | None:
        """The state to continue from: ``resume`` is a file, ``auto`` (the newest valid checkpoint) or None.

        Without ``resume`` a run dir that already holds checkpoints is refused, so a repeated command never
        overwrites or prunes another run's checkpoints. Checkpoints newer than the one resumed are set aside.
        """
        if not resume:
            existing = list_checkpoints(self.run_dir)
            if existing:
                raise CheckpointError(f"{self.run_dir} already holds checkpoints (newest: {existing[0].name}); "
                                      "continue that run with --resume auto, or give a new run another --run-dir")
            return None
        if resume == "auto":
            path, state = find_latest_valid(self.run_dir, warn=log.warning) if self.dist.is_main else (None, None)
            path = jdist.broadcast_object(path, self.dist)  # every rank resumes from the file rank 0 chose
            if path is None:
                log.info("--resume auto: no valid checkpoint in %s, starting fresh", self.run_dir / "checkpoints")
                self._set_aside_newer(0)
                return None
            if state is None:
                state = load_checkpoint(path)
        else:
            path, state = Path(resume), load_checkpoint(resume)
        self._check_compatible(path, state, config, data_stream)
        self.best_metric = state.get("best_metric", math.inf)
        jdist.barrier(self.dist)  # every rank has read the file before rank 0 moves newer ones
        self._set_aside_newer(state["step"])
        if self.dist.is_main:
            log.info("resumed from %s at step %d (epoch %d, batch %d)", path, state["step"], state["epoch"],
                     state["batch_in_epoch"])
        return state

    def _check_compatible(self, path: Path, state: dict, config: dict, data_stream: dict):
        """Refuse another kind of run, model or mask setting; warn when the data stream or schedule differ."""
        kind = state.get("kind", "pretrain")
        if kind != self.kind:
            tool = "jepa.finetune" if kind == "finetune" else "jepa.train"
            raise CheckpointError(f"{path} is a {kind} checkpoint, not a {self.kind} one: continue it with "
                                  f"python -m {tool}")
        saved = state["config"]
        for key in ("model", "masks"):
            if saved.get(key) != config[key]:
                changed = sorted(k for k in config[key] if saved.get(key, {}).get(k) != config[key][k])
                raise CheckpointError(f"{path} was written with a different '{key}' config section "
                                      f"({', '.join(f'{key}.{k}' for k in changed)}); resume with the run's own "
                                      f"config ({self.run_dir / 'config.yaml'})")
        stream = state.get("data_stream", {})
        changed = [f"{k} {stream[k]} -> {v}" for k, v in data_stream.items() if k in stream and stream[k] != v]
        if changed and self.dist.is_main:
            log.warning("resuming %s with a different data stream or schedule (%s): training continues, but not "
                        "as the uninterrupted run would", path, ", ".join(changed))

    def _set_aside_newer(self, step: int):
        if self.dist.is_main:
            moved = set_aside_newer(self.run_dir, step)
            if moved:
                log.warning("moved %d checkpoint(s) newer than step %d out of the way (kept, not deleted): %s",
                            len(moved), step, ", ".join(str(p) for p in moved))

    def resume_command(self, stop_at_step: int | None) -> str:
        """The command line that continues this run (past ``training.stop_at_step`` when one is set)."""
        cmd = ["python", "-m", "jepa.train", "--config", str(self.run_dir / "config.yaml"), "--run-dir",
               str(self.run_dir)] if self.command is None else list(self.command)
        cmd += ["--resume", "auto"]
        if stop_at_step is not None:
            cmd += ["--training.stop_at_step", "null"]
        return shlex.join(cmd)

    def tell_how_to_resume(self, why: str, path: Path, step: int, total_steps: int, stop_at_step: int | None):
        if self.dist.is_main:
            print(f"\n{why} after step {step}/{total_steps}; checkpoint {path} written. Resume with:\n"
                  f"  {self.resume_command(stop_at_step)}", file=sys.stderr)
