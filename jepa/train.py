"""I-JEPA / H-JEPA pre-training: ``python -m jepa.train --config configs/X.yaml [--section.key value ...]``.

One optimizer step (docs/algorithm.md, "One step"): schedule values → forward (target branch
without grad, context branch on context tokens only, predictor) → loss → backward → clip →
optimizer step → zero grads → EMA of the target encoder → logging.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import torch
import yaml
from torch.profiler import record_function

import jepa_kernels
from jepa import cli
from jepa import distributed as jdist
from jepa.checkpoint import FORMAT, Checkpointer, restore_rng, rng_state
from jepa.config import Config, add_config_args, config_from_cli
from jepa.config.validate import check_accum_steps
from jepa.data import Batch, TrainBatches
from jepa.device import pick_precision, setup_process
from jepa.interop.init import adopt_architecture, start_from
from jepa.io import atomic_write_text
from jepa.losses import JEPALoss
from jepa.masks import MaskStats
from jepa.metrics import TrainLogger, log_run_start, target_std
from jepa.models import build_model, compile_model, mark_token_counts_dynamic
from jepa.monitor import CollapseMonitor, KnnMonitor
from jepa.optim import FiniteGuard, build_optimizer, clip_and_step, set_schedule
from jepa.profiling import step_profiler
from jepa.schedules import build_schedules
from jepa.signals import StopOnSignal
from jepa.slurm import launcher_rank
from jepa.visualize import TrainingPictures

log = logging.getLogger("jepa")


class Trainer:
    """One training run: the model, optimizer and data stream, and the step that ties them together.

    Checkpoints, logging, the k-NN monitor, signals and profiling are delegated to their own objects.
    """

    def __init__(self, cfg: Config, run_dir: str | Path | None = None, resume: str | None = None,
                 profile: bool = False, dataset=None):
        adopt_architecture(cfg)  # model.size from_file: the shapes of model.init_from
        self.cfg = cfg
        t = cfg.training
        device, self.dist = setup_process(cfg)
        self.device, self.is_main = device, self.dist.is_main
        self.model = build_model(cfg, device)
        self.loss_fn = JEPALoss(cfg.loss)
        self.data = TrainBatches(cfg, dataset, self.dist.rank, self.dist.world_size, pin_memory=device.type == "cuda")
        self.mask_stats = MaskStats()  # from the batches received: the sampler may run in DataLoader workers
        self.global_batch = cfg.data.batch_size * t.accum_steps * self.dist.world_size  # images per optimizer step
        self.steps_per_epoch = self.data.batches_per_epoch // t.accum_steps
        check_accum_steps(t.accum_steps, cfg.data.batch_size, self.data.batches_per_epoch,
                          f"per process of {self.dist.world_size}, from the loaded dataset")
        self.total_steps = self.steps_per_epoch * t.epochs
        self.schedules = build_schedules(cfg.optim, self.total_steps, self.steps_per_epoch)
        self.amp_dtype = pick_precision(t.precision, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.run_dir = Path(run_dir or cfg.logging.run_dir or Path("runs") / cfg.name)
        self.checkpointer = Checkpointer(self.run_dir, cfg.checkpoint.keep_last, self.dist)
        state = self.checkpointer.restore(resume, cfg.to_dict(), self.data_stream(), jdist.model_shapes(self.model))
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
                                                 list(self.model.context_encoder.parameters()))
        self.ema_momentum = torch.zeros((), dtype=torch.float64, device=device)  # read on the device by the kernel

        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0  # steps done; loader batches of ``epoch`` consumed
        self.skipped_steps = torch.zeros((), device=device)
        self.finite_guard = FiniteGuard(device)
        self.epoch_loss, self.epoch_n = torch.zeros((), device=device), 0  # sum of the epoch's step losses
        if state is not None:
            self.load_state_dict(state)
        if self.is_main:
            atomic_write_text(self.run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        self.logger = TrainLogger(cfg, self.run_dir, self.dist, device, self.mask_stats, self.global_batch, self.step,
                                  self.collapse)
        self.knn_monitor = KnnMonitor(cfg, device, self.amp_dtype)
        self.pictures = TrainingPictures(cfg, self.data, device, self.amp_dtype, self.logger.writer)
        self.profile = profile or cfg.profiling.enabled

    # ------------------------------------------------------------------ the step

    def forward_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of one micro-batch: target features without grad, then context → predictor → loss."""
        if self.cfg.training.compile:
            mark_token_counts_dynamic(batch)
        with record_function("target_forward"), torch.no_grad():
            h = self.target_encoder(batch.images)                                        # [B, N, D]
        with record_function("context_forward"):
            # one level never pools; passing the block shape anyway would make a compiled graph guard on it
            block_hw = batch.block_hw if self.model.level_heads else None
            z, preds = self.online(batch.images, batch.ctx_idx, batch.tgt_idx, block_hw)  # [E·B, Kc, D], per level
        with record_function("loss"):
            loss, parts = self.loss_fn(h, preds, z, batch.ctx_idx, batch.tgt_idx, batch.block_hw)
        parts["target_std"] = target_std(h)
        return loss, parts

    def train_step(self, micro_batches: list[Batch]) -> dict[str, torch.Tensor]:
        """One optimizer step over ``accum_steps`` micro-batches, then the EMA update."""
        lr, wd = self.schedules.lr_at(self.step), self.schedules.wd_at(self.step)
        set_schedule(self.optimizer, lr, wd)
        n = len(micro_batches)
        total = torch.zeros((), device=self.device)
        parts: dict[str, torch.Tensor] = {}  # per-micro-batch metrics, averaged over the step
        for i, batch in enumerate(micro_batches):
            with jdist.grad_sync(self.online, i == n - 1 or not self.dist.enabled):
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype != torch.float32):
                    loss, micro = self.forward_loss(batch)
                with record_function("backward"):
                    self.scaler.scale(loss / n).backward()
            total += loss.detach().float() / n
            for key, value in micro.items():
                parts[key] = parts.get(key, 0.0) + value / n
        with record_function("optimizer"):
            grad_norm = clip_and_step(self.optimizer, self.scaler, self.trained_params, self.cfg.optim.grad_clip)
        if self.scaler.is_enabled():
            self.skipped_steps += ~torch.isfinite(grad_norm)  # the fp16 scaler skipped the step: counted, not fatal
        else:
            self.finite_guard.observe(total, grad_norm)
        self.step += 1
        momentum = self.schedules.momentum_at(self.step)
        with record_function("ema"):
            jepa_kernels.ema_update_(*self.ema_pairs, self.ema_momentum.fill_(momentum))
        parts.update({"loss": total, "lr": lr, "wd": wd, "momentum": momentum})
        return parts

    # ------------------------------------------------------------------ the loop

    def micro_batches(self):
        """Yield lists of ``accum_steps`` device batches from the resume position; None marks an epoch's end."""
        accum = self.cfg.training.accum_steps
        while self.epoch < self.cfg.training.epochs:
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
            self.epoch += 1
            self.batch_in_epoch = 0
            yield None

    def train(self) -> dict:
        t0, stop_at = time.time(), self.cfg.training.stop_at_step
        if self.step >= self.total_steps and self.epoch >= self.cfg.training.epochs:
            stopped = "already complete"
        elif stop_at is not None and self.step >= stop_at:
            stopped = f"stop_at_step {stop_at} (already reached)"
        else:
            log_run_start(self)
            self.logger.start(self.step, self.total_steps)
            stop = StopOnSignal(lambda: self.step + 1, self.run_dir / "checkpoints", announce=self.is_main)
            with stop, step_profiler(self.profile, self.cfg.profiling, self.run_dir / "profile", self.device,
                                     self.dist.rank) as profiler:
                try:
                    stopped = self.loop(stop, profiler)
                finally:
                    self.logger.close()
        return {"stopped": stopped, "step": self.step, "seconds": time.time() - t0, "run_dir": str(self.run_dir)}

    def loop(self, stop: StopOnSignal, profiler) -> str:
        """Steps until the run ends, ``training.stop_at_step`` or a signal; returns why it stopped."""
        stop_at = self.cfg.training.stop_at_step
        for group in self.micro_batches():
            if group is None:
                self.end_of_epoch()
                continue
            metrics = self.train_step(group)
            self.epoch_loss += metrics["loss"]
            self.epoch_n += 1
            profiler.step()
            if self.logger.due(self.step):
                self.check_finite()
                if self.scaler.is_enabled():
                    metrics["skipped_steps"] = self.skipped_steps
                self.logger.log(self.step, {**metrics, **self.collapse.measure()})
            if self.cfg.checkpoint.every_steps and self.step % self.cfg.checkpoint.every_steps == 0:
                self.save_checkpoint()
            if stop_at is not None and self.step >= stop_at:
                self.stop_and_save(f"stopped at training.stop_at_step {stop_at}")
                return f"stop_at_step {stop_at}"
            if jdist.any_rank(stop.requested, self.dist):
                self.stop_and_save("stopped by signal")
                return "signal"
        return "completed"

    def end_of_epoch(self):
        """Epoch loss, the optional k-NN monitor, and the epoch checkpoint scored by ``checkpoint.monitor``."""
        mean = jdist.all_reduce_mean(self.epoch_loss / max(1, self.epoch_n), self.dist).item()
        self.epoch_loss, self.epoch_n = torch.zeros((), device=self.device), 0
        self.logger.scalar("train/epoch_loss", mean, self.step)
        metric = mean if self.cfg.checkpoint.monitor == "loss" else None
        if self.knn_monitor.due(self.epoch) and self.is_main:
            acc = self.knn_monitor(self.model, self.epoch)
            if acc is not None:
                self.logger.scalar("eval/knn_top1", acc, self.step)
                if self.cfg.checkpoint.monitor == "knn":
                    metric = -acc
        self.pictures(self.model, self.epoch, self.step)
        every = self.cfg.checkpoint.every_epochs
        if self.epoch >= self.cfg.training.epochs or (every and self.epoch % every == 0):
            self.save_checkpoint(metric=metric)

    def check_finite(self):
        self.finite_guard.check(self.optimizer, self.step, self.dist, self.run_dir / "checkpoints")

    # ------------------------------------------------------------------ checkpoints

    @property
    def best_metric(self) -> float:
        return self.checkpointer.best_metric

    def data_stream(self) -> dict:
        """What fixes the batch sequence and the schedules; a resumed run is exact only if these match."""
        return {"seed": self.cfg.training.seed, "world_size": self.dist.world_size,
                "batch_size": self.cfg.data.batch_size, "batches_per_epoch": self.data.batches_per_epoch,
                "accum_steps": self.cfg.training.accum_steps, "total_steps": self.total_steps,
                "warmup_steps": self.schedules.warmup_steps, **self.data.stream_info()}

    def state_dict(self) -> dict:
        """Everything needed to continue exactly, as tensors and Python primitives (loads with weights_only=True).

        The mask sampler and data order draw from generators seeded by (seed, rank, epoch, batch index),
        so ``epoch`` and ``batch_in_epoch`` are their whole RNG state.
        """
        return {
            "format": FORMAT,
            "model": jdist.model_state(self.model),  # context encoder, predictor, level heads, target encoder
            "optimizer": jdist.optimizer_state(self.model, self.optimizer),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "epoch_loss": [float(self.epoch_loss), self.epoch_n],
            "best_metric": self.best_metric,
            "skipped_steps": int(self.skipped_steps.item()),
            "schedule": {"lr": self.schedules.lr_at(self.step), "weight_decay": self.schedules.wd_at(self.step),
                         "momentum": self.schedules.momentum_at(self.step)},
            "data_stream": self.data_stream(),
            "rng": rng_state(self.device),
            "config": self.cfg.to_dict(),
        }

    def load_state_dict(self, state: dict):
        jdist.load_model_state(self.model, state["model"])
        jdist.load_optimizer_state(self.model, self.optimizer, state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        elif self.scaler.is_enabled():
            log.warning("the checkpoint has no grad-scaler state (it was not trained in fp16); starting a new scaler")
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        loss_sum, self.epoch_n = state.get("epoch_loss", [0.0, 0])
        self.epoch_loss = torch.full((), loss_sum, device=self.device)
        self.skipped_steps.fill_(state.get("skipped_steps", 0))
        restore_rng(state["rng"], self.device)

    def save_checkpoint(self, metric: float | None = None) -> Path:
        """Write this step's checkpoint (lower ``metric`` is better for ``best.pt``); never after a non-finite loss."""
        self.check_finite()
        return self.checkpointer.save(self.step, self.state_dict, metric, collective=jdist.is_sharded(self.model))

    def stop_and_save(self, why: str):
        """Checkpoint now and tell the user how to continue."""
        path = self.save_checkpoint()
        self.checkpointer.tell_how_to_resume(why, path, self.step, self.total_steps, self.cfg.training.stop_at_step)


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
