"""The in-memory image dataset every loader returns: one uint8 tensor a training step slices a batch from."""
from __future__ import annotations

from pathlib import Path

import torch


class ImageDataset(torch.utils.data.Dataset):
    """Images held in memory as one uint8 tensor ``images [N, C, S, S]`` with ``labels [N]``.

    Labels are class indices in ``[0, num_classes)``, or -1 for unlabeled items.  The array
    datasets (MNIST, Fashion-MNIST, CIFAR-10/100, STL-10) are decoded once into this tensor,
    already converted to the requested channel count and size, so that a training step can
    slice a whole batch with :meth:`get_batch` and augment it on the fly (see :mod:`jepa.data.transforms`).
    """

    def __init__(self, images: torch.Tensor | None, labels: torch.Tensor, *, name: str, split: str,
                 num_classes: int, channels: int | None = None, image_size: int | None = None,
                 root: Path | None = None):
        if images is not None:
            if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != images.shape[-2]:
                raise ValueError(f"{name}: images must be a uint8 tensor [N, C, S, S], got "
                                 f"{images.dtype} {tuple(images.shape)}")
            if images.shape[0] != labels.shape[0]:
                raise ValueError(f"{name}: {images.shape[0]} images but {labels.shape[0]} labels")
            channels, image_size = int(images.shape[1]), int(images.shape[-1])
        self.images = images
        self.labels = labels.to(torch.long)
        self.name = name
        self.split = split
        self.num_classes = int(num_classes)
        self.channels = int(channels)
        self.image_size = int(image_size)
        self.root = root

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

    def get_batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(uint8 [B, C, S, S], long labels [B])`` for the given item indices."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.images.index_select(0, idx), self.labels.index_select(0, idx)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, n={len(self)}, "
                f"channels={self.channels}, image_size={self.image_size}, num_classes={self.num_classes})")

