"""The run lifecycle that pre-training and fine-tuning share: stateful components, one checkpoint of their
states, and the loop (epochs, logging, checkpoints, ``training.stop_at_step``, signals, stop-and-save).

A run (``jepa.train.Trainer``, ``jepa.finetune.Finetuner``) subclasses ``Run`` and brings its own step
(``train_step``), the batches of one epoch (``epoch_batches``), its ``model`` and ``optimizer`` (stateful
components with the scaler and the RNG: ``components``); what is specific to one of them (the k-NN
monitor, the fine-tuning report) hangs on the hooks ``announce``, ``log_step``, ``epoch_metric`` and
``result``. A checkpoint is the run's position plus ``component.state_dict()`` under
each component's key, so it loads with ``weights_only=True`` and resumes bit-exactly.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Protocol

import torch
import yaml

from jepa import distributed as jdist
from jepa.checkpoint import FORMAT, Checkpointer, restore_rng, rng_state
from jepa.device import pick_precision, setup_process
from jepa.io import atomic_write_text
from jepa.monitoring.sinks import import_wandb
from jepa.profiling import step_profiler
from jepa.signals import StopOnSignal

log = logging.getLogger("jepa")


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class ModelState:
    """A model's weights as a single-process checkpoint holds them (FSDP gathers and scatters them)."""

    def __init__(self, model):
        self.model = model

    def state_dict(self) -> dict:
        return jdist.model_state(self.model)

    def load_state_dict(self, state: dict):
        jdist.load_model_state(self.model, state)


class OptimizerState:
    """An optimizer's state in ``optimizer.state_dict()``'s layout, whatever the distributed strategy."""

    def __init__(self, model, optimizer):
        self.model, self.optimizer = model, optimizer

    def state_dict(self) -> dict:
        return jdist.optimizer_state(self.model, self.optimizer)

    def load_state_dict(self, state: dict):
        jdist.load_optimizer_state(self.model, self.optimizer, state)


class ScalerState:
    """The fp16 grad scaler; a checkpoint without one (not trained in fp16) starts a new scaler."""

    def __init__(self, scaler: torch.amp.GradScaler):
        self.scaler = scaler

    def state_dict(self) -> dict:
        return self.scaler.state_dict()

    def load_state_dict(self, state: dict):
        if state:
            self.scaler.load_state_dict(state)
        elif self.scaler.is_enabled():
            log.warning("the checkpoint has no grad-scaler state (it was not trained in fp16); starting a new scaler")


class RngState:
    """The CPU and device generators (data order and masks draw from their own seeded generators)."""

    def __init__(self, device: torch.device):
        self.device = device

    def state_dict(self) -> dict:
        return rng_state(self.device)

    def load_state_dict(self, state: dict):
        restore_rng(state, self.device)


class Run:
    """What every run has: config, device and precision (computed once here), process group, grad scaler, its
    position (``step``, ``epoch``, ``batch_in_epoch``, the epoch's loss sum), checkpoints and the loop."""

    kind = "pretrain"  # the Checkpointer's kind: a checkpoint resumes only a run of its own kind

    def __init__(self, cfg):
        self.cfg = cfg
        if cfg.logging.wandb:
            import_wandb()  # without the optional package, stop before anything is built
        self.device, self.dist = setup_process(cfg)
        self.is_main = self.dist.is_main
        self.amp_dtype = pick_precision(cfg.training.precision, self.device)  # the run's one autocast dtype
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0  # steps done; loader batches of ``epoch`` consumed
        self.epoch_loss, self.epoch_n = torch.zeros((), device=self.device), 0  # sum of the epoch's step losses
        self.profile = False

    # ------------------------------------------------------------------ what a run brings

    epochs: int
    total_steps: int
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    logger: object  # jepa.monitoring.logger.TrainLogger

    def components(self) -> dict[str, Stateful]:
        """The stateful parts, by their checkpoint key (``self.model`` and ``self.optimizer`` as the run built them)."""
        return {"model": ModelState(self.model), "optimizer": OptimizerState(self.model, self.optimizer),
                "scaler": ScalerState(self.scaler), "rng": RngState(self.device)}

    def data_stream(self) -> dict:
        """What fixes the batch sequence and the schedules; a resumed run is exact only if these match."""
        raise NotImplementedError

    def epoch_batches(self):
        """What each step of epoch ``self.epoch`` consumes, from ``batch_in_epoch`` on (advancing it)."""
        raise NotImplementedError

    def train_step(self, batches) -> dict:
        raise NotImplementedError

    def announce(self):
        """Log what the run is about to do."""

    def log_step(self, metrics: dict):
        self.logger.log(self.step, metrics)

    def epoch_metric(self, epoch_loss: float) -> float | None:
        """End-of-epoch work of the run; the metric (lower is better) that picks ``best.pt``, if any."""
        return None

    def check_finite(self):
        """Stop the run if its state went NaN/inf (pre-training checks; a no-op here)."""

    def extra_state(self) -> dict:
        """Checkpoint keys of this kind of run beside the position and the components."""
        return {}

    # ------------------------------------------------------------------ setting up

    def open_checkpoints(self, run_dir: Path, resume: str | None, command: list[str] | None = None) -> dict | None:
        """The run dir's Checkpointer, and the state to continue from (``--resume``), checked against this run."""
        self.run_dir = Path(run_dir)
        self.checkpointer = Checkpointer(self.run_dir, self.cfg.checkpoint.keep_last, self.dist, self.kind, command)
        return self.checkpointer.restore(resume, self.cfg.to_dict(), self.data_stream(),
                                         jdist.model_shapes(self.model))

    def write_config(self):
        if self.is_main:
            atomic_write_text(self.run_dir / "config.yaml", yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))

    # ------------------------------------------------------------------ the loop

    def micro_batches(self):
        """Yield what each step consumes from the resume position; None marks an epoch's end."""
        while self.epoch < self.epochs:
            yield from self.epoch_batches()
            self.epoch += 1
            self.batch_in_epoch = 0
            yield None

    def train(self) -> dict:
        """Train to the end, ``training.stop_at_step`` or a signal; returns why it stopped, the step, the time."""
        t0, stop_at = time.time(), self.cfg.training.stop_at_step
        if self.step >= self.total_steps and self.epoch >= self.epochs:
            return self.result("already complete", t0)
        if stop_at is not None and self.step >= stop_at:
            return self.result(f"stop_at_step {stop_at} (already reached)", t0)
        self.logger.start(self.step, self.total_steps)
        self.announce()
        stop = StopOnSignal(lambda: self.step + 1, self.run_dir / "checkpoints", announce=self.is_main)
        with stop, self.profiler() as profiler:
            try:
                stopped = None
                for batches in self.micro_batches():
                    if batches is None:
                        self.end_of_epoch()
                        continue
                    metrics = self.train_step(batches)
                    profiler.step()
                    stopped = self.after_step(metrics, stop)
                    if stopped:
                        break
            finally:
                self.logger.close()
        return self.result(stopped or "completed", t0)

    def profiler(self):
        """torch.profiler traces of the steps with ``--profile`` (a no-op otherwise)."""
        return step_profiler(self.profile, self.cfg.profiling, self.run_dir / "profile", self.device, self.dist.rank)

    def after_step(self, metrics: dict, stop: StopOnSignal) -> str | None:
        """Log, checkpoint every ``checkpoint.every_steps``, and stop-and-save when asked: returns why it stops."""
        self.epoch_loss += metrics["loss"]
        self.epoch_n += 1
        self.logger.advance(self.step)
        if self.logger.due(self.step):
            self.log_step(metrics)
        every = self.cfg.checkpoint.every_steps
        if every and self.step % every == 0:
            self.save_checkpoint()
        stop_at = self.cfg.training.stop_at_step
        if stop_at is not None and self.step >= stop_at:
            self.stop_and_save(f"stopped at training.stop_at_step {stop_at}")
            return f"stop_at_step {stop_at}"
        if jdist.any_rank(stop.requested, self.dist):
            self.stop_and_save("stopped by signal")
            return "signal"
        return None

    def end_of_epoch(self):
        """The epoch's mean loss, the run's end-of-epoch work, and the epoch checkpoint."""
        mean = jdist.all_reduce_mean(self.epoch_loss / max(1, self.epoch_n), self.dist).item()
        self.epoch_loss, self.epoch_n = torch.zeros((), device=self.device), 0
        self.logger.scalar("train/epoch_loss", mean, self.step)
        metric = self.epoch_metric(mean)
        every = self.cfg.checkpoint.every_epochs
        if self.epoch >= self.epochs or (every and self.epoch % every == 0):
            self.save_checkpoint(metric=metric)

    def result(self, stopped: str, t0: float) -> dict:
        return {"stopped": stopped, "step": self.step, "seconds": round(time.time() - t0, 1),
                "run_dir": str(self.run_dir)}

    # ------------------------------------------------------------------ checkpoints

    @property
    def best_metric(self) -> float:
        return self.checkpointer.best_metric

    def state_dict(self) -> dict:
        """Everything needed to continue exactly, as tensors and Python primitives (loads with weights_only=True).

        The mask sampler and data order draw from generators seeded by (seed, rank, epoch, batch index),
        so ``epoch`` and ``batch_in_epoch`` are their whole RNG state.
        """
        return {"format": FORMAT, "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "epoch_loss": [float(self.epoch_loss), self.epoch_n],
                **{key: part.state_dict() for key, part in self.components().items()},
                "data_stream": self.data_stream(), "config": self.cfg.to_dict(), **self.extra_state()}

    def load_state_dict(self, state: dict):
        for key, part in self.components().items():
            part.load_state_dict(state.get(key))
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        loss_sum, self.epoch_n = state.get("epoch_loss", [0.0, 0])
        self.epoch_loss = torch.full((), loss_sum, device=self.device)

    def save_checkpoint(self, metric: float | None = None) -> Path:
        """Write this step's checkpoint (lower ``metric`` is better for ``best.pt``); never after a non-finite loss."""
        self.check_finite()
        return self.checkpointer.save(self.step, self.state_dict, metric, collective=jdist.is_sharded(self.model))

    def stop_and_save(self, why: str):
        """Checkpoint now and tell the user how to continue."""
        path = self.save_checkpoint()
        self.checkpointer.tell_how_to_resume(why, path, self.step, self.total_steps, self.cfg.training.stop_at_step)
