"""Frozen-encoder evaluation: ``python -m jepa.eval --checkpoint PATH --dataset NAME [--protocol PROTOCOL]``.

The protocols are fixed (never tuned per checkpoint), so numbers are comparable:

* features: the frozen TARGET encoder (``--encoder context`` for the other one) on the
  test-time input (resized at load time, normalised with the training mean/std), mean
  over output tokens after the final norm (``--features last4``: the final norm applied
  to each of the last 4 blocks' outputs, token-mean, concatenated);
* linear probe: features standardised with the train split's mean/std, a linear
  softmax classifier fitted on the whole train split by full-batch L-BFGS
  (``LINEAR_PROBE``), top-1 on the test split;
* k-NN: k = 20 (and 10, 100 from the same search) nearest train features by cosine
  similarity, votes weighted by ``exp(similarity / 0.07)``, top-1 on the test split;
* ``linear-sgd`` and ``attentive``: the streamed probes of ``jepa.eval.probes`` (settings in the
  ``probe`` config section, overridable as ``--probe.key value``); ``all`` runs every protocol.

Results of several calls on the same checkpoint, data and features accumulate in one JSON report
(``python -m jepa.finetune`` adds its results there too).

``--baselines`` adds the same architecture at its random initialisation (the encoder
the run started from) and raw pixels. Features are cached per checkpoint file content.
"""
from __future__ import annotations

import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Literal

import torch

from jepa import cli
from jepa.checkpoint import check_output
from jepa.config import config_from_dict, parse_overrides
from jepa.data.datasets import load_dataset, load_options
from jepa.device import autocast, pick_device, pick_precision
from jepa.errors import ConfigError
from jepa.eval.features import (FEATURES, cache_path, cached_features, extract_features, load_source,
                                random_init_encoder, run_data_root)
from jepa.eval.probes.attentive import attentive_probe
from jepa.eval.probes.data import training_augment
from jepa.eval.probes.knn import KNN, knn_predict_many
from jepa.eval.probes.linear import LINEAR_PROBE, linear_probe
from jepa.eval.probes.linear_sgd import linear_sgd_probe
from jepa.eval.report import METHODS, format_table, report_path, write_report
from jepa.models import pool_tokens
from jepa.data.transforms import eval_transform

Protocol = Literal["linear", "knn", "both", "linear-sgd", "attentive", "all"]
PROTOCOLS: tuple[str, ...] = Protocol.__args__


def run_protocols(train, test, num_classes: int, protocol: str = "both") -> dict:
    """``{"linear": top1, "knn": top1 at k=20, "knn_k": {k: top1}}`` (those requested) for cached features."""
    out = {}
    if protocol in ("linear", "both", "all"):
        out["linear"] = round(linear_probe(train[0], train[1], test[0], test[1], num_classes), 6)
    if protocol in ("knn", "both", "all"):
        ks = sorted({KNN["k"], *KNN["also_k"]})
        preds = knn_predict_many(train[0], train[1], test[0], num_classes, ks)
        out["knn_k"] = {str(k): round(p.eq(test[1]).float().mean().item(), 6) for k, p in preds.items()}
        out["knn"] = out["knn_k"][str(KNN["k"])]
    return out


def streamed_protocols(protocol: str, encoder, cfg, train_ds, test_ds, transform, features: str = "mean",
                       device="cpu", progress: bool = False) -> dict:
    """``{"linear_sgd": top1, "attentive": top1}`` (those requested) for one source. ``encoder=None`` is raw
    pixels: flattened for the linear probe; no attentive probe (a bag of pixel patches has no positions)."""
    wanted = [p for p in ("linear-sgd", "attentive") if protocol in (p, "all")]
    out = {}
    if "linear-sgd" in wanted:
        feature_fn = (lambda x: x.flatten(1)) if encoder is None else (lambda x: pool_tokens(encoder, x, features))
        augment = training_augment(cfg, transform.mean.tolist(), transform.std.tolist())
        out["linear_sgd"] = round(linear_sgd_probe(feature_fn, train_ds, test_ds, transform, train_ds.num_classes,
                                                   cfg.probe, device, augment, progress), 6)
    if "attentive" in wanted and encoder is not None:
        heads = cfg.probe.attentive_heads or cfg.model.num_heads
        out["attentive"] = round(attentive_probe(encoder, encoder.embed_dim, heads, train_ds, test_ds, transform,
                                                 train_ds.num_classes, cfg.probe, device, progress), 6)
    return out


def evaluate(checkpoint: str | Path, dataset: str | None = None, protocol: str = "both", encoder: str = "target",
             features: str = "mean", baselines: bool = False, root: str | None = None,
             train_subset: int | None = None, test_subset: int | None = None, test_split: str = "test",
             batch_size: int = 256, device: str = "cpu", cache: bool = True, progress: bool = True,
             out: str | Path | None = None, num_heads: int | None = None, image_size: int | None = None,
             overrides: dict | None = None, precision: str = "auto") -> dict:
    """Run the protocols on a checkpoint (and baselines), write (or add to) the JSON report, return it.

    ``precision`` as ``training.precision`` (``auto``: bf16 on CUDA and on CPUs with bf16 matrix units).
    ``overrides``: dotted config keys (``{"probe.sgd_epochs": 5}``) applied to the checkpoint's config.
    """
    if protocol not in PROTOCOLS:
        raise ConfigError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    checkpoint = Path(checkpoint)
    t0 = time.time()
    cfg, trained, step, digest = load_source(checkpoint, encoder, device, num_heads, image_size)
    if dataset is None and step is None:  # foreign weights: no step, no training config
        raise ConfigError(f"--dataset is required: {checkpoint} holds no training config to take it from")
    if overrides:
        cfg = config_from_dict(cfg.to_dict(), overrides)
    name = dataset or cfg.data.dataset
    root = run_data_root(cfg, name) if root is None else root
    mean, std = trained.normalization["mean"], trained.normalization["std"]
    load = load_options(cfg.data)
    train_ds = load_dataset(name, "train", root, subset=train_subset, **load)
    test_ds = load_dataset(name, test_split, root, subset=test_subset, **load)
    transform = eval_transform(cfg, trained.normalization)
    cache_dir = checkpoint.parent / "eval_cache" if cache else None
    amp_dtype = pick_precision(precision, torch.device(device))
    data_key = {"precision": str(amp_dtype), "dataset": name, "root": str(train_ds.root), "train_n": len(train_ds),
                "test_n": len(test_ds),
                "test_split": test_split, "size": cfg.data.image_size, "channels": cfg.data.channels,
                "mean": list(mean), "std": list(std)}

    sources = {"pretrained": (trained, {"checkpoint_sha256": digest, "encoder": encoder},
                              f"{checkpoint.stem}.{encoder}")}
    if baselines:
        sources["random_init"] = (random_init_encoder(cfg, device),
                                  {"random_init": cfg.to_dict()["model"], "seed": cfg.training.seed}, "random_init")
        sources["raw_pixels"] = (None, {"raw_pixels": True}, None)

    results = {}
    for method, (model, key, label) in sources.items():
        t1 = time.time()
        acc = {}
        if protocol in ("linear", "knn", "both", "all"):
            split_feats = []
            for split, ds in (("train", train_ds), (test_split, test_ds)):
                path = None
                if cache_dir is not None and model is not None:
                    path = cache_path(cache_dir, f"{label}.{name}.{split}.{features}",
                                      {**key, **data_key, "split": split, "features": features})
                if progress and model is not None and not (path is not None and path.is_file()):
                    print(f"{METHODS[method]} features: {name} {split}, {len(ds)} images", file=sys.stderr)
                split_feats.append(cached_features(path, lambda ds=ds, model=model: extract_features(
                    model, ds, transform, features, batch_size, device, progress=progress, amp_dtype=amp_dtype)))
            acc = {**run_protocols(split_feats[0], split_feats[1], train_ds.num_classes, protocol),
                   "feature_dim": int(split_feats[0][0].shape[1])}
        if progress and protocol in ("linear-sgd", "attentive", "all"):
            print(f"{METHODS[method]}: {protocol} on {name}", file=sys.stderr)
        with autocast(device, amp_dtype):
            acc.update(streamed_protocols(protocol, model, cfg, train_ds, test_ds, transform, features, device,
                                          progress))
        results[method] = {**acc, "seconds": round(time.time() - t1, 1)}

    report = {"checkpoint": str(checkpoint), "checkpoint_sha256": digest, "step": step, "encoder": encoder,
              "features": features, "precision": str(amp_dtype).replace("torch.", ""), "dataset": name,
              "test_split": test_split, "train_images": len(train_ds),
              "test_images": len(test_ds), "linear_probe": LINEAR_PROBE, "knn": KNN, "results": results,
              "seconds": round(time.time() - t0, 1)}
    settings = dataclasses.asdict(cfg.probe)
    for p, key, prefix in (("linear-sgd", "linear_sgd", "sgd_"), ("attentive", "attentive_probe", "attentive_")):
        if protocol in (p, "all"):
            report[key] = {k: v for k, v in settings.items() if k.startswith(prefix) or k in ("batch_size", "seed")}
    out = Path(out) if out else report_path(checkpoint, name)
    report = write_report(report, out)
    report["json"] = str(out)
    return report


def main(argv: list[str] | None = None) -> int:
    return cli.run(run, argv)


def run(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="python -m jepa.eval", description=__doc__.splitlines()[0],
                                     epilog="--probe.key value overrides a probe setting (docs/evaluation.md)")
    parser.add_argument("--checkpoint", required=True,
                        help="training checkpoint, exported encoder, official I-JEPA .pth.tar or Hugging Face "
                             "IJepaModel directory (docs/interop.md)")
    parser.add_argument("--dataset", help="labelled dataset to evaluate on (default: the one trained on)")
    parser.add_argument("--data-root", help="where the dataset lives (default: the run's data.root for the dataset "
                        "it trained on, else the usual search path)")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="both",
                        help="linear (L-BFGS) and knn on cached features (both), linear-sgd and attentive "
                             "streamed probes, or all (default: both)")
    parser.add_argument("--encoder", choices=("target", "context"), default="target",
                        help="which frozen encoder gives the features (default: target)")
    parser.add_argument("--features", choices=FEATURES, default="mean",
                        help="mean: token-mean of the output; last4: concatenated means of the last 4 blocks")
    parser.add_argument("--baselines", action="store_true", help="also evaluate random init and raw pixels")
    parser.add_argument("--train-subset", type=int, help="use only the first N train images")
    parser.add_argument("--test-subset", type=int, help="use only the first N test images")
    parser.add_argument("--test-split", default="test", help="split to report top-1 on (default: test)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    cli.add_precision(parser)
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--out", help="JSON report path (default: next to the checkpoint)")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists (never an input or a "
                        "training checkpoint)")
    parser.add_argument("--num-heads", type=int, help="head count of an official checkpoint (default: from the "
                        "official width table)")
    parser.add_argument("--image-size", type=int, help="evaluate at this input size (default: the encoder's; "
                        "the position table is interpolated or recomputed)")
    args, rest = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for flag in ("train_subset", "test_subset", "batch_size", "num_heads", "image_size"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    overrides = parse_overrides(rest)
    bad = [k for k in overrides if not k.startswith("probe.")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join('--' + k for k in bad)} (only --probe.* settings can be "
                     "overridden here)")
    device = str(pick_device(args.device, "--device"))
    out = check_output(args.out, [args.checkpoint], args.force) if args.out else None
    report = evaluate(args.checkpoint, args.dataset, args.protocol, args.encoder, args.features, args.baselines,
                      args.data_root, args.train_subset, args.test_subset, args.test_split, args.batch_size,
                      device, not args.no_cache, not args.no_progress, out, args.num_heads, args.image_size, overrides,
                      args.precision)
    step = "" if report["step"] is None else f"step {report['step']}, "
    print(f"{report['checkpoint']} ({step}{report['encoder']} encoder, {report['features']} "
          f"features) on {report['dataset']}: {report['train_images']} train / {report['test_images']} "
          f"{report['test_split']} images")
    print(format_table(report))
    print(f"wrote {report['json']} ({report['seconds']:.0f}s)")
    return 0
