"""Checkpoints that never lose work: atomic writes, retention, best, resuming, and finding the newest valid file.

A checkpoint is a dict of tensors and Python primitives (no pickled objects), so it
loads with ``torch.load(..., weights_only=True)``; it is written through ``jepa.io``,
so a process killed at any instant leaves the previous file intact.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import pickle
import pickletools
import re
import shlex
import sys
import warnings
from pathlib import Path
from typing import Literal

import torch

from jepa import distributed as jdist
from jepa.errors import OutputExistsError, UserError
from jepa.io import atomic_link, atomic_save, is_safetensors

log = logging.getLogger("jepa")


BestMetric = Literal["loss", "knn"]  # what best.pt is chosen by: lowest epoch loss, or highest k-NN top-1
FORMAT = "jepa-checkpoint-v1"
ENCODER_FORMAT = "jepa-encoder-v1"
REQUIRED_KEYS = ("model", "optimizer", "step", "epoch", "batch_in_epoch", "config")
RESUME_IGNORES = ("init_from",)  # model.init_from only matters when a run starts, so a resume may differ in it
BEST_NAME = "best.pt"
SUPERSEDED_DIR = "superseded"
_NAME = re.compile(r"^ckpt_step(\d+)\.pt$")
_TEMP = re.compile(r"^\.(ckpt_step\d+\.pt|best\.pt)\..+\.tmp$")  # our own temp files only


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
                atomic_save(with_checksum(state if state is not None else state_dict()), path)
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
