"""Where this process sits in a multi-process run, read from torchrun's variables or from SLURM's under ``srun``.

``srun python -m jepa.train ...`` (one task per GPU) needs no launcher: SLURM names every task's rank
(``SLURM_PROCID``), the number of tasks, the task's index on its node and the hosts of the step, and the
first host serves the rendezvous on a port derived from the job id. A process SLURM did not start with
``srun`` (the batch script itself, an ``salloc`` shell) is a plain single process. Pure functions of the
environment, no torch: tests feed them recorded environments.
"""
from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass

from jepa.errors import UserError

PORT_BASE, PORT_SPAN = 20000, 10000  # below Linux's ephemeral ports (32768+), above the registered services' crowd
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


class LaunchError(UserError):
    """The launcher's environment (torchrun's or SLURM's variables, the visible GPUs) does not describe a valid run."""


@dataclass(frozen=True)
class ProcessLayout:
    """This process's place in the run; ``master_addr``/``master_port`` only where this module chose the rendezvous."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device_index: int | None = None  # the CUDA device to use when it is not local_rank (one GPU bound per task)
    master_addr: str | None = None
    master_port: int | None = None
    source: str = "single"  # single | torchrun | slurm


def process_layout(env: Mapping[str, str], visible_gpus: int | None = None) -> ProcessLayout:
    """torchrun's variables if any is set, else SLURM's for an ``srun`` task, else a single process.

    ``visible_gpus`` is the CUDA device count of a CUDA run (None otherwise): SLURM's tasks per node must match it.
    """
    if any(name in env for name in TORCHRUN_VARS):
        return ProcessLayout(_int(env, "RANK", 0), _int(env, "WORLD_SIZE", 1), _int(env, "LOCAL_RANK", 0),
                             source="torchrun")
    if not is_srun_task(env):
        return ProcessLayout()
    return slurm_layout(env, visible_gpus)


def is_srun_task(env: Mapping[str, str]) -> bool:
    """True in a task ``srun`` started: SLURM sets a step id there, not in the batch script or an ``salloc`` shell."""
    return "SLURM_PROCID" in env and ("SLURM_STEP_ID" in env or "SLURM_STEPID" in env)


def unused_slurm_tasks(env: Mapping[str, str]) -> int:
    """Tasks SLURM allocated that this lone process leaves idle (started without srun); 0 when none."""
    if is_srun_task(env) or any(name in env for name in TORCHRUN_VARS) or "SLURM_NTASKS" not in env:
        return 0
    return max(0, _int(env, "SLURM_NTASKS", 1) - 1)


def launcher_rank(env: Mapping[str, str]) -> int:
    """This process's global rank by the launcher's variables (0 for a single process), before any group exists."""
    if "RANK" in env:
        return _int(env, "RANK", 0)
    return _int(env, "SLURM_PROCID", 0) if is_srun_task(env) else 0


def slurm_layout(env: Mapping[str, str], visible_gpus: int | None) -> ProcessLayout:
    """The layout of an ``srun`` task; a ``LaunchError`` naming the variables where they disagree."""
    world_var = "SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in env else "SLURM_NTASKS"
    world = _int(env, world_var, 1)
    if world <= 1:
        return ProcessLayout()
    rank, local = _int(env, "SLURM_PROCID", 0), _int(env, "SLURM_LOCALID", 0)
    if not 0 <= rank < world:
        raise LaunchError(f"SLURM_PROCID={rank} is not a rank of the {world} tasks {world_var} names")
    hosts = expand_hostlist(_first(env, "SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST") or "")
    here = tasks_on_this_node(env, world, world_var, len(hosts))
    if not 0 <= local < here:
        raise LaunchError(f"SLURM_LOCALID={local} but this node runs {here} tasks")
    device = check_gpus(here, local, visible_gpus, env)
    addr = env.get("MASTER_ADDR") or (hosts[0] if hosts else None)
    if not addr:
        raise LaunchError("SLURM names no node of this job (SLURM_JOB_NODELIST is empty) and MASTER_ADDR is not set")
    port = _int(env, "MASTER_PORT", 0) or port_for_job(_first(env, "SLURM_JOB_ID", "SLURM_JOBID") or "0")
    return ProcessLayout(rank, world, local, device, addr, port, source="slurm")


def tasks_on_this_node(env: Mapping[str, str], world: int, world_var: str, n_hosts: int) -> int:
    """Tasks SLURM runs on this task's node, checked against the total and the node list."""
    spec_var = _first_name(env, "SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE")
    if spec_var is None:
        per_node = _int(env, "SLURM_NTASKS_PER_NODE", 0)
        if per_node <= 0:
            raise LaunchError(f"SLURM sets {world_var}={world} but not how many tasks run on each node "
                              "(SLURM_TASKS_PER_NODE or SLURM_NTASKS_PER_NODE)")
        return per_node
    counts = expand_tasks_per_node(env[spec_var], spec_var)
    if sum(counts) != world:
        raise LaunchError(f"{spec_var}={env[spec_var]} adds up to {sum(counts)} tasks but {world_var}={world}")
    if n_hosts and len(counts) != n_hosts:
        raise LaunchError(f"{spec_var}={env[spec_var]} describes {len(counts)} nodes but the node list has {n_hosts}")
    node = _int(env, "SLURM_NODEID", 0)
    if not 0 <= node < len(counts):
        raise LaunchError(f"SLURM_NODEID={node} is not one of the {len(counts)} nodes {spec_var} describes")
    return counts[node]


def check_gpus(tasks_here: int, local: int, visible_gpus: int | None, env: Mapping[str, str]) -> int | None:
    """The CUDA device of this task: its local rank with one GPU per task visible, or 0 with one GPU bound to it."""
    if visible_gpus is None or visible_gpus == tasks_here:
        return None
    if visible_gpus == 1:
        return 0
    shown = env.get("CUDA_VISIBLE_DEVICES")
    raise LaunchError(f"SLURM runs {tasks_here} tasks on this node but each sees {visible_gpus} GPUs"
                      + (f" (CUDA_VISIBLE_DEVICES={shown})" if shown is not None else "")
                      + "; run one task per GPU: --ntasks-per-node equal to --gpus-per-node (or --gpus-per-task=1)")


def port_for_job(job_id: str) -> int:
    """A rendezvous port every task of a job derives alike, and different jobs sharing a node mostly do not."""
    digits = re.sub(r"\D", "", job_id)
    return PORT_BASE + (int(digits) if digits else 0) % PORT_SPAN


# ---------------------------------------------------------------- SLURM's compressed lists


def expand_hostlist(text: str) -> list[str]:
    """``gpu[01-03,07]`` -> gpu01 gpu02 gpu03 gpu07; ``a[1-2]-b,c``, ``n1,n2``, several bracket groups in one name."""
    hosts = []
    for item in _split_top_level(text.strip(), text):
        parts = re.split(r"(\[[^\]]*\])", item)
        if any("[" in p or "]" in p for p in parts if not (p.startswith("[") and p.endswith("]"))):
            raise LaunchError(f"cannot read the SLURM node list {text!r}: unbalanced brackets in {item!r}")
        choices = [_expand_ranges(p[1:-1], text) if p.startswith("[") else [p] for p in parts]
        hosts += ["".join(combo) for combo in itertools.product(*choices)]
    return hosts


def _split_top_level(text: str, whole: str) -> list[str]:
    """``text`` cut at the commas outside brackets."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += (ch == "[") - (ch == "]")
        if depth not in (0, 1):
            raise LaunchError(f"cannot read the SLURM node list {whole!r}: unbalanced brackets")
        if ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    if depth:
        raise LaunchError(f"cannot read the SLURM node list {whole!r}: unbalanced brackets")
    items.append(text[start:])
    return [item for item in items if item]


def _expand_ranges(spec: str, whole: str) -> list[str]:
    """``01-03,07`` -> 01 02 03 07, keeping the zero padding of each range's first number."""
    out = []
    for piece in spec.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", piece.strip())
        if m is None or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise LaunchError(f"cannot read the SLURM node list {whole!r}: {piece!r} is not a number or a range lo-hi")
        lo, hi, width = int(m.group(1)), int(m.group(2) or m.group(1)), len(m.group(1))
        out += [str(n).zfill(width) for n in range(lo, hi + 1)]
    return out


def expand_tasks_per_node(spec: str, name: str = "SLURM_TASKS_PER_NODE") -> list[int]:
    """``8(x2),4`` -> [8, 8, 4]: tasks on each node of the step, in node order."""
    counts = []
    for piece in spec.split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", piece.strip())
        if m is None:
            raise LaunchError(f"cannot read {name}={spec!r}: expected counts like 8(x2),4")
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    return counts


def _first_name(env: Mapping[str, str], *names: str) -> str | None:
    return next((n for n in names if env.get(n)), None)


def _first(env: Mapping[str, str], *names: str) -> str | None:
    name = _first_name(env, *names)
    return env[name] if name else None


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise LaunchError(f"{name}={value!r} is not a whole number") from None
