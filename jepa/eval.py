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
* ``linear-sgd`` and ``attentive``: the streamed probes of ``jepa.probes`` (settings in the
  ``probe`` config section, overridable as ``--probe.key value``); ``all`` runs every protocol.

Results of several calls on the same checkpoint, data and features accumulate in one JSON report
(``python -m jepa.finetune`` adds its results there too).

``--baselines`` adds the same architecture at its random initialisation (the encoder
the run started from) and raw pixels. Features are cached per checkpoint file content.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import sys
import time
from pathlib import Path

from typing import Literal

import torch
import torch.nn.functional as F

from jepa import cli
from jepa.checkpoint import CheckpointError, check_output, load_file
from jepa.config import config_from_dict, parse_overrides
from jepa.data.datasets import load_dataset
from jepa.device import pick_device
from jepa.errors import ConfigError
from jepa.export import encoder_from, read_encoder, source_config, source_digest
from jepa.io import atomic_save, atomic_write_text
from jepa.models import Pooling, build_encoder, pool_tokens
from jepa.models.attention import resolve_backend
from jepa.probes.attentive import attentive_probe
from jepa.probes.data import training_augment
from jepa.probes.linear_sgd import linear_sgd_probe
from jepa.progress import Progress
from jepa.data.transforms import eval_transform

log = logging.getLogger("jepa")

Protocol = Literal["linear", "knn", "both", "linear-sgd", "attentive", "all"]
PROTOCOLS: tuple[str, ...] = Protocol.__args__
LINEAR_PROBE = {"optimizer": "L-BFGS (full batch, strong Wolfe line search, history 20)", "max_iter": 300,
                "l2": 1e-4, "standardize": True}
KNN = {"k": 20, "also_k": [10, 100], "temperature": 0.07, "similarity": "cosine"}
FEATURES: tuple[str, ...] = Pooling.__args__
METHODS = {"pretrained": "pre-trained", "random_init": "random init", "raw_pixels": "raw pixels"}
CACHE_VERSION = "features-v1"


# ---------------------------------------------------------------- features


@torch.no_grad()
def extract_features(encoder, dataset, transform, features: str = "mean", batch_size: int = 256,
                     device="cpu", indices: torch.Tensor | None = None, progress: bool = False,
                     amp_dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Features ``[N, F]`` (float32, CPU) and labels ``[N]`` of ``dataset`` (items ``indices``, default all).

    ``encoder=None`` gives raw pixels: the transformed image, flattened.
    """
    idx = torch.arange(len(dataset)) if indices is None else indices
    if encoder is not None:
        was_training = encoder.training
        encoder.eval()
    bar = Progress(math.ceil(len(idx) / batch_size), enabled=progress)
    out, labels = [], []
    try:
        for i, start in enumerate(range(0, len(idx), batch_size)):
            images, y = dataset.get_batch(idx[start:start + batch_size])
            x = transform(images).to(device)
            if encoder is None:
                f = x.flatten(1)
            else:
                with torch.autocast(torch.device(device).type, dtype=amp_dtype, enabled=amp_dtype != torch.float32):
                    f = pool_tokens(encoder, x, features)
            out.append(f.float().cpu())
            labels.append(y)
            bar.update(i + 1)
            bar.set_postfix(images=start + len(y))  # redraws on a terminal, a line every 30 s in a log
    finally:
        bar.close()
        if encoder is not None:
            encoder.train(was_training)
    return torch.cat(out), torch.cat(labels)


# ---------------------------------------------------------------- protocols


def standardize(train_x: torch.Tensor, test_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale every feature to zero mean, unit std on the train split (constant features are only centred)."""
    mean = train_x.mean(0)
    std = train_x.std(0)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return (train_x - mean) / std, (test_x - mean) / std


def linear_probe(train_x, train_y, test_x, test_y, num_classes: int, max_iter: int = LINEAR_PROBE["max_iter"],
                 l2: float = LINEAR_PROBE["l2"]) -> float:
    """Top-1 on the test split of a softmax classifier on standardised features (see ``LINEAR_PROBE``).

    Minimises mean cross-entropy + ``l2 · ||W||²`` (bias not decayed) with full-batch
    L-BFGS from zero weights: deterministic, no learning rate or epochs to choose.
    """
    xs, xt = standardize(train_x.float(), test_x.float())
    w = torch.zeros(xs.shape[1], num_classes, requires_grad=True)
    b = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-6, tolerance_change=1e-9)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(xs @ w + b, train_y) + l2 * w.pow(2).sum()
        loss.backward()
        return loss
    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return (xt @ w + b).argmax(1).eq(test_y).float().mean().item()


def knn_predict_many(train_x, train_y, test_x, num_classes: int, ks=(KNN["k"],),
                     temperature: float = KNN["temperature"], chunk: int = 1024) -> dict[int, torch.Tensor]:
    """Class predictions ``[T]`` for every k in ``ks`` from one neighbour search: votes of the ``k`` most
    cosine-similar train items, weighted ``exp(sim / t)``."""
    train_n = F.normalize(train_x.float(), dim=1)
    preds: dict[int, list] = {k: [] for k in ks}
    for start in range(0, test_x.shape[0], chunk):
        q = F.normalize(test_x[start:start + chunk].float(), dim=1)
        sims, nn_idx = (q @ train_n.T).topk(min(max(ks), train_n.shape[0]), dim=1)  # sorted, most similar first
        weights, labels = (sims.double() / temperature).exp(), train_y[nn_idx]
        for k in ks:
            votes = torch.zeros(q.shape[0], num_classes, dtype=torch.float64)
            votes.scatter_add_(1, labels[:, :k], weights[:, :k])
            preds[k].append(votes.argmax(1))
    return {k: torch.cat(p) for k, p in preds.items()}


def knn_predict(train_x, train_y, test_x, num_classes: int, k: int = KNN["k"],
                temperature: float = KNN["temperature"], chunk: int = 1024) -> torch.Tensor:
    """Class predictions ``[T]``: votes of the ``k`` most cosine-similar train items, weighted ``exp(sim / t)``."""
    return knn_predict_many(train_x, train_y, test_x, num_classes, (k,), temperature, chunk)[k]


def knn_accuracy(train_x, train_y, test_x, test_y, num_classes: int, k: int = KNN["k"],
                 temperature: float = KNN["temperature"]) -> float:
    return knn_predict(train_x, train_y, test_x, num_classes, k, temperature).eq(test_y).float().mean().item()


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


# ---------------------------------------------------------------- cache


def cache_path(folder: Path, label: str, key: dict) -> Path:
    """``folder/<label>.<hash of key>.pt``: any change of source, data or feature option is a new file."""
    digest = hashlib.sha256(json.dumps({"v": CACHE_VERSION, **key}, sort_keys=True, default=str).encode())
    return folder / f"{label}.{digest.hexdigest()[:16]}.pt"


def cached_features(path: Path | None, compute) -> tuple[torch.Tensor, torch.Tensor]:
    """Load ``(features, labels)`` from ``path`` or compute and store them there (``path=None``: no cache)."""
    if path is not None and path.is_file():
        try:
            data = load_file(path)
            log.info("features from cache %s", path)
            return data["features"], data["labels"]
        except (CheckpointError, KeyError, TypeError) as e:
            log.warning("ignoring unreadable feature cache %s (%s); recomputing", path, e)
    feats, labels = compute()
    if path is not None:
        try:
            atomic_save({"features": feats, "labels": labels}, path)
        except OSError as e:
            log.warning("could not write the feature cache %s (%s); continuing without it", path, e)
    return feats, labels


# ---------------------------------------------------------------- the command


def load_source(path: Path, encoder: str, device, num_heads: int | None = None, image_size: int | None = None):
    """``(model config, trained encoder, step, source digest)`` of anything jepa reads (docs/interop.md).

    Foreign weights store no config: the returned one describes their encoder. ``image_size`` rebuilds
    the encoder for another input size (position table interpolated or recomputed).
    """
    enc = read_encoder(path, encoder, num_heads=num_heads)
    trained = encoder_from(enc, device, path, image_size)
    return source_config(enc, path, image_size), trained, enc["step"], source_digest(path)


def random_init_encoder(cfg, device):
    """The encoder the run started from: built under ``training.seed`` without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.training.seed)
        enc = build_encoder(cfg, resolve_backend(cfg.model.attention, device))
    return enc.to(device).eval()


def run_data_root(cfg, name: str) -> str | None:
    """Where the run found dataset ``name`` (its ``data.root``, or the root of its ``data.mix`` part of that name),
    so a run trained with ``--data.root X`` is evaluated without repeating it; None for another dataset."""
    if cfg.data.mix:
        return next((part.root for part in cfg.data.mix if part.name == name), None)
    return cfg.data.root if name == cfg.data.dataset else None


def evaluate(checkpoint: str | Path, dataset: str | None = None, protocol: str = "both", encoder: str = "target",
             features: str = "mean", baselines: bool = False, root: str | None = None,
             train_subset: int | None = None, test_subset: int | None = None, test_split: str = "test",
             batch_size: int = 256, device: str = "cpu", cache: bool = True, progress: bool = True,
             out: str | Path | None = None, num_heads: int | None = None, image_size: int | None = None,
             overrides: dict | None = None) -> dict:
    """Run the protocols on a checkpoint (and baselines), write (or add to) the JSON report, return it.

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
    load = dict(channels=cfg.data.channels, image_size=cfg.data.image_size)
    train_ds = load_dataset(name, "train", root, subset=train_subset, **load)
    test_ds = load_dataset(name, test_split, root, subset=test_subset, **load)
    transform = eval_transform(cfg, trained.normalization)
    cache_dir = checkpoint.parent / "eval_cache" if cache else None
    data_key = {"dataset": name, "root": str(train_ds.root), "train_n": len(train_ds), "test_n": len(test_ds),
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
                    model, ds, transform, features, batch_size, device, progress=progress)))
            acc = {**run_protocols(split_feats[0], split_feats[1], train_ds.num_classes, protocol),
                   "feature_dim": int(split_feats[0][0].shape[1])}
        if progress and protocol in ("linear-sgd", "attentive", "all"):
            print(f"{METHODS[method]}: {protocol} on {name}", file=sys.stderr)
        acc.update(streamed_protocols(protocol, model, cfg, train_ds, test_ds, transform, features, device, progress))
        results[method] = {**acc, "seconds": round(time.time() - t1, 1)}

    report = {"checkpoint": str(checkpoint), "checkpoint_sha256": digest, "step": step, "encoder": encoder,
              "features": features, "dataset": name, "test_split": test_split, "train_images": len(train_ds),
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


# ---------------------------------------------------------------- the report


REPORT_IDENTITY = ("checkpoint_sha256", "dataset", "test_split", "train_images", "test_images", "encoder", "features")


def report_path(checkpoint: Path, dataset: str) -> Path:
    return checkpoint.with_name(f"{checkpoint.stem}.eval.{dataset}.json")


def write_report(report: dict, out: Path) -> dict:
    """Write ``report`` to ``out``, keeping the other protocols' results of a report there on the same checkpoint
    file and data (``REPORT_IDENTITY``); a report on anything else is replaced. Returns what was written."""
    try:
        old = json.loads(out.read_text()) if out.is_file() else None
    except (OSError, ValueError):
        old = None
    if isinstance(old, dict) and all(old.get(k) == report.get(k) for k in REPORT_IDENTITY):
        results = {m: dict(r) for m, r in old.get("results", {}).items()}
        for method, r in report["results"].items():
            results[method] = {**results.get(method, {}), **r}
        runs = {**old.get("finetune_runs", {}), **report.get("finetune_runs", {})}
        report = {**old, **report, "results": results, **({"finetune_runs": runs} if runs else {})}
    atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    return report


def finetune_label(key: str) -> str:
    """Column name of a fine-tuning result: ``finetune``, ``finetune_shots10``, ``finetune_frac0.01``."""
    if key.startswith("finetune_shots"):
        return f"fine-tune {key[len('finetune_shots'):]}-shot"
    if key.startswith("finetune_frac"):
        return f"fine-tune {100 * float(key[len('finetune_frac'):]):g} %"
    return "full fine-tune"


def format_table(report: dict) -> str:
    """Markdown table: one row per feature source, a column per protocol in the report, top-1 in percent."""
    present = set().union(*(r.keys() for r in report["results"].values()))
    cols = [("linear", "linear probe top-1")] if "linear" in present else []
    if "knn" in present:
        ks = sorted({int(k) for r in report["results"].values() for k in r.get("knn_k", {})} or {KNN["k"]})
        cols += [(f"knn_k.{k}" if k != KNN["k"] else "knn", f"k-NN top-1 (k={k})") for k in ks]
    cols += [(c, h) for c, h in (("linear_sgd", "SGD linear probe top-1"), ("attentive", "attentive probe top-1"))
             if c in present]
    tuned = sorted((c for c in present if c.startswith("finetune")), key=lambda c: (c == "finetune", c))
    cols += [(c, finetune_label(c) + " top-1") for c in tuned]

    def cell(r, col):
        v = r.get("knn_k", {}).get(col.split(".")[1]) if col.startswith("knn_k.") else r.get(col)
        return f"{100 * v:.1f} %" if isinstance(v, (int, float)) else "–"
    lines = ["| features | " + " | ".join(h for _, h in cols) + " |", "|---|" + "---:|" * len(cols)]
    for method in ("raw_pixels", "random_init", "pretrained"):
        r = report["results"].get(method)
        if r is not None:
            lines.append(f"| {METHODS[method]} | " + " | ".join(cell(r, c) for c, _ in cols) + " |")
    return "\n".join(lines)


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
                      device, not args.no_cache, not args.no_progress, out, args.num_heads, args.image_size, overrides)
    step = "" if report["step"] is None else f"step {report['step']}, "
    print(f"{report['checkpoint']} ({step}{report['encoder']} encoder, {report['features']} "
          f"features) on {report['dataset']}: {report['train_images']} train / {report['test_images']} "
          f"{report['test_split']} images")
    print(format_table(report))
    print(f"wrote {report['json']} ({report['seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
