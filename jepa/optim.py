"""The optimizer side of a step: AdamW with weight decay on weights only, layer-wise LR decay, schedule values,
clipping, fp16 scaling."""
from __future__ import annotations

import torch

from jepa.distributed import any_rank
from jepa.errors import NonFiniteError


def build_optimizer(model, optim_cfg) -> torch.optim.AdamW:
    """AdamW over the online parameters in two groups: weights decay, biases and norms (all 1-D) do not."""
    decay, no_decay = [], []
    for p in model.online_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "apply_wd": True, "weight_decay": optim_cfg.weight_decay},
              {"params": no_decay, "apply_wd": False, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=optim_cfg.lr, betas=tuple(optim_cfg.betas), eps=optim_cfg.eps)


def layer_decay_groups(named_params, layer_of, num_layers: int, weight_decay: float, decay: float) -> list[dict]:
    """Parameter groups for layer-wise learning-rate decay: a parameter of layer ``layer_of(name)`` (0 = input,
    ``num_layers`` = output) gets ``lr_scale = decay ** (num_layers - layer)``; weights decay, 1-D parameters not."""
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in named_params:
        if not p.requires_grad:
            continue
        layer, wd = layer_of(name), p.ndim > 1
        group = groups.setdefault((layer, wd), {"params": [], "lr_scale": decay ** (num_layers - layer),
                                                "apply_wd": wd, "weight_decay": weight_decay if wd else 0.0})
        group["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def set_schedule(optimizer: torch.optim.Optimizer, lr: float, wd: float):
    """This step's learning rate (times a group's ``lr_scale``, if any) for every group, weight decay for the
    groups that decay."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"] if "lr_scale" in group else lr
        if group["apply_wd"]:
            group["weight_decay"] = wd


def optimizer_step(optimizer, scaler: torch.amp.GradScaler, params: list, clip: float) -> torch.Tensor:
    """The update from the accumulated gradients: clip → step → zero the grads; returns the gradient norm.

    Unscales first (fp16), clips the norm to ``clip`` (0: no clipping), steps through the scaler when it is on.
    The norm is a device tensor (no host sync); with the fp16 scaler a non-finite norm means the scaler skipped
    the step.
    """
    if clip > 0 or scaler.is_enabled():
        scaler.unscale_(optimizer)
    if clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, clip)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    if scaler.is_enabled():
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


def state_finite(optimizer: torch.optim.Optimizer) -> bool:
    """Whether every tensor of the optimizer's state (Adam's moments) is finite; one host sync."""
    tensors = [t.to_local() if hasattr(t, "to_local") else t
               for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.is_floating_point()]
    return not tensors or bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


class FiniteGuard:
    """Notes a non-finite loss or gradient norm on the device each step; ``check`` (one sync, at log steps and
    before every save) also reads the optimizer state and stops the run on any of them."""

    def __init__(self, device):
        self.flags = torch.zeros(2, dtype=torch.bool, device=device)  # loss, gradients

    def observe(self, loss: torch.Tensor, grad_norm: torch.Tensor):
        if hasattr(grad_norm, "to_local"):  # FSDP: this rank's part; ``check`` combines the ranks
            grad_norm = grad_norm.to_local()
        self.flags |= ~torch.isfinite(torch.stack([loss.float(), grad_norm.float().to(loss.device)]))

    def check(self, optimizer, step: int, dist, checkpoint_dir):
        loss, grads = self.flags.tolist()
        bad = [what for what, flag in (("the loss", loss), ("the gradients", grads),
                                       ("the optimizer state", not state_finite(optimizer))) if any_rank(flag, dist)]
        if bad:
            raise NonFiniteError(f"{' and '.join(bad)} became NaN/inf at or before step {step}; stopping without "
                                 f"writing a checkpoint (the last good one in {checkpoint_dir} is kept)")
