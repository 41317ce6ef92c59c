"""Where ``TrainLogger``'s scalars and pictures are written: TensorBoard (``<run_dir>/tb``) and Weights & Biases.

Each sink has ``start()``, ``scalar(tag, value, step)``, ``image(tag, hwc_uint8, step)`` and ``close()``; rank 0
opens them (``open_sinks``). ``wandb`` is an optional package (``pip install 'jepa-trainer[wandb]'``); W&B's own
environment variables (``WANDB_MODE``, ``WANDB_DIR``, ``WANDB_ENTITY``, ``WANDB_API_KEY``, ...) apply.
"""
from __future__ import annotations

import os
from pathlib import Path

from jepa.errors import ConfigError, UserError
from jepa.io import atomic_write_text

WANDB_ID_FILE = "wandb_id"  # in the run dir: the W&B run that ``--resume`` continues


class TensorBoardSink:
    """A ``SummaryWriter`` on ``<run_dir>/tb``; a resumed run purges the events after its step."""

    def __init__(self, run_dir: Path, start_step: int):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=start_step or None)

    def start(self):
        pass

    def scalar(self, tag: str, value: float, step: int):
        self.writer.add_scalar(tag, value, step)

    def image(self, tag: str, image, step: int):
        self.writer.add_image(tag, image, step, dataformats="HWC")

    def close(self):
        self.writer.flush()


def import_wandb():
    """The ``wandb`` module, or the one-line error saying how to install it."""
    try:
        import wandb
    except ImportError:
        raise ConfigError("logging.wandb: true needs the wandb package, which is not installed: "
                          "pip install 'jepa-trainer[wandb]' (or set logging.wandb: false)") from None
    return wandb


class WandbSink:
    """One W&B run per run dir: the resolved config as its config, the scalars and pictures at their steps.

    The run starts with the training loop (``start``); its id is kept in ``<run_dir>/wandb_id``, so a resumed
    run (``start_step`` > 0) continues the same W&B run. Without ``WANDB_DIR`` its files go under the run dir.
    """

    def __init__(self, cfg, run_dir: Path, start_step: int):
        self.wandb = import_wandb()
        self.cfg, self.run_dir, self.resumed = cfg, Path(run_dir), start_step > 0
        self.run = None

    def start(self):
        if self.run is None:
            self.run = self.open_run()

    def open_run(self):
        """``wandb.init`` with the stored id on resume; W&B's own failures (no login, ...) as one-line errors."""
        id_file = self.run_dir / WANDB_ID_FILE
        run_id = id_file.read_text().strip() if self.resumed and id_file.is_file() else None
        where = {} if os.environ.get("WANDB_DIR") else {"dir": str(self.run_dir)}
        try:
            run = self.wandb.init(project=self.cfg.logging.wandb_project, config=self.cfg.to_dict(),
                                  name=os.environ.get("WANDB_NAME", self.run_dir.name), id=run_id,
                                  resume="allow" if run_id else None, **where)
        except self.wandb.errors.Error as e:
            raise UserError(f"logging.wandb: W&B could not start a run: {str(e).splitlines()[0]} "
                            "(run `wandb login`, or set WANDB_MODE=offline)") from None
        atomic_write_text(id_file, f"{run.id}\n")
        return run

    def scalar(self, tag: str, value: float, step: int):
        self.start()
        self.run.log({tag: float(value)}, step=step)

    def image(self, tag: str, image, step: int):
        self.start()
        self.run.log({tag: self.wandb.Image(image)}, step=step)

    def close(self):
        if self.run is not None:
            self.run.finish()
            self.run = None


def open_sinks(cfg, run_dir: Path, start_step: int) -> list:
    """The sinks ``logging.tensorboard`` and ``logging.wandb`` turn on (call on rank 0 only)."""
    sinks = []
    if cfg.logging.tensorboard:
        sinks.append(TensorBoardSink(run_dir, start_step))
    if cfg.logging.wandb:
        sinks.append(WandbSink(cfg, run_dir, start_step))
    return sinks
