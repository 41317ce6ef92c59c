"""I-JEPA / H-JEPA pre-training: ``python -m jepa.train --config configs/X.yaml [--section.key value ...]``.

One optimizer step (SPEC §4): schedule values → forward (target branch without
grad, context branch on context tokens only, predictor) → loss → backward →
clip → optimizer step → zero grads → EMA of the target encoder → logging.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.profiler import record_function

import kernels
from jepa import distributed as jdist
from jepa.checkpoint import (FORMAT, CheckpointError, atomic_save, checkpoint_path, find_latest_valid,
                             load_checkpoint, prune)
from jepa.config import Config, ConfigError, add_config_args, config_from_cli
from jepa.data import Batch, TrainBatches
from jepa.losses import elementwise_loss, expand_targets, gather_targets, pool_blocks, prediction_loss, vicreg_terms
from jepa.models import build_model
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
    """AdamW with two groups: weights decay, biases and all 1-D parameters (norms) do not."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad or name.startswith("target_encoder."):
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    groups = [{"params": decay, "apply_wd": True, "weight_decay": optim_cfg.weight_decay},
              {"params": no_decay, "apply_wd": False, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=optim_cfg.lr, betas=tuple(optim_cfg.betas), eps=optim_cfg.eps)


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
        if device.type == "cuda" and self.dist.enabled:
            device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(device)
        self.device = device
        self.is_main = self.dist.is_main
        kernels.set_backend(t.kernels)
        warn_unused_vicreg(cfg.loss)
        if t.deterministic:
            torch.use_deterministic_algorithms(True)
        torch.manual_seed(t.seed)

        self.model = build_model(cfg, device)
        self.data = TrainBatches(cfg, dataset, self.dist.rank, self.dist.world_size, pin_memory=device.type == "cuda")
        self.steps_per_epoch = self.data.batches_per_epoch // t.accum_steps
        if self.steps_per_epoch < 1:
            raise ConfigError(f"training.accum_steps={t.accum_steps} needs at least that many batches per epoch, "
                              f"but there are {self.data.batches_per_epoch}")
        self.total_steps = self.steps_per_epoch * t.epochs
        self.schedules = build_schedules(cfg.optim, self.total_steps, self.steps_per_epoch)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.amp_dtype = pick_precision(t.precision, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)

        self.online = self.model  # what forward/backward go through (DDP-wrapped when distributed)
        if self.dist.enabled:
            self.online = DDP(self.model, device_ids=[device.index] if device.type == "cuda" else None)
        self.target_encoder = self.model.target_encoder
        if t.compile:
            mode = "max-autotune" if t.compile == "max-autotune" else None
            self.model.context_encoder.compile(mode=mode)
            self.model.predictor.compile(mode=mode)
            self.target_encoder.compile(mode=mode)
        self.ema_pairs = (list(self.model.target_encoder.parameters()), list(self.model.context_encoder.parameters()))

        self.step = 0          # optimizer steps completed
        self.epoch = 0
        self.batch_in_epoch = 0  # loader batches of ``epoch`` already consumed
        self.best_metric = math.inf
        self.stop_requested = False
        self.skipped_steps = torch.zeros((), device=device)
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=device)

        self.run_dir = Path(run_dir or cfg.logging.run_dir or Path("runs") / cfg.name)
        self.writer = None
        if resume:
            self._resume(resume)
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_text(self.run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            if cfg.logging.tensorboard:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=self.step or None)
        self.profile = profile or cfg.profiling.enabled

    # ------------------------------------------------------------------ the step

    def forward_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of one micro-batch: target features without grad, then context → predictor → loss."""
        cfg = self.cfg.loss
        with record_function("target_forward"), torch.no_grad():
            h = self.target_encoder(batch.images)                                   # [B, N, D]
        with record_function("context_forward"):
            z, preds = self.online(batch.images, batch.ctx_idx, batch.tgt_idx, batch.block_hw)
        tgt_idx = expand_targets(batch.tgt_idx, batch.ctx_idx.shape[0])
        kind = cfg.base if cfg.type == "combined" else cfg.type
        parts = {}
        with record_function("loss"):
            loss = None
            for level, (pred, weight) in enumerate(zip(preds, cfg.level_weights)):
                if level == 0:
                    lv = prediction_loss(pred, h, tgt_idx, kind, cfg.beta, cfg.normalize_targets,
                                         cfg.normalize_embeddings)
                else:
                    tgt = pool_blocks(gather_targets(h, tgt_idx, cfg.normalize_targets), batch.block_hw, 2 ** level)
                    if cfg.normalize_embeddings:
                        pred, tgt = F.normalize(pred.float(), dim=-1), F.normalize(tgt, dim=-1)
                    lv = elementwise_loss(pred, tgt, kind, cfg.beta)
                if len(preds) > 1:
                    parts[f"loss/level{level}"] = lv.detach()
                loss = weight * lv if loss is None else loss + weight * lv
            if cfg.type == "combined":
                vic = vicreg_settings(cfg)
                pooled = z.float().mean(dim=1)                                       # [E·B, D]
                var, cov = vicreg_terms(pooled)
                inv = F.mse_loss(pooled, F.layer_norm(h.float(), h.shape[-1:]).mean(dim=1).repeat(
                    batch.ctx_idx.shape[0], 1))
                reg = vic["vicreg_var_weight"] * var + vic["vicreg_cov_weight"] * cov + vic["vicreg_inv_weight"] * inv
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
        for i, batch in enumerate(micro_batches):
            sync = i == n - 1 or not self.dist.enabled
            with (contextlib.nullcontext() if sync else self.online.no_sync()):
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype != torch.float32):
                    loss, parts = self.forward_loss(batch)
                with record_function("backward"):
                    self.scaler.scale(loss / n).backward()
            total += loss.detach().float() / n
        with record_function("optimizer"):
            if self.cfg.optim.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.online_parameters(), self.cfg.optim.grad_clip)
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
            kernels.ema_update_(self.ema_pairs[0], self.ema_pairs[1], momentum)
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
        self._install_signal_handlers()
        self._log_start()
        progress = Progress(self.total_steps, initial=self.step, enabled=self.is_main and cfg.logging.progress)
        profiler = self._profiler()
        last_log_t, last_log_step = time.time(), self.step
        epoch_loss, epoch_n = torch.zeros((), device=self.device), 0
        result = {"stopped": "completed"}
        try:
            if self.step >= self.total_steps:
                result["stopped"] = "already complete"
                return result
            for group in self.micro_batches():
                if group is None:
                    mean = (epoch_loss / max(1, epoch_n)).item()
                    self._end_of_epoch(mean)
                    epoch_loss, epoch_n = torch.zeros((), device=self.device), 0
                    continue
                metrics = self.train_step(group)
                epoch_loss += metrics["loss"]
                epoch_n += 1
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
                    self.save_checkpoint()
                    result["stopped"] = f"stop_at_step {stop_at}"
                    break
                if jdist.any_rank(self.stop_requested, self.dist, self.device):
                    self.save_checkpoint()
                    result["stopped"] = "signal"
                    if self.is_main:
                        print(f"\nstopped by signal after step {self.step}; checkpoint written. Resume with:\n"
                              f"  python -m jepa.train --config {self.run_dir / 'config.yaml'} --resume auto",
                              file=sys.stderr)
                    break
            else:
                self.save_checkpoint(final=True)
        finally:
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
        log.info("device %s, precision %s, kernels %s, world size %d", self.device,
                 str(self.amp_dtype).replace("torch.", ""), kernels.backend(), self.dist.world_size)
        log.info("global batch %d (per-process batch %d x %d processes x %d accumulation steps); lr as configured",
                 self._global_batch(), self.cfg.data.batch_size, self.dist.world_size, self.cfg.training.accum_steps)
        log.info("%d steps (%d epochs x %d steps), %.2fM trainable parameters, run dir %s", self.total_steps,
                 self.cfg.training.epochs, self.steps_per_epoch, n_params / 1e6, self.run_dir)

    def _log(self, metrics: dict, images_per_s: float, progress):
        self._check_finite()
        scalars = {k: (jdist.all_reduce_mean(v.float(), self.dist).item() if torch.is_tensor(v) else v)
                   for k, v in metrics.items()}
        stats = self.data.sampler.stats() if hasattr(self.data.sampler, "stats") else {}
        scalars["images_per_s"] = images_per_s
        if self.scaler.is_enabled():
            scalars["skipped_steps"] = self.skipped_steps.item()
        if not self.is_main:
            return
        progress.set_postfix(loss=scalars["loss"], lr=scalars["lr"], ema=scalars["momentum"], ips=images_per_s)
        if self.writer is not None:
            for k, v in scalars.items():
                self.writer.add_scalar(k if "/" in k else f"train/{k}", v, self.step)
            for k, v in stats.items():
                if isinstance(v, (int, float)):
                    self.writer.add_scalar(f"masks/{k}", v, self.step)

    def _check_finite(self):
        if bool(self.nonfinite):
            raise NonFiniteLossError(f"loss became NaN/inf at or before step {self.step}; stopping without "
                                     f"writing a checkpoint (the last good one in {self.run_dir / 'checkpoints'} "
                                     "is kept). Lower optim.lr, enable optim.grad_clip or use training.precision fp32")

    def _end_of_epoch(self, mean_loss: float):
        if self.writer is not None:
            self.writer.add_scalar("train/epoch_loss", mean_loss, self.step)
        metric = mean_loss
        if self.cfg.eval.every_epochs and self.epoch % self.cfg.eval.every_epochs == 0:
            from jepa.eval import knn_monitor
            acc = knn_monitor(self)
            if self.writer is not None and acc is not None:
                self.writer.add_scalar("eval/knn_top1", acc, self.step)
            if self.cfg.checkpoint.monitor == "knn" and acc is not None:
                metric = -acc
        every = self.cfg.checkpoint.every_epochs
        if every and self.epoch % every == 0 and self.epoch < self.cfg.training.epochs:
            self.save_checkpoint(metric=metric)
        elif self.epoch >= self.cfg.training.epochs:
            self._last_metric = metric

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict:
        return {
            "format": FORMAT,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "best_metric": self.best_metric,
            "rng": {"torch": torch.get_rng_state(), "seed": self.cfg.training.seed},
            "config": self.cfg.to_dict(),
        }

    def save_checkpoint(self, metric: float | None = None, final: bool = False) -> Path | None:
        """Atomically write the step checkpoint (rank 0), keep the last N and the best by the monitored metric."""
        self._check_finite()
        if final and metric is None:
            metric = getattr(self, "_last_metric", None)
        path = checkpoint_path(self.run_dir, self.step)
        if self.is_main:
            state = self.state_dict()
            atomic_save(state, path)
            best = self.run_dir / "checkpoints" / "best.pt"
            if metric is not None and metric < self.best_metric:
                self.best_metric = metric
                state["best_metric"] = metric
                atomic_save(state, best)
            prune(self.run_dir, self.cfg.checkpoint.keep_last)
        jdist.barrier(self.dist)
        return path

    def load_state_dict(self, state: dict):
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.best_metric = state.get("best_metric", math.inf)
        torch.set_rng_state(state["rng"]["torch"])

    def _resume(self, resume: str):
        if resume == "auto":
            path, state = find_latest_valid(self.run_dir, warn=lambda m: log.warning(m))
            if state is None:
                log.info("--resume auto: no checkpoint in %s, starting fresh", self.run_dir)
                return
        else:
            path, state = Path(resume), load_checkpoint(resume)
        saved = state.get("config", {})
        for key in ("model", "masks"):
            if saved.get(key) != self.cfg.to_dict()[key]:
                raise CheckpointError(f"{path} was written with a different '{key}' config section; "
                                      f"resume with the run's own config ({self.run_dir / 'config.yaml'})")
        self.load_state_dict(state)
        if self.is_main:
            log.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.step, self.epoch,
                     self.batch_in_epoch)

    # ------------------------------------------------------------------ signals and profiling

    def _install_signal_handlers(self):
        def request_stop(signum, frame):
            if self.stop_requested:  # a second signal: stop now
                raise KeyboardInterrupt
            self.stop_requested = True
            if self.is_main:
                print(f"\n{signal.Signals(signum).name} received: finishing step {self.step + 1}, then saving",
                      file=sys.stderr)
        try:
            signal.signal(signal.SIGINT, request_stop)
            signal.signal(signal.SIGTERM, request_stop)
        except ValueError:  # not the main thread (e.g. embedded use); signals stay default
            pass

    def _profiler(self):
        if not self.profile:
            return None
        p = self.cfg.profiling
        out = self.run_dir / "profile"
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        prof = torch.profiler.profile(
            activities=activities,
            schedule=torch.profiler.schedule(wait=p.wait, warmup=p.warmup, active=p.active, repeat=1),
            on_trace_ready=torch.profiler.tensorboard_trace_handler(str(out), worker_name=f"rank{self.dist.rank}"),
            record_shapes=True, profile_memory=True, with_stack=False)
        prof.start()
        if self.is_main:
            log.info("profiling %d steps after %d; traces in %s (tensorboard --logdir %s)",
                     p.active, p.wait + p.warmup, out, out)
        return prof


def atomic_text(path: Path, text: str):
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
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
