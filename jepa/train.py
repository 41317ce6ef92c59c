"""I-JEPA / H-JEPA pre-training: ``python -m jepa.train --config configs/X.yaml [--section.key value ...]``.

One optimizer step (docs/algorithm.md, "One step"): schedule values → forward (target branch
without grad, context branch on context tokens only, predictor) → loss (+ VICReg, + SIGReg) → backward →
clip → optimizer step → zero grads → EMA of the target encoder (none with online targets). The loop
around it, checkpoints and stopping are ``jepa.run.Run``'s.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import torch
from torch.profiler import record_function

import jepa_kernels
from jepa import cli
from jepa import distributed as jdist
from jepa.config import Config, add_config_args, config_from_cli
from jepa.config.validate import check_accum_steps
from jepa.data import Batch, TrainBatches
from jepa.device import autocast
from jepa.interop.init import adopt_architecture, start_from
from jepa.losses import (LN_EPS, expand_targets, level_losses, prediction_kind, sigreg_floor, sigreg_loss,
                         vicreg_loss)
from jepa.masks import MaskStats
from jepa.models import build_model, compile_model, mark_token_counts_dynamic
from jepa.monitoring.collapse import CollapseMonitor
from jepa.monitoring.knn import KnnMonitor
from jepa.monitoring.logger import TrainLogger, log_run_start
from jepa.monitoring.rankme import target_std
from jepa.optim import FiniteGuard, build_optimizer, optimizer_step, set_schedule
from jepa.run import Run
from jepa.schedules import build_schedules
from jepa.sigreg import sigreg_directions
from jepa.slurm import launcher_rank
from jepa.visualize import TrainingPictures

log = logging.getLogger("jepa")


class Trainer(Run):
    """One pre-training run: the model, optimizer and data stream, and the step that ties them together.

    The loop, checkpoints and signals are ``Run``'s; logging, the k-NN monitor, the collapse alarm and the
    pictures are their own objects.
    """

    def __init__(self, cfg: Config, run_dir: str | Path | None = None, resume: str | None = None,
                 profile: bool = False, dataset=None):
        adopt_architecture(cfg)  # model.size from_file: the shapes of model.init_from
        super().__init__(cfg)
        t, device = cfg.training, self.device
        self.model = build_model(cfg, device)
        self.data = TrainBatches(cfg, dataset, self.dist.rank, self.dist.world_size, pin_memory=device.type == "cuda")
        self.mask_stats = MaskStats()  # from the batches received: the sampler may run in DataLoader workers
        self.global_batch = cfg.data.batch_size * t.accum_steps * self.dist.world_size  # images per optimizer step
        self.steps_per_epoch = self.data.batches_per_epoch // t.accum_steps
        check_accum_steps(t.accum_steps, cfg.data.batch_size, self.data.batches_per_epoch,
                          f"per process of {self.dist.world_size}, from the loaded dataset")
        self.epochs, self.total_steps = t.epochs, self.steps_per_epoch * t.epochs
        self.schedules = build_schedules(cfg.optim, self.total_steps, self.steps_per_epoch)
        state = self.open_checkpoints(run_dir or cfg.logging.run_dir or Path("runs") / cfg.name, resume)
        start_from(self.model, cfg, resumed=state is not None, announce=self.is_main)  # model.init_from
        # DDP-wrapped or FSDP-sharded when distributed; before the optimizer because FSDP replaces the parameters
        self.online = jdist.wrap_model(self.model, cfg.distributed.strategy, self.dist, device)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.trained_params = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.target_encoder = self.model.target_encoder
        self.collapse = CollapseMonitor(cfg, self.target_encoder, self.data.dataset, device, self.amp_dtype)  # step 0
        if t.compile:
            compile_model(self.model, t.compile)
        self.ema_pairs = jdist.local_shard_pairs(list(self.model.target_encoder.parameters()),  # FSDP: local shards
                                                 list(self.model.context_encoder.parameters())) \
            if self.model.has_ema else None  # online targets: no copy, no EMA
        # only SIGReg on the target embeddings (online targets) back-propagates through the target forward
        self.target_grad = cfg.loss.sigreg_weight > 0 and cfg.loss.sigreg_on != "context"
        self.ema_momentum = torch.zeros((), dtype=torch.float64, device=device)  # read on the device by the kernel
        self.skipped_steps = torch.zeros((), device=device)
        self.finite_guard = FiniteGuard(device)
        if state is not None:
            self.load_state_dict(state)
        self.write_config()
        self.logger = TrainLogger(cfg, self.run_dir, self.dist, device, self.mask_stats, self.global_batch, self.step)
        self.knn_monitor = KnnMonitor(cfg, device, self.amp_dtype)
        self.pictures = TrainingPictures(cfg, self.data, device, self.amp_dtype, self.logger)
        self.profile = profile or cfg.profiling.enabled

    # ------------------------------------------------------------------ the step

    def train_step(self, micro_batches: list[Batch]) -> dict[str, torch.Tensor]:
        """One optimizer step over ``accum_steps`` micro-batches, then the EMA of the target encoder (if it has one).

        The level-0 loss is, fused into one kernel that materialises nothing::

            targets = F.layer_norm(h, h.shape[-1:], eps=LN_EPS)      # the target layer norm, no affine
            targets = jepa_kernels.masked_gather(targets, tgt_idx)   # the rows of the target blocks
            loss = F.mse_loss(preds[0], targets)                     # (smooth_l1 with loss.type smooth_l1)
        """
        lc, n = self.cfg.loss, len(micro_batches)
        lr, wd = self.schedules.lr_at(self.step), self.schedules.wd_at(self.step)
        set_schedule(self.optimizer, lr, wd)
        directions = self.sigreg_directions()  # drawn from (training.seed, step); None without SIGReg
        total = torch.zeros((), device=self.device)
        parts: dict[str, torch.Tensor] = {}  # per-micro-batch metrics, averaged over the step
        for i, batch in enumerate(micro_batches):
            if self.cfg.training.compile:
                mark_token_counts_dynamic(batch)
            with jdist.grad_sync(self.online, i == n - 1 or not self.dist.enabled):
                with autocast(self.device, self.amp_dtype):
                    with record_function("target_forward"), torch.set_grad_enabled(self.target_grad):
                        target = self.target_encoder(batch.images)                               # [B, N, D]
                    h = target.detach()  # the prediction targets: a stop-gradient
                    with record_function("context_forward"):  # context encoder → predictor, per level
                        # one level never pools; passing the block shape anyway would make a compiled graph guard on it
                        block_hw = batch.block_hw if self.model.level_heads else None
                        z, preds = self.online(batch.images, batch.ctx_idx, batch.tgt_idx, block_hw)  # [E·B, Kc, D]
                    with record_function("loss"):
                        tgt_idx = expand_targets(batch.tgt_idx, batch.ctx_idx.shape[0])  # rows of preds: (m, e, b)
                        level0 = None if lc.normalize_embeddings else jepa_kernels.masked_target_loss(
                            preds[0], h, tgt_idx, prediction_kind(lc), lc.beta, lc.normalize_targets, LN_EPS)
                        loss, micro = level_losses(level0, preds, h, tgt_idx, batch.block_hw, lc)  # H-JEPA levels
                        if lc.type == "combined" or lc.sigreg_weight:
                            micro["loss/prediction"] = loss.detach()
                        if lc.type == "combined":
                            reg = vicreg_loss(z, h, batch.ctx_idx.shape[0], lc.vicreg_var_weight,
                                              lc.vicreg_cov_weight, lc.vicreg_inv_weight)
                            micro["loss/vicreg"] = reg.detach()
                            loss = loss + lc.vicreg_weight * reg
                        if lc.sigreg_weight:  # SIGReg (LeJEPA) on the per-image mean embeddings
                            reg = sigreg_loss(z, target, directions, lc.sigreg_on)
                            micro.update({"loss/sigreg": reg.detach(), "loss/sigreg_null": sigreg_floor(
                                z, target, lc.sigreg_on, self.dist.world_size)})
                            loss = loss + lc.sigreg_weight * reg
                    micro["target_std"] = target_std(h)
                with record_function("backward"):
                    self.scaler.scale(loss / n).backward()
            total += loss.detach().float() / n
            for key, value in micro.items():
                parts[key] = parts.get(key, 0.0) + value / n
        with record_function("optimizer"):
            grad_norm = optimizer_step(self.optimizer, self.scaler, self.trained_params, self.cfg.optim.grad_clip)
        if self.scaler.is_enabled():
            self.skipped_steps += ~torch.isfinite(grad_norm)  # the fp16 scaler skipped the step: counted, not fatal
        else:
            self.finite_guard.observe(total, grad_norm)
        self.step += 1
        parts.update({"loss": total, "lr": lr, "wd": wd})
        if self.ema_pairs is not None:  # online targets have no EMA
            parts["momentum"] = momentum = self.schedules.momentum_at(self.step)
            with record_function("ema"):
                jepa_kernels.ema_update_(*self.ema_pairs, self.ema_momentum.fill_(momentum))
        return parts

    def sigreg_directions(self) -> torch.Tensor | None:
        """This step's SIGReg directions, the same on every process and after a resume; None without SIGReg."""
        lc = self.cfg.loss
        if not lc.sigreg_weight:
            return None
        return sigreg_directions(self.cfg.model.embed_dim, lc.sigreg_slices, self.step, self.cfg.training.seed,
                                 self.device)

    # ------------------------------------------------------------------ around the step

    def epoch_batches(self):
        """Lists of ``accum_steps`` device batches of epoch ``self.epoch`` from ``batch_in_epoch`` on."""
        accum = self.cfg.training.accum_steps
        usable = self.steps_per_epoch * accum
        it = self.data.epoch(self.epoch, start=self.batch_in_epoch)
        group = []
        while self.batch_in_epoch < usable:
            with record_function("data"):
                batch = next(it).to(self.device)
            if batch.mask_info:
                self.mask_stats.add(batch.mask_info)
            group.append(batch)
            self.batch_in_epoch += 1
            if len(group) == accum:
                yield group
                group = []
        del it

    def announce(self):
        log_run_start(self.cfg, self.dist, self.device,
                      sum(p.numel() for p in self.model.online_parameters()), self.global_batch, self.total_steps,
                      self.steps_per_epoch, self.run_dir)
        if self.step == 0 and self.collapse.start is not None:
            self.logger.scalar("train/rankme", self.collapse.start, 0)

    def log_step(self, metrics: dict):
        """The step's metrics with the skipped fp16 steps and RankMe (marked in the progress line on collapse)."""
        self.check_finite()
        if self.scaler.is_enabled():
            metrics["skipped_steps"] = self.skipped_steps
        measured, notes = self.collapse.measure(), {}
        if measured and self.is_main:
            notes["rankme"] = self.collapse.check(self.step, float(measured["rankme"]))
        self.logger.log(self.step, {**metrics, **measured}, notes)

    def epoch_metric(self, epoch_loss: float) -> float | None:
        """The optional k-NN monitor and the pictures; the epoch checkpoint is scored by ``checkpoint.monitor``."""
        metric = epoch_loss if self.cfg.checkpoint.monitor == "loss" else None
        if self.knn_monitor.due(self.epoch) and self.is_main:
            acc = self.knn_monitor(self.model, self.epoch)
            if acc is not None:
                self.logger.scalar("eval/knn_top1", acc, self.step)
                if self.cfg.checkpoint.monitor == "knn":
                    metric = -acc
        self.pictures(self.model, self.epoch, self.step)
        return metric

    def check_finite(self):
        self.finite_guard.check(self.optimizer, self.step, self.dist, self.run_dir / "checkpoints")

    # ------------------------------------------------------------------ checkpoints

    def data_stream(self) -> dict:
        return {"seed": self.cfg.training.seed, "world_size": self.dist.world_size,
                "batch_size": self.cfg.data.batch_size, "batches_per_epoch": self.data.batches_per_epoch,
                "accum_steps": self.cfg.training.accum_steps, "total_steps": self.total_steps,
                "warmup_steps": self.schedules.warmup_steps, **self.data.stream_info()}

    def extra_state(self) -> dict:
        return {"best_metric": self.best_metric, "skipped_steps": int(self.skipped_steps.item()),
                "schedule": {"lr": self.schedules.lr_at(self.step), "weight_decay": self.schedules.wd_at(self.step),
                             "momentum": self.schedules.momentum_at(self.step)}}

    def load_state_dict(self, state: dict):
        super().load_state_dict(state)
        self.skipped_steps.fill_(state.get("skipped_steps", 0))


def main(argv: list[str] | None = None) -> int:
    return cli.run(run, argv)


def run(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(
        prog="python -m jepa.train", description=__doc__.splitlines()[0],
        epilog="Any config key can be overridden as --section.key value, e.g. --training.epochs 3")
    add_config_args(parser)
    parser.add_argument("--resume", metavar="auto|PATH",
                        help="continue from the newest valid checkpoint of the run dir (auto) or a file")
    parser.add_argument("--run-dir", help="where logs and checkpoints go (default logging.run_dir or runs/<name>)")
    parser.add_argument("--profile", action="store_true", help="write torch.profiler traces to <run>/profile")
    cfg, args = config_from_cli(parser, argv)
    rank = str(launcher_rank(os.environ))  # under torchrun/srun only rank 0 logs progress; the others warnings
    logging.basicConfig(level=logging.INFO if rank == "0" else logging.WARNING,
                        format="%(asctime)s %(message)s" if rank == "0" else f"%(asctime)s [rank {rank}] %(message)s",
                        datefmt="%H:%M:%S")
    trainer = None
    try:
        trainer = Trainer(cfg, run_dir=args.run_dir, resume=args.resume, profile=args.profile)
        result = trainer.train()
    finally:
        if trainer is not None:
            jdist.cleanup(trainer.dist)
    if trainer.is_main:
        print(f"done: {result['stopped']} at step {result['step']} in {result['seconds']:.0f}s; "
              f"run dir {result['run_dir']} (tensorboard --logdir {result['run_dir']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
