"""Where a run's numbers go: the progress line and the sinks (TensorBoard, W&B) with the scalars, mask statistics,
images/s and pictures; and the lines that say what a run is about to do."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

import jepa_kernels
from jepa import distributed as jdist
from jepa.device import describe_precision
from jepa.monitoring.progress import Progress
from jepa.monitoring.sinks import open_sinks

log = logging.getLogger("jepa")


class TrainLogger:
    """Every ``logging.log_every`` steps: means over ranks to the progress line and the sinks (rank 0): TensorBoard
    and W&B get the same scalars and pictures (``jepa.monitoring.sinks``).

    ``mask_stats`` (None: no masks, as in fine-tuning) adds the sampler's token counts.
    """

    def __init__(self, cfg, run_dir: Path, dist, device, mask_stats, images_per_step: int, start_step: int = 0):
        self.log_every, self.show_progress = cfg.logging.log_every, dist.is_main and cfg.logging.progress
        self.dist, self.device, self.mask_stats = dist, device, mask_stats
        self.images_per_step = images_per_step
        self.sinks = open_sinks(cfg, run_dir, start_step) if dist.is_main else []
        self.progress = None

    def start(self, step: int, total_steps: int):
        self.total_steps = total_steps
        self.progress = Progress(total_steps, initial=step, enabled=self.show_progress)
        self.last_t, self.last_step = time.time(), step
        for sink in self.sinks:
            sink.start()

    def advance(self, step: int):
        """Move the progress line to ``step``."""
        self.progress.update(step)

    def due(self, step: int) -> bool:
        """Whether ``step`` is logged: every ``logging.log_every`` steps and the last one."""
        return step % self.log_every == 0 or step == self.total_steps

    def log(self, step: int, metrics: dict, notes: dict[str, str] | None = None):
        """Reduce the tensors of ``metrics`` and the mask statistics over ranks and write them with images/s;
        ``notes`` replace the progress line's text for their keys (the collapse alarm's mark on ``rankme``)."""
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
        shown.update(notes or {})
        self.progress.set_postfix(**shown, ips=ips)
        for k, v in scalars.items():
            self.scalar(k if "/" in k else f"train/{k}", v, step)
        for k in stats:
            self.scalar(f"masks/{k}", reduced[f"masks/{k}"], step)

    def scalar(self, tag: str, value: float, step: int):
        for sink in self.sinks:
            sink.scalar(tag, value, step)

    def image(self, tag: str, image, step: int):
        """An ``[H, W, 3]`` uint8 picture to every sink."""
        for sink in self.sinks:
            sink.image(tag, image, step)

    def close(self):
        if self.progress is not None:
            self.progress.close()
        for sink in self.sinks:
            sink.close()


def log_run_start(cfg, dist, device, n_params: int, global_batch: int, total_steps: int, steps_per_epoch: int,
                  run_dir: Path):
    """What a pre-training run is about to do: device, precision (and what ``auto`` picked, why), kernels,
    processes, global batch, steps, parameters."""
    if not dist.is_main:
        return
    log.info("device %s, precision: %s, kernels %s, world size %d%s", device,
             describe_precision(cfg.training.precision, device), jepa_kernels.backend(), dist.world_size,
             f" ({cfg.distributed.strategy}, {torch.distributed.get_backend()})" if dist.enabled else "")
    log.info("global batch %d (per-process batch %d x %d processes x %d accumulation steps); lr as configured",
             global_batch, cfg.data.batch_size, dist.world_size, cfg.training.accum_steps)
    log.info("%d steps (%d epochs x %d steps), %.2fM trainable parameters, run dir %s", total_steps,
             cfg.training.epochs, steps_per_epoch, n_params / 1e6, run_dir)
