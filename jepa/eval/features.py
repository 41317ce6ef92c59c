"""The encoders an evaluation reads and their frozen features: a checkpoint's encoder, the random-init baseline,
the run's data root, and features cached per checkpoint file content."""
from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path

import torch

from jepa.checkpoint import CheckpointError, load_file
from jepa.device import autocast
from jepa.export import check_image_size, encoder_from, read_encoder, source_config, source_digest
from jepa.io import atomic_save
from jepa.models import Pooling, build_encoder, pool_tokens
from jepa.models.attention import resolve_backend
from jepa.monitoring.progress import Progress

log = logging.getLogger("jepa")

FEATURES: tuple[str, ...] = Pooling.__args__
CACHE_VERSION = "features-v1"


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
                with autocast(device, amp_dtype):
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


def load_source(path: Path, encoder: str, device, num_heads: int | None = None, image_size: int | None = None):
    """``(model config, trained encoder, step, source digest)`` of anything jepa reads (docs/interop.md).

    Foreign weights store no config: the returned one describes their encoder. ``image_size`` rebuilds
    the encoder for another input size (position table interpolated or recomputed).
    """
    enc = read_encoder(path, encoder, num_heads=num_heads)
    if image_size is not None:
        check_image_size(image_size, enc["spec"]["patch_size"], path, "--image-size")
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
