"""Per-step schedules (docs/algorithm.md#schedules): LR warmup + cosine, weight-decay ramp, linear EMA momentum."""
from __future__ import annotations

import math
from dataclasses import dataclass

from jepa.config.choices import WdSchedule


@dataclass(frozen=True)
class Schedules:
    """All schedule values as pure functions of the optimizer step, so resume needs only the step."""

    total_steps: int
    warmup_steps: int
    lr: float
    start_lr: float
    final_lr: float
    weight_decay: float
    final_weight_decay: float
    wd_shape: WdSchedule = "cosine"
    ema: tuple[float, float] = (0.996, 1.0)

    def lr_at(self, step: int) -> float:
        """Linear warmup ``start_lr → lr`` over ``warmup_steps``, then cosine to ``final_lr``."""
        if step < self.warmup_steps:
            return self.start_lr + (self.lr - self.start_lr) * step / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.final_lr + 0.5 * (self.lr - self.final_lr) * (1.0 + math.cos(math.pi * progress))

    def wd_at(self, step: int) -> float:
        """Weight decay ramp ``weight_decay → final_weight_decay`` (cosine by default, linear as in the paper text)."""
        progress = min(1.0, step / max(1, self.total_steps))
        if self.wd_shape == "linear":
            frac = progress
        else:
            frac = 0.5 * (1.0 - math.cos(math.pi * progress))
        return self.weight_decay + (self.final_weight_decay - self.weight_decay) * frac

    def momentum_at(self, step: int) -> float:
        """EMA momentum ``m_i = m0 + i·(m1 − m0)/total_steps``; the update after the last step uses exactly m1."""
        m0, m1 = self.ema
        return m0 + min(step, self.total_steps) * (m1 - m0) / self.total_steps


def build_schedules(optim_cfg, total_steps: int, steps_per_epoch: int) -> Schedules:
    return Schedules(
        total_steps=total_steps,
        warmup_steps=int(round(optim_cfg.warmup_epochs * steps_per_epoch)),
        lr=optim_cfg.lr,
        start_lr=optim_cfg.start_lr,
        final_lr=optim_cfg.final_lr,
        weight_decay=optim_cfg.weight_decay,
        final_weight_decay=optim_cfg.final_weight_decay,
        wd_shape=optim_cfg.wd_schedule,
        ema=tuple(optim_cfg.ema),
    )
