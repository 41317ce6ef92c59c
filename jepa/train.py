"""I-JEPA / H-JEPA pre-training: ``python -m jepa.train --config configs/X.yaml [--section.key value ...]``.

One optimizer step (SPEC §4): schedule values → forward (target branch without
grad, context branch on context tokens only, predictor) → loss → backward →
clip → optimizer step → zero grads → EMA of the target encoder → logging.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import shlex
import signal
import sys
import time
from pathlib import Path

import torch
import yaml
from torch.profiler import record_function

import kernels
from jepa import distributed as jdist
from jepa.io import atomic_link, atomic_save, atomic_write_text
from jepa.checkpoint import (BEST_NAME, FORMAT, CheckpointError, checkpoint_path, find_latest_valid, list_checkpoints, load_checkpoint, prune, set_aside_newer)
from jepa.config import Config, ConfigError, add_config_args, config_from_cli
from jepa.data import Batch, TrainBatches
from jepa.losses import elementwise_loss, expand_targets, gather_targets, pool_blocks, prediction_loss, vicreg_loss
from jepa.masks import MaskStats
from jepa.models import build_model
from jepa.profiling import cpu_has_bf16_matmul, trace_profiler, tune_cpu_allocator
from jepa.progress import Progress
from jepa.schedules import build_schedules

log = logging.getLogger("jepa")

VICREG_DEFAULTS = {"vicreg_weight": 0.1, "vicreg_var_weight": 25.0, "vicreg_cov_weight": 25.0,
                   "vicreg_inv_weight": 1.0}


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept as it was."""


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"training.device={name}: CUDA is not available on this machine (use auto or cpu)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("training.device=mps: Apple MPS is not available on this machine (use auto or cpu)")
    return torch.device(name)


def pick_precision(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def build_optimizer(model, optim_cfg) -> torch.optim.AdamW:
    """AdamW over the online parameters in two groups: weights decay, biases and norms (all 1-D) do not."""
    decay, no_decay = [], []
    for p in model.online_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "apply_wd": True, "weight_decay": optim_cfg.weight_decay},
              {"params": no_decay, "apply_wd": False, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=optim_cfg.lr, betas=tuple(optim_cfg.betas), eps=optim_cfg.eps)


def mark_token_counts_dynamic(batch: Batch):
    """Compile the context/target token counts as symbolic sizes: they change every batch.

    Static shapes would need one fixed token count per config (every context mask cut to the smallest
    count the config allows) and measured only 2-4 % faster per step (bench_fmnist_tiny, inductor, CPU),
    so the sizes stay dynamic: one graph, no recompiles. H-JEPA pooling specialises on the block shape.
    """
    for idx in (batch.ctx_idx, batch.tgt_idx):
        torch._dynamo.maybe_mark_dynamic(idx, idx.dim() - 1)


def vicreg_settings(loss_cfg) -> dict[str, float]:
    return {k: (getattr(loss_cfg, k) if getattr(loss_cfg, k) is not None else v) for k, v in VICREG_DEFAULTS.items()}


def warn_unused_vicreg(loss_cfg):
    """SPEC §6: VICReg fields set while the loss is not ``combined`` do nothing; say so once."""
    if loss_cfg.type != "combined":
        fields = [f"loss.{k}" for k in VICREG_DEFAULTS if getattr(loss_cfg, k) is not None]
        if fields:
            import warnings
            warnings.warn(f"{', '.join(fields)} set but loss.type is '{loss_cfg.type}': they are ignored "
                          "(set loss.type: combined to use the VICReg term)", UserWarning, stacklevel=2)


class Trainer:
    """Owns the model, optimizer, data stream and run directory of one training run."""

    def __init__(self, cfg: Config, run_dir: str | Path | None = None, resume: str | None = None,
                 profile: bool = False, dataset=None):
        self.cfg = cfg
        t = cfg.training
        device = pick_device(t.device)
        self.dist = jdist.init_distributed(cfg.distributed.backend, device.type)
        if device.type == "cuda" and self.dist.enabled:  # init_distributed has set it current
            device = torch.device("cuda", self.dist.local_rank)
        self.device = device
        self.is_main = self.dist.is_main
        kernels.set_backend(t.kernels)
        warn_unused_vicreg(cfg.loss)
        if t.deterministic:
            torch.use_deterministic_algorithms(True)
        torch.manual_seed(t.seed)

        if device.type == "cpu":
            tune_cpu_allocator()
        self.model = build_model(cfg, device)
        self.data = TrainBatches(cfg, dataset, self.dist.rank, self.dist.world_size, pin_memory=device.type == "cuda")
        self.mask_stats = MaskStats()  # from the batches received: the sampler may run in DataLoader workers
        self.steps_per_epoch = self.data.batches_per_epoch // t.accum_steps
        if self.steps_per_epoch < 1:
            raise ConfigError(f"training.accum_steps={t.accum_steps} needs at least that many batches per epoch, "
                              f"but there are {self.data.batches_per_epoch}")
        self.total_steps = self.steps_per_epoch * t.epochs
        self.schedules = build_schedules(cfg.optim, self.total_steps, self.steps_per_epoch)
        self.amp_dtype = pick_precision(t.precision, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)

        # what forward/backward go through: DDP-wrapped or FSDP-sharded when distributed; before the
        # optimizer is built because FSDP replaces the parameters
        self.online = jdist.wrap_model(self.model, cfg.distributed.strategy, self.dist, device)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.trained_params = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.target_encoder = self.model.target_encoder
        if t.compile:
            mode = "max-autotune" if t.compile == "max-autotune" else None
            # one graph for the online forward (context encoder + predictor + level heads), its token
            # counts symbolic (forward_loss marks them); the target encoder sees whole images: static shapes
            self.model.compile(mode=mode)
            self.target_encoder.compile(mode=mode)
        self.ema_pairs = (list(self.model.target_encoder.parameters()), list(self.model.context_encoder.parameters()))

        self.step = 0          # optimizer steps completed
        self.epoch = 0
        self.batch_in_epoch = 0  # loader batches of ``epoch`` already consumed
        self.best_metric = math.inf
        self.stop_requested = False
        self.skipped_steps = torch.zeros((), device=device)
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=device)
        self.epoch_loss = torch.zeros((), device=device)  # sum of step losses of the current epoch
        self.epoch_n = 0

        self.run_dir = Path(run_dir or cfg.logging.run_dir or Path("runs") / cfg.name)
        self.writer = None
        self._resume(resume)
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            if cfg.logging.tensorboard:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=self.step or None)
        self.profile = profile or cfg.profiling.enabled

    # ------------------------------------------------------------------ the step

    def forward_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of one micro-batch: target features without grad, then context → predictor → loss."""
        cfg = self.cfg.loss
        if self.cfg.training.compile:
            mark_token_counts_dynamic(batch)
        with record_function("target_forward"), torch.no_grad():
            h = self.target_encoder(batch.images)                                   # [B, N, D]
        with record_function("context_forward"):
            # one level never pools; passing the block shape anyway would make a compiled graph guard on it
            block_hw = batch.block_hw if self.model.level_heads else None
            z, preds = self.online(batch.images, batch.ctx_idx, batch.tgt_idx, block_hw)
        tgt_idx = expand_targets(batch.tgt_idx, batch.ctx_idx.shape[0])
        kind = cfg.base if cfg.type == "combined" else cfg.type
        parts = {}
        with record_function("loss"):
            loss = None
            gathered = None  # layer-normed target blocks, gathered once for every level that needs them
            for level, (pred, weight) in enumerate(zip(preds, cfg.level_weights)):
                if level == 0 and not cfg.normalize_embeddings:  # the fused kernel: nothing gathered
                    lv = prediction_loss(pred, h, tgt_idx, kind, cfg.beta, cfg.normalize_targets)
                else:
                    if gathered is None:
                        gathered = gather_targets(h, tgt_idx, cfg.normalize_targets)
                    tgt = pool_blocks(gathered, batch.block_hw, 2 ** level)
                    lv = elementwise_loss(pred, tgt, kind, cfg.beta, normalize=cfg.normalize_embeddings)
                if len(preds) > 1:
                    parts[f"loss/level{level}"] = lv.detach()
                loss = weight * lv if loss is None else loss + weight * lv
            if cfg.type == "combined":
                vic = vicreg_settings(cfg)
                reg = vicreg_loss(z, h, batch.ctx_idx.shape[0], vic["vicreg_var_weight"],
                                  vic["vicreg_cov_weight"], vic["vicreg_inv_weight"])
                parts.update({"loss/prediction": loss.detach(), "loss/vicreg": reg.detach()})
                loss = loss + vic["vicreg_weight"] * reg
        parts["target_std"] = h.detach().float().mean(dim=1).std(dim=0).mean()
        return loss, parts

    def train_step(self, micro_batches: list[Batch]) -> dict[str, torch.Tensor]:
        """One optimizer step over ``accum_steps`` micro-batches, then the EMA update."""
        lr, wd = self.schedules.lr_at(self.step), self.schedules.wd_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            if group["apply_wd"]:
                group["weight_decay"] = wd
        n = len(micro_batches)
        total = torch.zeros((), device=self.device)
        parts: dict[str, torch.Tensor] = {}  # per-micro-batch metrics, averaged over the step
        for i, batch in enumerate(micro_batches):
            sync = i == n - 1 or not self.dist.enabled
            with jdist.grad_sync(self.online, sync):
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype != torch.float32):
                    loss, micro = self.forward_loss(batch)
                with record_function("backward"):
                    self.scaler.scale(loss / n).backward()
            total += loss.detach().float() / n
            for key, value in micro.items():
                parts[key] = parts.get(key, 0.0) + value / n
        with record_function("optimizer"):
            if self.cfg.optim.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.trained_params, self.cfg.optim.grad_clip)
            if self.scaler.is_enabled():
                self.scaler.step(self.optimizer)
                found = self.scaler._found_inf_per_device(self.optimizer)
                self.skipped_steps += sum(v.to(self.device) for v in found.values()) if found else 0
                self.scaler.update()
            else:
                self.optimizer.step()
                self.nonfinite |= ~torch.isfinite(total)
            self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        momentum = self.schedules.momentum_at(self.step)
        with record_function("ema"):
            target, online = jdist.local_shard_pairs(*self.ema_pairs)
            kernels.ema_update_(target, online, momentum)
        parts.update({"loss": total, "lr": lr, "wd": wd, "momentum": momentum})
        return parts

    # ------------------------------------------------------------------ the loop

    def micro_batches(self):
        """Yield lists of ``accum_steps`` device batches, starting at the resume position."""
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
            yield None  # end of epoch marker

    def train(self) -> dict:
        cfg = self.cfg
        t0 = time.time()
        stop_at = cfg.training.stop_at_step
        previous_handlers = self._install_signal_handlers()
        self._log_start()
        progress = Progress(self.total_steps, initial=self.step, enabled=self.is_main and cfg.logging.progress)
        profiler = self._profiler()
        last_log_t, last_log_step = time.time(), self.step
        result = {"stopped": "completed"}
        try:
            if self.step >= self.total_steps and self.epoch >= self.cfg.training.epochs:
                result["stopped"] = "already complete"
                return result
            if stop_at is not None and self.step >= stop_at:
                result["stopped"] = f"stop_at_step {stop_at} (already reached)"
                return result
            for group in self.micro_batches():
                if group is None:
                    mean = jdist.all_reduce_mean(self.epoch_loss / max(1, self.epoch_n), self.dist).item()
                    self.epoch_loss, self.epoch_n = torch.zeros((), device=self.device), 0
                    self._end_of_epoch(mean)
                    continue
                metrics = self.train_step(group)
                self.epoch_loss += metrics["loss"]
                self.epoch_n += 1
                if profiler is not None:
                    profiler.step()
                progress.update(self.step)
                if self.step % cfg.logging.log_every == 0 or self.step == self.total_steps:
                    now = time.time()
                    ips = (self.step - last_log_step) * self._global_batch() / max(now - last_log_t, 1e-9)
                    last_log_t, last_log_step = now, self.step
                    self._log(metrics, ips, progress)
                if cfg.checkpoint.every_steps and self.step % cfg.checkpoint.every_steps == 0:
                    self.save_checkpoint()
                if stop_at is not None and self.step >= stop_at:
                    self._stop(f"stopped at training.stop_at_step {stop_at}")
                    result["stopped"] = f"stop_at_step {stop_at}"
                    break
                if jdist.any_rank(self.stop_requested, self.dist):
                    self._stop("stopped by signal")
                    result["stopped"] = "signal"
                    break
            else:
                self.save_checkpoint(final=True)
        finally:
            self._restore_signal_handlers(previous_handlers)
            progress.close()
            if profiler is not None:
                profiler.stop()
            if self.writer is not None:
                self.writer.flush()
        result.update(step=self.step, seconds=time.time() - t0, run_dir=str(self.run_dir))
        return result

    def _global_batch(self) -> int:
        return self.cfg.data.batch_size * self.cfg.training.accum_steps * self.dist.world_size

    def _log_start(self):
        if not self.is_main:
            return
        n_params = sum(p.numel() for p in self.model.online_parameters())
        log.info("device %s, precision %s, kernels %s, world size %d%s", self.device,
                 str(self.amp_dtype).replace("torch.", ""), kernels.backend(), self.dist.world_size,
                 f" ({self.cfg.distributed.strategy}, {torch.distributed.get_backend()})" if self.dist.enabled else "")
        log.info("global batch %d (per-process batch %d x %d processes x %d accumulation steps); lr as configured",
                 self._global_batch(), self.cfg.data.batch_size, self.dist.world_size, self.cfg.training.accum_steps)
        log.info("%d steps (%d epochs x %d steps), %.2fM trainable parameters, run dir %s", self.total_steps,
                 self.cfg.training.epochs, self.steps_per_epoch, n_params / 1e6, self.run_dir)
        if self.device.type == "cpu" and self.cfg.training.precision == "auto" and cpu_has_bf16_matmul():
            log.info("this CPU has bf16 matrix instructions: --training.precision bf16 is usually much faster "
                     "here (docs/performance.md, 'bf16 on CPU')")

    def _log(self, metrics: dict, images_per_s: float, progress):
        self._check_finite()
        stats = self.mask_stats.summary()
        per_rank = {k: v for k, v in metrics.items() if torch.is_tensor(v)}
        per_rank.update({f"masks/{k}": v for k, v in stats.items()})
        reduced = jdist.mean_over_ranks(per_rank, self.dist, self.device)
        scalars = {k: reduced.get(k, v) for k, v in metrics.items()}
        scalars["images_per_s"] = images_per_s
        if self.scaler.is_enabled():
            scalars["skipped_steps"] = self.skipped_steps.item()
        if not self.is_main:
            return
        progress.set_postfix(loss=scalars["loss"], lr=scalars["lr"], ema=scalars["momentum"], ips=images_per_s)
        if self.writer is not None:
            for k, v in scalars.items():
                self.writer.add_scalar(k if "/" in k else f"train/{k}", v, self.step)
            for k in stats:
                self.writer.add_scalar(f"masks/{k}", reduced[f"masks/{k}"], self.step)

    def _check_finite(self):
        if jdist.any_rank(bool(self.nonfinite), self.dist):
            raise NonFiniteLossError(f"loss became NaN/inf at or before step {self.step}; stopping without "
                                     f"writing a checkpoint (the last good one in {self.run_dir / 'checkpoints'} "
                                     "is kept). Lower optim.lr, enable optim.grad_clip or use training.precision fp32")

    def _end_of_epoch(self, mean_loss: float):
        """Epoch-end logging, the optional k-NN monitor, and the epoch checkpoint scored by ``checkpoint.monitor``."""
        if self.writer is not None:
            self.writer.add_scalar("train/epoch_loss", mean_loss, self.step)
        metric = mean_loss if self.cfg.checkpoint.monitor == "loss" else None
        if self.cfg.eval.every_epochs and self.epoch % self.cfg.eval.every_epochs == 0:
            from jepa.eval import knn_monitor
            acc = knn_monitor(self)
            if acc is not None:
                if self.writer is not None:
                    self.writer.add_scalar("eval/knn_top1", acc, self.step)
                if self.cfg.checkpoint.monitor == "knn":
                    metric = -acc
        every = self.cfg.checkpoint.every_epochs
        if every and self.epoch % every == 0 and self.epoch < self.cfg.training.epochs:
            self.save_checkpoint(metric=metric)
        elif self.epoch >= self.cfg.training.epochs:
            self._last_metric = metric

    # ------------------------------------------------------------------ checkpoints

    def data_stream(self) -> dict:
        """What fixes the batch sequence and the schedules; a resumed run is exact only if these match."""
        return {"seed": self.cfg.training.seed, "world_size": self.dist.world_size,
                "batch_size": self.cfg.data.batch_size, "batches_per_epoch": self.data.batches_per_epoch,
                "accum_steps": self.cfg.training.accum_steps, "total_steps": self.total_steps,
                "warmup_steps": self.schedules.warmup_steps}

    def state_dict(self) -> dict:
        """Everything needed to continue exactly, as tensors and Python primitives (loads with weights_only=True).

        The mask sampler and data order draw from generators seeded by (seed, rank, epoch,
        batch index), so ``epoch`` and ``batch_in_epoch`` are their whole RNG state.
        """
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
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
            "rng": rng,
            "config": self.cfg.to_dict(),
        }

    def save_checkpoint(self, metric: float | None = None, final: bool = False) -> Path | None:
        """Atomically write the step checkpoint (rank 0), keep the last N, and link best.pt to the best by metric.

        Lower ``metric`` is better (the epoch loss, or minus the k-NN accuracy).
        """
        self._check_finite()
        if final and metric is None:
            metric = getattr(self, "_last_metric", None)
        path = checkpoint_path(self.run_dir, self.step)
        is_best = metric is not None and metric < self.best_metric
        if is_best:
            self.best_metric = metric
        state = self.state_dict() if jdist.is_sharded(self.model) else None  # FSDP: gathering is collective
        if self.is_main:
            if not (getattr(self, "_saved_step", None) == self.step and path.is_file()):
                atomic_save(state if state is not None else self.state_dict(), path)
                self._saved_step = self.step
            if is_best:
                atomic_link(path, path.parent / BEST_NAME)
            prune(self.run_dir, self.cfg.checkpoint.keep_last)
        jdist.barrier(self.dist)
        return path

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
        self.best_metric = state.get("best_metric", math.inf)
        self.skipped_steps.fill_(state.get("skipped_steps", 0))
        torch.set_rng_state(state["rng"]["torch"])
        if self.device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)

    def _resume(self, resume: str | None):
        """Continue from ``resume`` (a file, or 'auto': the newest valid checkpoint of the run dir).

        Without ``resume`` a run dir that already holds checkpoints is refused, so a repeated
        command never overwrites or prunes another run's checkpoints.
        """
        if not resume:
            existing = list_checkpoints(self.run_dir)
            if existing:
                raise CheckpointError(f"{self.run_dir} already holds checkpoints (newest: {existing[0].name}); "
                                      "continue that run with --resume auto, or give a new run another --run-dir")
            return
        if resume == "auto":
            path, state = find_latest_valid(self.run_dir, warn=log.warning) if self.is_main else (None, None)
            path = jdist.broadcast_object(path, self.dist)  # every rank resumes from the file rank 0 chose
            if path is None:
                log.info("--resume auto: no valid checkpoint in %s, starting fresh", self.run_dir / "checkpoints")
                self._set_aside_newer(0)
                return
            if state is None:
                state = load_checkpoint(path)
        else:
            path, state = Path(resume), load_checkpoint(resume)
        saved = state["config"]
        current = self.cfg.to_dict()
        for key in ("model", "masks"):
            if saved.get(key) != current[key]:
                changed = sorted(k for k in current[key] if saved.get(key, {}).get(k) != current[key][k])
                raise CheckpointError(f"{path} was written with a different '{key}' config section "
                                      f"({', '.join(f'{key}.{k}' for k in changed)}); resume with the run's own "
                                      f"config ({self.run_dir / 'config.yaml'})")
        self.load_state_dict(state)
        stream = state.get("data_stream", {})
        changed = [f"{k} {stream[k]} -> {v}" for k, v in self.data_stream().items() if k in stream and stream[k] != v]
        if changed and self.is_main:
            log.warning("resuming %s with a different data stream or schedule (%s): training continues, but not "
                        "as the uninterrupted run would", path, ", ".join(changed))
        jdist.barrier(self.dist)
        self._set_aside_newer(self.step)
        if self.is_main:
            log.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.step, self.epoch,
                     self.batch_in_epoch)

    def _set_aside_newer(self, step: int):
        if self.is_main:
            moved = set_aside_newer(self.run_dir, step)
            if moved:
                log.warning("moved %d checkpoint(s) newer than step %d out of the way (kept, not deleted): %s",
                            len(moved), step, ", ".join(str(p) for p in moved))

    def resume_command(self) -> str:
        """The command line that continues this run."""
        cmd = ["python", "-m", "jepa.train", "--config", str(self.run_dir / "config.yaml"),
               "--run-dir", str(self.run_dir), "--resume", "auto"]
        if self.cfg.training.stop_at_step is not None:
            cmd += ["--training.stop_at_step", "null"]
        return shlex.join(cmd)

    def _stop(self, why: str):
        """Checkpoint now and tell the user how to continue."""
        path = self.save_checkpoint()
        if self.is_main:
            print(f"\n{why} after step {self.step}/{self.total_steps}; checkpoint {path} written. Resume with:\n"
                  f"  {self.resume_command()}", file=sys.stderr)

    # ------------------------------------------------------------------ signals and profiling

    def _install_signal_handlers(self) -> dict:
        """SIGINT/SIGTERM: finish the current step, checkpoint, exit 0; a second signal stops at once.

        Returns the previous handlers for ``_restore_signal_handlers``.
        """
        def request_stop(signum, frame):
            if self.stop_requested:
                print(f"\nsecond {signal.Signals(signum).name}: stopping now without a checkpoint "
                      f"(the last one in {self.run_dir / 'checkpoints'} is kept)", file=sys.stderr)
                raise KeyboardInterrupt
            self.stop_requested = True
            if self.is_main:
                print(f"\n{signal.Signals(signum).name} received: finishing step {self.step + 1}, then saving "
                      "a checkpoint (send it again to stop at once)", file=sys.stderr)
        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[sig] = signal.signal(sig, request_stop)
            except ValueError:  # not the main thread (e.g. embedded use); signals stay as they are
                break
        return previous

    @staticmethod
    def _restore_signal_handlers(previous: dict):
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    def _profiler(self):
        if not self.profile:
            return None
        p = self.cfg.profiling
        out = self.run_dir / "profile"
        prof = trace_profiler(out, p.wait, p.warmup, p.active, self.device, worker_name=f"rank{self.dist.rank}")
        prof.start()
        if self.is_main:
            log.info("profiling %d steps after %d; traces in %s (tensorboard --logdir %s)",
                     p.active, p.wait + p.warmup, out, out)
        return prof


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jepa.train", description=__doc__.splitlines()[0],
        epilog="Any config key can be overridden as --section.key value, e.g. --training.epochs 3")
    add_config_args(parser)
    parser.add_argument("--resume", metavar="auto|PATH",
                        help="continue from the newest valid checkpoint of the run dir (auto) or a file")
    parser.add_argument("--run-dir", help="where logs and checkpoints go (default logging.run_dir or runs/<name>)")
    parser.add_argument("--profile", action="store_true", help="write torch.profiler traces to <run>/profile")
    cfg, args = config_from_cli(parser, argv)
    rank = os.environ.get("RANK", "0")  # under torchrun only rank 0 logs progress; the others warnings and errors
    logging.basicConfig(level=logging.INFO if rank == "0" else logging.WARNING,
                        format="%(asctime)s %(message)s" if rank == "0" else f"%(asctime)s [rank {rank}] %(message)s",
                        datefmt="%H:%M:%S")
    trainer = None
    try:
        trainer = Trainer(cfg, run_dir=args.run_dir, resume=args.resume, profile=args.profile)
        result = trainer.train()
    except (ConfigError, CheckpointError, FileNotFoundError, NonFiniteLossError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and not isinstance(e, (CheckpointError, NonFiniteLossError)) \
                and "xformers" not in str(e):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if trainer is not None:
            jdist.cleanup(trainer.dist)
    if trainer.is_main:
        print(f"done: {result['stopped']} at step {result['step']} in {result['seconds']:.0f}s; "
              f"run dir {result['run_dir']} (tensorboard --logdir {result['run_dir']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
