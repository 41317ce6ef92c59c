"""A run's checkpoints: step files, the newest ``keep_last`` of them, ``best.pt``, and resuming from the newest
valid one (checkpoints newer than the one resumed from are set aside, never deleted).
"""
from __future__ import annotations

import logging
import math
import os
import re
import shlex
import sys
from pathlib import Path

import torch

from jepa import distributed as jdist
from jepa.checkpoint.files import CheckpointError, IncompatibleCheckpointError, load_checkpoint, save_checkpoint
from jepa.errors import OutputExistsError
from jepa.io import atomic_link

log = logging.getLogger("jepa")


RESUME_IGNORES = ("init_from",)  # model.init_from only matters when a run starts, so a resume may differ in it
BEST_NAME = "best.pt"
SUPERSEDED_DIR = "superseded"
_NAME = re.compile(r"^ckpt_step(\d+)\.pt$")
_TEMP = re.compile(r"^\.(ckpt_step\d+\.pt|best\.pt)\..+\.tmp$")  # our own temp files only


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


def check_resumable(path: Path, state: dict, model_shapes: dict):
    """A CheckpointError unless ``state`` holds what resuming reads: weights of ``model_shapes``' names and shapes,
    an optimizer state, the RNG state and typed counters."""
    problems = []
    model = state["model"]
    missing = [k for k in model_shapes if k not in model]
    extra = [k for k in model if k not in model_shapes and not k.endswith("pos_embed")]  # a stored table may join
    wrong = [f"{k} {tuple(model[k].shape)} (the model has {tuple(s)})" for k, s in model_shapes.items()
             if k in model and tuple(model[k].shape) != tuple(s)]
    for what, names in (("missing weights", missing), ("unknown weights", extra), ("wrong shapes", wrong)):
        if names:
            problems.append(f"{what}: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}")
    opt = state["optimizer"]
    if not (isinstance(opt.get("state"), dict) and isinstance(opt.get("param_groups"), list)):
        problems.append("the optimizer entry has no 'state' and 'param_groups'")
    rng = state.get("rng")
    if not (isinstance(rng, dict) and isinstance(rng.get("torch"), torch.Tensor) and rng["torch"].dtype == torch.uint8):
        problems.append("no RNG state ('rng.torch', a uint8 tensor)")
    loss = state.get("epoch_loss", [0.0, 0])
    if not (isinstance(loss, list) and len(loss) == 2 and isinstance(loss[0], (int, float)) and type(loss[1]) is int):
        problems.append(f"'epoch_loss' is {loss!r}, not [sum, count]")
    for key, kind in (("best_metric", (int, float)), ("skipped_steps", int), ("scaler", dict), ("data_stream", dict)):
        if key in state and not isinstance(state[key], kind):
            problems.append(f"'{key}' is {type(state[key]).__name__}")
    if problems:
        raise CheckpointError(f"{path} cannot be resumed: {'; '.join(problems)}")


def is_training_checkpoint(path: Path) -> bool:
    """Whether ``path`` is named like a run's checkpoint (``ckpt_stepN.pt`` or ``best.pt`` in ``checkpoints/``)."""
    return bool(_NAME.match(path.name)) or (path.name == BEST_NAME and path.parent.name == "checkpoints")


def check_output(out: str | Path, inputs: list[str | Path], force: bool = False, allow_dir: bool = False) -> Path:
    """``out`` if writing it loses nothing: never an input file or a training checkpoint; another existing file
    (or directory, where ``allow_dir``) only with ``force``."""
    out = Path(out)
    if out.is_dir() and not allow_dir:
        raise OutputExistsError(f"--out {out} is a directory; give the path of a file")
    if not out.exists():
        return out
    for source in inputs:
        if Path(source).exists() and os.path.samefile(out, source):
            raise OutputExistsError(f"--out {out} is the input {source}; refusing to overwrite it (choose another path)")
    if is_training_checkpoint(out):
        raise OutputExistsError(f"--out {out} is a training checkpoint; refusing to overwrite it (choose another path)")
    if not force:
        raise OutputExistsError(f"--out {out} already exists; pass --force to replace it")
    return out


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


def find_latest_valid(run_dir: str | Path, map_location="cpu", warn=print, check=None):
    """The newest checkpoint that loads, passes its checksum and the schema (and ``check(path, state)``),
    skipping and naming the others; ``(None, None)`` if none. An IncompatibleCheckpointError stops the search."""
    for path in list_checkpoints(run_dir):
        try:
            state = load_checkpoint(path, map_location)
            if check is not None:
                check(path, state)
            return path, state
        except IncompatibleCheckpointError:
            raise
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
                save_checkpoint(state if state is not None else state_dict(), path)
                self.saved_step = step
            if is_best:
                atomic_link(path, path.parent / BEST_NAME)
            prune(self.run_dir, self.keep_last)
        jdist.barrier(self.dist)
        return path

    def restore(self, resume: str | None, config: dict, data_stream: dict, model_shapes: dict) -> dict | None:
        """The state to continue from: ``resume`` is a file, ``auto`` (the newest valid checkpoint) or None.

        Without ``resume`` a run dir that already holds checkpoints is refused, so a repeated command never
        overwrites or prunes another run's checkpoints. ``auto`` skips, naming them, checkpoints that fail their
        checksum or the schema (``model_shapes``: parameter name -> shape). Newer checkpoints are set aside.
        """
        if not resume:
            existing = list_checkpoints(self.run_dir)
            if existing:
                raise CheckpointError(f"{self.run_dir} already holds checkpoints (newest: {existing[0].name}); "
                                      "continue that run with --resume auto, or give a new run another --run-dir")
            return None

        def check(path, state):
            self._check_compatible(path, state, config)
            check_resumable(path, state, model_shapes)
        if resume == "auto":
            path, state = (find_latest_valid(self.run_dir, warn=log.warning, check=check) if self.dist.is_main
                           else (None, None))
            path = jdist.broadcast_object(path, self.dist)  # every rank resumes from the file rank 0 chose
            if path is None:
                log.info("--resume auto: no valid checkpoint in %s, starting fresh", self.run_dir / "checkpoints")
                self._set_aside_newer(0)
                return None
        else:
            path, state = Path(resume), None
        if state is None:
            state = load_checkpoint(path)
            check(path, state)
        self._warn_other_stream(path, state, data_stream)
        self.best_metric = state.get("best_metric", math.inf)
        jdist.barrier(self.dist)  # every rank has read the file before rank 0 moves newer ones
        self._set_aside_newer(state["step"])
        if self.dist.is_main:
            log.info("resumed from %s at step %d (epoch %d, batch %d)", path, state["step"], state["epoch"],
                     state["batch_in_epoch"])
        return state

    def _check_compatible(self, path: Path, state: dict, config: dict):
        """Refuse a checkpoint of another kind of run, model or mask setting (every file of the run would be refused
        too)."""
        kind = state.get("kind", "pretrain")
        if kind != self.kind:
            tool = "jepa.finetune" if kind == "finetune" else "jepa.train"
            raise IncompatibleCheckpointError(f"{path} is a {kind} checkpoint, not a {self.kind} one: continue it "
                                              f"with python -m {tool}")
        saved = state["config"]
        for key in ("model", "masks"):
            section = saved.get(key)
            changed = sorted(k for k in config[key] if k not in RESUME_IGNORES and (
                not isinstance(section, dict) or (k in section and section[k] != config[key][k])))
            if changed:
                raise IncompatibleCheckpointError(
                    f"{path} was written with a different '{key}' config section "
                    f"({', '.join(f'{key}.{k}' for k in changed)}); resume with the run's own config "
                    f"({self.run_dir / 'config.yaml'})")

    def _warn_other_stream(self, path: Path, state: dict, data_stream: dict):
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
