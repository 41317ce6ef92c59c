"""Synthetic images (class-dependent stripes and blobs) for tests and benchmarks that must not need files."""
from __future__ import annotations

import math

import torch

from jepa.data.datasets.convert import CHUNK
from jepa.data.datasets.memory import ImageDataset


def make_synthetic(n, num_classes, channels, size, seed, split) -> ImageDataset:
    """Oriented stripes plus a class-placed blob, with per-image phase, jitter and noise.

    Class structure comes from ``seed`` alone, so train and test share it; the
    per-image randomness differs between splits.
    """
    if num_classes < 1:
        raise ValueError(f"synthetic_classes={num_classes}; must be >= 1")
    if n < 1:
        raise ValueError(f"synthetic_size={n}; must be >= 1")
    proto = torch.Generator().manual_seed(seed)
    angles = (torch.arange(num_classes) + 0.25 * torch.rand(num_classes, generator=proto)) * math.pi / num_classes
    freqs = 1.5 + (torch.arange(num_classes) % 3).float() + torch.rand(num_classes, generator=proto)
    centers = 0.25 + 0.5 * torch.rand(num_classes, 2, generator=proto)
    colors = 0.3 + 0.7 * torch.rand(num_classes, channels, generator=proto)

    split_index = {"train": 1, "val": 2, "test": 3}[split]
    g = torch.Generator().manual_seed(seed * 1_000_003 + split_index)
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    yy, xx = coords.view(1, size, 1), coords.view(1, 1, size)
    images = torch.empty(n, channels, size, size, dtype=torch.uint8)
    for start in range(0, n, CHUNK):
        lab = labels[start:start + CHUNK]
        k = lab.numel()
        phase = 2 * math.pi * torch.rand(k, 1, 1, generator=g)
        jitter = 0.06 * torch.randn(k, 2, generator=g)
        theta = angles[lab].view(k, 1, 1)
        proj = xx * torch.cos(theta) + yy * torch.sin(theta)
        stripes = 0.5 + 0.5 * torch.sin(2 * math.pi * freqs[lab].view(k, 1, 1) * proj + phase)
        cx = (centers[lab, 0] + jitter[:, 0]).view(k, 1, 1)
        cy = (centers[lab, 1] + jitter[:, 1]).view(k, 1, 1)
        blob = torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 0.12 ** 2))
        pattern = (0.45 * stripes + 0.55 * blob).unsqueeze(1) * colors[lab].view(k, channels, 1, 1)
        pattern = pattern + 0.08 * torch.randn(k, channels, size, size, generator=g)
        images[start:start + k] = (pattern * 255).round_().clamp_(0, 255).to(torch.uint8)
    return ImageDataset(images, labels, name="synthetic", split=split, num_classes=num_classes)

