"""The optimizer side of a step: AdamW with weight decay on weights only, schedule values, clipping, fp16 scaling."""
from __future__ import annotations

import torch


def build_optimizer(model, optim_cfg) -> torch.optim.AdamW:
    """AdamW over the online parameters in two groups: weights decay, biases and norms (all 1-D) do not."""
    decay, no_decay = [], []
    for p in model.online_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "apply_wd": True, "weight_decay": optim_cfg.weight_decay},
              {"params": no_decay, "apply_wd": False, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=optim_cfg.lr, betas=tuple(optim_cfg.betas), eps=optim_cfg.eps)


def set_schedule(optimizer: torch.optim.Optimizer, lr: float, wd: float):
    """This step's learning rate for every group and weight decay for the groups that decay."""
    for group in optimizer.param_groups:
        group["lr"] = lr
        if group["apply_wd"]:
            group["weight_decay"] = wd


def clip_and_step(optimizer, scaler: torch.amp.GradScaler, params: list, clip: float) -> torch.Tensor | None:
    """Unscale, clip the gradient norm to ``clip`` (0: no clipping), step, zero the grads.

    With the fp16 scaler returns whether the gradients were finite (a device tensor; the scaler skips
    the step when they are not), else None. No host sync.
    """
    if clip > 0 or scaler.is_enabled():
        scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(params, clip) if clip > 0 else None
    finite = None
    if scaler.is_enabled():
        if norm is None:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        finite = torch.isfinite(norm)
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return finite
