"""Where a run's numbers go: the progress line, TensorBoard scalars, mask statistics and images/s."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

import jepa_kernels
from jepa import distributed as jdist
from jepa.cpu import cpu_has_bf16_matmul
from jepa.progress import Progress

log = logging.getLogger("jepa")


def target_std(h: torch.Tensor) -> torch.Tensor:
    """Mean over dimensions of the batch std of the token-mean target embeddings: falls towards 0 on collapse."""
    return h.detach().float().mean(dim=1).std(dim=0).mean()


def rankme(z: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Effective rank of embeddings ``z [n, d]`` (RankMe, Garrido et al. 2023): the exponential of the entropy of
    the singular values normalised to sum 1; from 1 (one direction) to min(n, d) (all directions equally)."""
    s = torch.linalg.svdvals(z.detach().float())
    p = s / s.sum().clamp_min(1e-30) + eps
    return torch.exp(-(p * p.log()).sum())


class TrainLogger:
    """Every ``logging.log_every`` steps: means over ranks to the progress line and TensorBoard (rank 0).

    ``mask_stats`` (None: no masks, as in fine-tuning) adds the sampler's token counts; ``alarm`` (a
    ``jepa.monitor.CollapseMonitor``) checks ``rankme`` and marks a collapse in the progress line.
    """

    def __init__(self, cfg, run_dir: Path, dist, device, mask_stats, images_per_step: int, start_step: int = 0,
                 alarm=None):
        self.log_every, self.show_progress = cfg.logging.log_every, dist.is_main and cfg.logging.progress
        self.dist, self.device, self.mask_stats, self.alarm = dist, device, mask_stats, alarm
        self.images_per_step = images_per_step
        self.writer = None
        if dist.is_main and cfg.logging.tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=start_step or None)
        self.progress = None

    def start(self, step: int, total_steps: int):
        self.total_steps = total_steps
        self.progress = Progress(total_steps, initial=step, enabled=self.show_progress)
        self.last_t, self.last_step = time.time(), step
        if step == 0 and self.alarm is not None and self.alarm.start is not None:
            self.scalar("train/rankme", self.alarm.start, 0)

    def due(self, step: int) -> bool:
        self.progress.update(step)
        return step % self.log_every == 0 or step == self.total_steps

    def log(self, step: int, metrics: dict):
        """Reduce the tensors of ``metrics`` and the mask statistics over ranks and write them with images/s."""
        now = time.time()
        ips = (step - self.last_step) * self.images_per_step / max(now - self.last_t, 1e-9)
        self.last_t, self.last_step = now, step
        stats = self.mask_stats.summary() if self.mask_stats is not None else {}
        per_rank = {k: v for k, v in metrics.items() if torch.is_tensor(v)}
        per_rank.update({f"masks/{k}": v for k, v in stats.items()})
        reduced = jdist.mean_over_ranks(per_rank, self.dist, self.device)
        scalars = {k: reduced.get(k, v) for k, v in metrics.items()}
        scalars["images_per_s"] = ips
        if not self.dist.is_main:
            return
        shown = {name: scalars[key] for name, key in (("loss", "loss"), ("lr", "lr"), ("ema", "momentum"))
                 if key in scalars}
        if "rankme" in scalars and self.alarm is not None:
            shown["rankme"] = self.alarm.check(step, scalars["rankme"])
        self.progress.set_postfix(**shown, ips=ips)
        for k, v in scalars.items():
            self.scalar(k if "/" in k else f"train/{k}", v, step)
        for k in stats:
            self.scalar(f"masks/{k}", reduced[f"masks/{k}"], step)

    def scalar(self, tag: str, value: float, step: int):
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step)

    def close(self):
        if self.progress is not None:
            self.progress.close()
        if self.writer is not None:
            self.writer.flush()


def log_run_start(trainer):
    """What a run is about to do: device, precision, kernels, processes, global batch, steps, parameters."""
    if not trainer.is_main:
        return
    cfg, dist = trainer.cfg, trainer.dist
    n_params = sum(p.numel() for p in trainer.model.online_parameters())
    log.info("device %s, precision %s, kernels %s, world size %d%s", trainer.device,
             str(trainer.amp_dtype).replace("torch.", ""), jepa_kernels.backend(), dist.world_size,
             f" ({cfg.distributed.strategy}, {torch.distributed.get_backend()})" if dist.enabled else "")
    log.info("global batch %d (per-process batch %d x %d processes x %d accumulation steps); lr as configured",
             trainer.global_batch, cfg.data.batch_size, dist.world_size, cfg.training.accum_steps)
    log.info("%d steps (%d epochs x %d steps), %.2fM trainable parameters, run dir %s", trainer.total_steps,
             cfg.training.epochs, trainer.steps_per_epoch, n_params / 1e6, trainer.run_dir)
    if trainer.device.type == "cpu" and cfg.training.precision == "auto" and cpu_has_bf16_matmul():
        log.info("this CPU has bf16 matrix instructions: --training.precision bf16 is usually much faster "
                 "here (docs/performance.md, 'bf16 on CPU')")
