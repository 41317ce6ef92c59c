"""Multi-process training under torchrun or srun: process group, DDP/FSDP wrapping, reductions, full checkpoints.

A plain ``python -m jepa.train`` is world size 1 and every helper here is then a no-op.
Who this process is comes from torchrun's variables or, without them, SLURM's (``jepa.slurm``).
Only the online modules (context encoder, predictor, level heads) get gradients; the
target encoder is never wrapped by DDP and is updated by EMA from the unwrapped (or,
under FSDP, the identically sharded) online parameters on every rank.
"""
from __future__ import annotations

import contextlib
import logging
import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from jepa.errors import ConfigError
from jepa.slurm import ProcessLayout, process_layout, unused_slurm_tasks

_CPU_GROUPS: dict[int, object] = {}


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    cpu_group: object = None  # gloo group for host-side flags when the main backend is NCCL; None: default group
    device_index: int | None = None  # the CUDA device when not local_rank (SLURM bound one GPU to each task)

    @property
    def cuda_index(self) -> int:
        return self.local_rank if self.device_index is None else self.device_index

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0




def init_distributed(backend: str = "auto", device_type: str = "cpu") -> DistInfo:
    """Join the process group torchrun or srun describes in the environment; a plain run is world size 1.

    ``auto`` is NCCL for CUDA and gloo otherwise. Under NCCL a second, gloo group carries the
    per-step stop flag so that agreeing on it never waits for the GPU.
    """
    layout = this_process(device_type)
    if layout.world_size <= 1:
        return DistInfo()
    if backend == "auto":
        backend = "nccl" if device_type == "cuda" else "gloo"
    if backend == "nccl" and device_type != "cuda":
        raise ConfigError(f"distributed.backend=nccl needs CUDA but training.device resolved to {device_type}; "
                          "use distributed.backend: gloo (or auto) for CPU training")
    info = DistInfo(layout.rank, layout.world_size, layout.local_rank, device_index=layout.device_index)
    if device_type == "cuda":
        torch.cuda.set_device(info.cuda_index)
    if not dist.is_initialized():
        join_group(backend, layout)
    group_id = id(dist.group.WORLD)
    if group_id not in _CPU_GROUPS:
        _CPU_GROUPS[group_id] = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
    info.rank, info.world_size, info.cpu_group = dist.get_rank(), dist.get_world_size(), _CPU_GROUPS[group_id]
    return info


def this_process(device_type: str) -> ProcessLayout:
    """This process's layout; a SLURM batch script that runs the trainer without srun is told what it leaves idle."""
    idle = unused_slurm_tasks(os.environ)
    if idle:
        logging.getLogger("jepa").warning(
            f"SLURM allocated {idle + 1} tasks but this process was not started by srun: training in one process; "
            "start it with `srun python -m jepa.train ...` to use all of them")
    gpus = torch.cuda.device_count() if device_type == "cuda" else None
    return process_layout(os.environ, gpus)


def join_group(backend: str, layout: ProcessLayout):
    """torchrun's rendezvous from its variables; under srun a TCP store on the first node of the step."""
    if layout.master_addr is None:
        dist.init_process_group(backend=backend)
        return
    host = f"[{layout.master_addr}]" if ":" in layout.master_addr else layout.master_addr
    dist.init_process_group(backend=backend, init_method=f"tcp://{host}:{layout.master_port}",
                            rank=layout.rank, world_size=layout.world_size)


def all_reduce_mean(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= info.world_size
    return t


def mean_over_ranks(values: dict, info: DistInfo, device) -> dict[str, float]:
    """Mean over ranks of named scalars (0-d tensors or numbers): one collective and one host sync."""
    if not values:
        return {}
    keys = list(values)
    packed = torch.stack([v.detach().float().reshape(()).to(device) if torch.is_tensor(v)
                          else torch.tensor(float(v), device=device) for v in values.values()])
    packed = all_reduce_mean(packed, info)
    return dict(zip(keys, packed.tolist()))


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank if ``flag`` is true on any rank (used to stop all ranks at the same step)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=info.cpu_group)
    return bool(t.item())


def broadcast_object(obj, info: DistInfo):
    """Rank 0's ``obj`` (picklable) on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=info.cpu_group)
    return box[0]


def barrier(info: DistInfo):
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo):
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
        _CPU_GROUPS.clear()


# ---------------------------------------------------------------- wrapping


def wrap_model(model, strategy: str, info: DistInfo, device: torch.device):
    """What forward and backward go through: the model itself, a DDP wrapper, or the model with FSDP-sharded parts.

    Call before building the optimizer: FSDP replaces the parameters with sharded ones.
    """
    if not info.enabled:
        return model
    if strategy == "fsdp":
        shard_model(model)
        return model
    # buffers are fixed sin-cos tables: synced once at construction, not again before every forward
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None, forward_sync_buffers=False)


def shard_model(model):
    """``fully_shard`` every ViT block, then each encoder, the predictor and each level head.

    The target encoder is sharded exactly like the context encoder, so the EMA pairs local shards
    element for element and never gathers a full parameter. Each part is its own FSDP root.
    """
    from torch.distributed.fsdp import fully_shard
    # a level head's output is a view (F.linear on [R, K, D]); FSDP warns in case it is modified in place, which
    # the loss never does
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(FSDPLinear\) returned a view tensor")
    for part in (model.context_encoder, model.target_encoder, model.predictor):
        for block in part.blocks:
            fully_shard(block)
        fully_shard(part)
    for head in model.level_heads:
        fully_shard(head)
    # an FSDP root keeps its own (non-block) parameters gathered after forward, expecting a backward;
    # the target encoder has none, so free them now or the next forward would read them stale after the EMA
    model.target_encoder.register_forward_hook(lambda module, args, output: module.reshard())


def is_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule
    return any(isinstance(m, FSDPModule) for m in model.modules())


@contextlib.contextmanager
def grad_sync(online, enabled: bool):
    """One micro-step's forward and backward; gradients are reduced across ranks only when ``enabled``."""
    if enabled:
        yield
        return
    if isinstance(online, DDP):
        with online.no_sync():
            yield
        return
    from torch.distributed.fsdp import FSDPModule
    sharded = [m for m in online.modules() if isinstance(m, FSDPModule)]
    for m in sharded:
        m.set_requires_gradient_sync(False, recurse=False)
    try:
        yield
    finally:
        for m in sharded:
            m.set_requires_gradient_sync(True, recurse=False)


def local_shard_pairs(targets: list, onlines: list) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """This rank's shards of paired parameters (the parameters themselves when not sharded), for an in-place EMA.

    Pairs whose shard is empty on this rank (a small tensor split over many ranks) are left out.
    """
    from torch.distributed.tensor import DTensor
    with torch.no_grad():
        local = [(t.to_local(), o.to_local()) if isinstance(t, DTensor) else (t, o) for t, o in zip(targets, onlines)]
    kept = [(t, o) for t, o in local if t.numel()]
    return [t for t, _ in kept], [o for _, o in kept]


# ---------------------------------------------------------------- full state for checkpoints


def _full_options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    return StateDictOptions(full_state_dict=True, **kw)


def model_shapes(model) -> dict[str, tuple[int, ...]]:
    """Name -> full (unsharded) shape of every entry of the model's state dict."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def model_state(model) -> dict:
    """Plain full tensors as in a single-process checkpoint; under FSDP a collective, complete on rank 0 only."""
    if not is_sharded(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    return get_model_state_dict(model, options=_full_options(cpu_offload=True))


def load_model_state(model, state: dict):
    if not is_sharded(model):
        model.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict
    set_model_state_dict(model, state, options=_full_options())


def _param_names(model, optimizer) -> list[str]:
    """Parameter names in the optimizer's order, the order of a plain ``optimizer.state_dict()``'s indices."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for g in optimizer.param_groups for p in g["params"]]


def optimizer_state(model, optimizer) -> dict:
    """``optimizer.state_dict()``'s layout (integer keys, full tensors) for any strategy; FSDP: as ``model_state``."""
    if not is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
    named = get_optimizer_state_dict(model, optimizer, options=_full_options(cpu_offload=True))
    if not named:
        return {}
    index = {n: i for i, n in enumerate(_param_names(model, optimizer))}
    return {"state": {index[n]: s for n, s in named["state"].items()},
            "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in named["param_groups"]]}


def load_optimizer_state(model, optimizer, state: dict):
    if not is_sharded(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict
    names = _param_names(model, optimizer)
    named = {"state": {names[i]: s for i, s in state["state"].items()},
             "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, named, options=_full_options())
