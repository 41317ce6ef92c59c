"""Labelled data for the downstream protocols: batches in a fixed or seeded order, optional training augmentation,
and low-shot subsets.

Every random choice comes from a generator seeded by (seed, epoch, batch), never from the global RNG.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from jepa.data.transforms import BatchAugment
from jepa.optim import set_schedule
from jepa.monitoring.progress import Progress
from jepa.seeds import mix_seed


def labelled_indices(dataset) -> torch.Tensor:
    return (dataset.labels >= 0).nonzero().squeeze(1)


def low_shot_indices(labels: torch.Tensor, seed: int, fraction: float | None = None,
                     shots: int | None = None) -> torch.Tensor:
    """A class-balanced subset (sorted indices): ``shots`` images per class, or ``fraction`` of each class
    (at least one image of each). Neither: every labelled image. The same seed gives the same subset."""
    if fraction is not None and shots is not None:
        raise ValueError("choose --fraction or --shots, not both")
    if fraction is not None and not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if shots is not None and shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    g = torch.Generator().manual_seed(mix_seed(seed, 53))
    picked = []
    for c in torch.unique(labels[labels >= 0]).tolist():
        members = (labels == c).nonzero().squeeze(1)
        members = members[torch.randperm(len(members), generator=g)]
        if shots is not None:
            if shots > len(members):
                raise ValueError(f"--shots {shots}: class {c} has only {len(members)} images")
            keep = shots
        elif fraction is not None:
            keep = max(1, round(fraction * len(members)))
        else:
            keep = len(members)
        picked.append(members[:keep])
    return torch.cat(picked).sort().values if picked else torch.empty(0, dtype=torch.long)


def batches(dataset, transform, batch_size: int, indices: torch.Tensor, device, shuffle_seed: int | None = None,
            epoch: int = 0, augment=None, start: int = 0, count: int | None = None):
    """Yield ``(x [B, C, H, W] normalised on device, labels [B])`` over ``indices``.

    ``shuffle_seed``: a new order every epoch, fixed by (seed, epoch); None keeps ``indices``' order.
    ``augment``: a ``BatchAugment`` applied instead of ``transform``, with a generator per (seed, epoch, batch).
    Batches ``start`` to ``count`` (default: all; the last may be smaller); nothing but the current batch is held.
    """
    order = indices
    if shuffle_seed is not None:
        g = torch.Generator().manual_seed(mix_seed(shuffle_seed, epoch, 59))
        order = indices[torch.randperm(len(indices), generator=g)]
    end = len(order) if count is None else min(len(order), count * batch_size)
    for i in range(start, steps_per_epoch(end, batch_size)):
        images, labels = dataset.get_batch(order[i * batch_size:min((i + 1) * batch_size, end)])
        if augment is not None:
            x = augment(images, torch.Generator().manual_seed(mix_seed(shuffle_seed or 0, epoch, i, 61)))
        else:
            x = transform(images)
        yield x.to(device, non_blocking=True), labels.to(device, non_blocking=True)


def steps_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


def training_augment(cfg, mean, std):
    """The pre-training crop/flip of ``cfg.data`` with the given normalisation (the encoder's)."""
    d = cfg.data
    return BatchAugment(d.image_size, mean, std, crop_scale=tuple(d.crop_scale), crop_ratio=tuple(d.crop_ratio),
                        hflip=d.hflip, random_crop=d.random_crop)


def train_head(head, features, epoch_batches, epochs: int, optimizer, schedules, progress: bool = False):
    """Train ``head`` on frozen ``features(x)`` with cross-entropy: ``epoch_batches(epoch)`` yields ``(x, y)``; the
    schedule's learning rate and weight decay are set before every step."""
    bar = Progress(schedules.total_steps, enabled=progress)
    step = 0
    try:
        for epoch in range(epochs):
            for x, y in epoch_batches(epoch):
                set_schedule(optimizer, schedules.lr_at(step), schedules.wd_at(step))
                with torch.no_grad():
                    f = features(x)
                loss = F.cross_entropy(head(f), y)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                bar.update(step)
            bar.set_postfix(epoch=epoch + 1, loss=float(loss.detach()))
    finally:
        bar.close()
