"""Full fine-tuning: ``python -m jepa.finetune --checkpoint PATH --dataset NAME [--fraction F | --shots K]``.

The pre-trained encoder (target by default) and a linear head on its token mean are trained on labels
with the ``finetune`` config section (defaults: docs/evaluation.md): AdamW with layer-wise learning-rate
decay, linear warm-up from 0 over ``warmup_fraction`` of the steps then cosine to ``final_lr``, label
smoothing, gradient clipping, the training crop/flip, ``epochs`` epochs (``lowshot_epochs`` on a low-shot
subset). Checkpoints, resume (``--resume auto``, bit-exact on CPU), Ctrl-C, ``--training.stop_at_step``,
the progress line and TensorBoard work as in pre-training, through the same Checkpointer, TrainLogger and
StopOnSignal. The test top-1 after the last step goes into the checkpoint's evaluation JSON (the one
``python -m jepa.eval`` writes) and ``<run>/result.json``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from jepa import cli
from jepa.config import ConfigError, config_from_dict, parse_overrides
from jepa.data.datasets import load_dataset, load_options
from jepa.device import autocast
from jepa.eval import load_source, random_init_encoder, report_path, run_data_root, write_report
from jepa.export import read_encoder, source_config
from jepa.io import atomic_write_text
from jepa.monitoring.logger import TrainLogger
from jepa.optim import layer_decay_groups, optimizer_step, set_schedule
from jepa.eval.probes.data import batches, labelled_indices, low_shot_indices, training_augment
from jepa.eval.probes.linear_sgd import accuracy
from jepa.run import Run
from jepa.schedules import Schedules
from jepa.data.transforms import eval_transform

log = logging.getLogger("jepa")


class Classifier(nn.Module):
    """The encoder and a linear head on the mean of its output tokens: images ``[B, C, H, W]`` to logits."""

    def __init__(self, encoder: nn.Module, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.embed_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).mean(dim=1))


def layer_of(name: str, depth: int) -> int:
    """Layer of a ``Classifier`` parameter for the LR decay: patch embedding 0, block i → i + 1, rest depth + 1."""
    if name.startswith("encoder.patch_embed."):
        return 0
    if name.startswith("encoder.blocks."):
        return int(name.split(".")[2]) + 1
    return depth + 1


def result_key(fraction: float | None, shots: int | None) -> str:
    """Where a result goes in the evaluation JSON: ``finetune``, ``finetune_shots10``, ``finetune_frac0.01``."""
    if shots is not None:
        return f"finetune_shots{shots}"
    return "finetune" if fraction is None or fraction == 1 else f"finetune_frac{fraction:g}"


def default_run_dir(checkpoint: Path, dataset: str, fraction: float | None, shots: int | None, init: str) -> Path:
    """``<run>/finetune/<dataset>-<result key>-<init>`` beside the pre-training run's ``checkpoints/``."""
    return Path(checkpoint).resolve().parent.parent / "finetune" / f"{dataset}-{result_key(fraction, shots)}-{init}"


class Finetuner(Run):
    """One fine-tuning run of a checkpoint's encoder on a labelled dataset (see the module doc)."""

    kind = "finetune"

    def __init__(self, cfg, checkpoint: str | Path, dataset: str | None = None, run_dir: str | Path | None = None,
                 fraction: float | None = None, shots: int | None = None, init: str = "pretrained",
                 encoder: str = "target", root: str | None = None, train_subset: int | None = None,
                 test_subset: int | None = None, resume: str | None = None, command: list[str] | None = None):
        super().__init__(cfg)
        ft, device = cfg.finetune, self.device
        if self.dist.enabled:
            raise ConfigError("python -m jepa.finetune runs in one process; start it without torchrun")
        self.checkpoint, self.init, self.which = Path(checkpoint), init, encoder
        self.fraction, self.shots = fraction, shots
        self.lowshot = shots is not None or fraction not in (None, 1)
        _, trained, self.source_step, self.digest = load_source(self.checkpoint, encoder, device)
        mean, std = trained.normalization["mean"], trained.normalization["std"]
        self.transform = eval_transform(cfg, trained.normalization)
        self.augment = training_augment(cfg, mean, std) if ft.augment else None
        self.dataset = dataset or cfg.data.dataset
        root = run_data_root(cfg, self.dataset) if root is None else root
        load = load_options(cfg.data)
        self.train_ds = load_dataset(self.dataset, "train", root, subset=train_subset, **load)
        self.test_ds = load_dataset(self.dataset, "test", root, subset=test_subset, **load)
        self.indices = low_shot_indices(self.train_ds.labels, ft.seed, fraction, shots)
        self.model, self.optimizer = self.build(trained if init == "pretrained" else random_init_encoder(cfg, device))
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.batch_size = min(ft.batch_size, len(self.indices))
        self.steps_per_epoch = len(self.indices) // self.batch_size
        self.epochs = ft.lowshot_epochs if self.lowshot else ft.epochs
        self.total_steps = self.epochs * self.steps_per_epoch
        self.schedules = Schedules(self.total_steps, int(round(ft.warmup_fraction * self.total_steps)), ft.lr, 0.0,
                                   ft.final_lr, ft.weight_decay, ft.weight_decay)
        state = self.open_checkpoints(run_dir or default_run_dir(self.checkpoint, self.dataset, fraction, shots, init),
                                      resume, command)
        if state is not None:
            self.load_state_dict(state)
        self.write_config()
        self.logger = TrainLogger(cfg, self.run_dir, self.dist, device, None, self.batch_size, self.step)

    def build(self, encoder) -> tuple[Classifier, torch.optim.AdamW]:
        """The classifier (head initialised under ``finetune.seed``) and AdamW with layer-wise LR decay."""
        ft = self.cfg.finetune
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ft.seed)
            model = Classifier(encoder, self.train_ds.num_classes).to(self.device).train()
        depth = len(encoder.blocks)
        groups = layer_decay_groups(model.named_parameters(), lambda n: layer_of(n, depth), depth + 1,
                                    ft.weight_decay, ft.layer_decay)
        return model, torch.optim.AdamW(groups, lr=ft.lr, betas=(0.9, 0.999))

    def train_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict:
        """Cross-entropy of the classifier on one labelled batch, then clip → step → zero the grads."""
        x, y = batch
        lr, wd = self.schedules.lr_at(self.step), self.schedules.wd_at(self.step)
        set_schedule(self.optimizer, lr, wd)
        with autocast(self.device, self.amp_dtype):
            logits = self.model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=self.cfg.finetune.label_smoothing)
        self.scaler.scale(loss).backward()
        optimizer_step(self.optimizer, self.scaler, self.params, self.cfg.finetune.grad_clip)
        self.step += 1
        return {"loss": loss.detach(), "train_top1": logits.argmax(1).eq(y).float().mean(), "lr": lr, "wd": wd}

    def epoch_batches(self):
        """The ``(images, labels)`` batches of epoch ``self.epoch`` from ``batch_in_epoch`` on."""
        for x, y in batches(self.train_ds, self.transform, self.batch_size, self.indices, self.device,
                            self.cfg.finetune.seed, self.epoch, self.augment, self.batch_in_epoch,
                            self.steps_per_epoch):
            self.batch_in_epoch += 1
            yield x, y

    def announce(self):
        log.info("fine-tuning the %s %s encoder of %s on %s: %d train images, %d epochs x %d steps of %d, "
                 "run dir %s", self.init, self.which, self.checkpoint, self.dataset, len(self.indices),
                 self.epochs, self.steps_per_epoch, self.batch_size, self.run_dir)

    def result(self, stopped: str, t0: float) -> dict:
        """Why it stopped and where; once every step is done, the test top-1 (see ``report``)."""
        result = super().result(stopped, t0)
        if self.step >= self.total_steps:
            result.update(self.report())
        return result

    def report(self) -> dict:
        """Test top-1 of the fine-tuned model, logged and added to the checkpoint's evaluation JSON."""
        self.model.eval()
        with autocast(self.device, self.amp_dtype):
            top1 = accuracy(self.model, batches(self.test_ds, self.transform, 256, labelled_indices(self.test_ds),
                                                self.device))
        self.model.train()
        self.logger.scalar("eval/test_top1", top1, self.step)
        self.logger.close()
        key, method = result_key(self.fraction, self.shots), "pretrained" if self.init == "pretrained" else \
            "random_init"
        run = {**dataclasses.asdict(self.cfg.finetune), "train_images": len(self.indices), "epochs": self.epochs,
               "steps": self.total_steps, "batch_size": self.batch_size, "run_dir": str(self.run_dir)}
        report = {"checkpoint": str(self.checkpoint), "checkpoint_sha256": self.digest, "step": self.source_step,
                  "encoder": self.which, "features": "mean", "dataset": self.dataset, "test_split": "test",
                  "train_images": len(self.train_ds), "test_images": len(self.test_ds),
                  "results": {method: {key: round(top1, 6)}}, "finetune_runs": {f"{method}.{key}": run}}
        out = report_path(self.checkpoint, self.dataset)
        write_report(report, out)
        atomic_write_text(self.run_dir / "result.json", json.dumps({"test_top1": top1, **run}, indent=2) + "\n")
        return {"test_top1": top1, "key": key, "method": method, "json": str(out)}

    def data_stream(self) -> dict:
        return {"seed": self.cfg.finetune.seed, "train_images": len(self.indices), "batch_size": self.batch_size,
                "batches_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps,
                "source": self.digest, "init": self.init}

    def extra_state(self) -> dict:
        return {"kind": "finetune"}


def finetune_config(checkpoint: str | Path, overrides: dict):
    """The checkpoint's config with dotted ``overrides``; the model and masks sections cannot change, and the
    pre-training run's ``training.stop_at_step`` does not carry over."""
    fixed = [k for k in overrides if k.split(".")[0] in ("model", "masks")]
    if fixed:
        raise ConfigError(f"{', '.join(fixed)}: the model and masks sections come from the checkpoint")
    described = source_config(read_encoder(checkpoint), Path(checkpoint))  # foreign weights store no config
    return config_from_dict(described.to_dict(), {"training.stop_at_step": None, **overrides})


def main(argv: list[str] | None = None) -> int:
    return cli.run(run, argv)


def run(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = cli.ArgumentParser(
        prog="python -m jepa.finetune", description=__doc__.splitlines()[0],
        epilog="Settings: --finetune.key value (and --training.device, --logging.*, --checkpoint.*, ...); "
               "see docs/evaluation.md")
    parser.add_argument("--checkpoint", required=True, help="training checkpoint or exported encoder (.pt)")
    parser.add_argument("--dataset", help="labelled dataset (default: the one pre-trained on)")
    parser.add_argument("--data-root", help="where the dataset lives (default: the run's data.root for the dataset "
                        "it trained on, else the usual search path)")
    low = parser.add_mutually_exclusive_group()
    low.add_argument("--fraction", type=float, help="low-shot: this fraction of each class (e.g. 0.01 for 1 %%)")
    low.add_argument("--shots", type=int, help="low-shot: this many images per class")
    parser.add_argument("--init", choices=("pretrained", "random"), default="pretrained",
                        help="start from the checkpoint's encoder or from its random init (a from-scratch baseline)")
    parser.add_argument("--encoder", choices=("target", "context"), default="target")
    parser.add_argument("--run-dir", help="default: <run>/finetune/<dataset>-<finetune|finetune_shotsK|...>-<init>")
    parser.add_argument("--resume", metavar="auto|PATH", help="continue a stopped fine-tuning run")
    parser.add_argument("--train-subset", type=int, help="use only the first N train images (quick checks)")
    parser.add_argument("--test-subset", type=int, help="use only the first N test images (quick checks)")
    args, rest = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.fraction is not None and not 0 < args.fraction <= 1:
        parser.error(f"--fraction must be in (0, 1], got {args.fraction}")
    for flag in ("shots", "train_subset", "test_subset"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    cfg = finetune_config(args.checkpoint, parse_overrides(rest))
    run_dir = Path(args.run_dir or default_run_dir(Path(args.checkpoint), args.dataset or cfg.data.dataset,
                                                   args.fraction, args.shots, args.init))
    command = ["python", "-m", "jepa.finetune", *cli.strip_resume(argv)]
    if args.run_dir is None:
        command += ["--run-dir", str(run_dir)]
    tuner = Finetuner(cfg, args.checkpoint, args.dataset, run_dir, args.fraction, args.shots, args.init,
                      args.encoder, args.data_root, args.train_subset, args.test_subset, args.resume, command)
    result = tuner.train()
    if "test_top1" in result:
        print(f"{result['method']} {result['key']}: test top-1 {100 * result['test_top1']:.2f} % after "
              f"{result['step']} steps; added to {result['json']}; run dir {result['run_dir']}")
    else:
        print(f"{result['stopped']} at step {result['step']}; run dir {result['run_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
