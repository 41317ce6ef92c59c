"""A weighted mixture of datasets: their concatenation, drawn in fixed proportions whatever the part sizes."""
from __future__ import annotations

import bisect
import math
from typing import Sequence

import torch

from jepa.data.datasets.memory import ImageDataset


class MixtureDataset(torch.utils.data.Dataset):
    """Concatenation of datasets that a weighted sampler draws in fixed proportions.

    Parts must share ``channels`` and ``image_size`` (load them with the same
    arguments).  :meth:`sample_weights` gives each item of part ``p`` the weight
    ``weights[p] / sum(weights) / len(part p)``, so with a weighted sampler part
    ``p`` is drawn with probability proportional to ``weights[p]`` whatever the
    part sizes.  Labels: ``"offset"`` (default) shifts part ``p``'s labels by the
    class counts of the parts before it (``num_classes`` is their sum);
    ``"shared"`` keeps them (parts share one label space, ``num_classes`` is the
    largest); ``"none"`` makes every label -1.  Unlabeled items (-1) stay -1.
    """

    def __init__(self, parts: Sequence[ImageDataset], weights: Sequence[float], *, labels: str = "offset"):
        parts = list(parts)
        weights = [float(w) for w in weights]
        if not parts:
            raise ValueError("MixtureDataset needs at least one part")
        if len(weights) != len(parts):
            raise ValueError(f"MixtureDataset: {len(parts)} parts but {len(weights)} weights")
        if any(not math.isfinite(w) or w <= 0 for w in weights):
            raise ValueError(f"MixtureDataset weights must be positive and finite, got {weights}")
        if labels not in ("offset", "shared", "none"):
            raise ValueError(f"MixtureDataset labels={labels!r}; valid: 'offset', 'shared', 'none'")
        first = parts[0]
        for i, p in enumerate(parts):
            if len(p) == 0:
                raise ValueError(f"MixtureDataset part {i} ({p.name}) is empty")
            if (p.channels, p.image_size) != (first.channels, first.image_size):
                raise ValueError(
                    f"MixtureDataset parts differ: part 0 ({first.name}) is {first.channels}x{first.image_size}"
                    f"x{first.image_size}, part {i} ({p.name}) is {p.channels}x{p.image_size}x{p.image_size}; "
                    "load every part with the same channels= and image_size=")
        self.parts = parts
        self.weights = weights
        self.label_mode = labels
        self.offsets = [0]
        for p in parts:
            self.offsets.append(self.offsets[-1] + len(p))
        if labels == "offset":
            self.label_offsets = [sum(p.num_classes for p in parts[:i]) for i in range(len(parts))]
            self.num_classes = sum(p.num_classes for p in parts)
        else:
            self.label_offsets = [0] * len(parts)
            self.num_classes = max(p.num_classes for p in parts) if labels == "shared" else 0
        self.name = "mixture(" + "+".join(p.name for p in parts) + ")"
        self.split = "+".join(sorted({p.split for p in parts}))
        self.channels = first.channels
        self.image_size = first.image_size
        self.images = None

    def __len__(self) -> int:
        return self.offsets[-1]

    def mixture_labels(self, part: int, labels: torch.Tensor) -> torch.Tensor:
        """Part ``part``'s ``labels`` as the mixture numbers them: past the earlier parts' classes (``offset``), as
        they are (``shared``) or all -1 (``none``); an unlabelled -1 stays -1."""
        if self.label_mode == "none":
            return torch.full_like(labels, -1)
        return torch.where(labels >= 0, labels + self.label_offsets[part], labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {self.name} of length {len(self)}")
        part = bisect.bisect_right(self.offsets, index) - 1
        image, label = self.parts[part][index - self.offsets[part]]
        return image, int(self.mixture_labels(part, torch.tensor(label)))

    def get_batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gather items from whichever parts hold them, in the order given."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= len(self)):
            raise IndexError(f"indices span [{int(idx.min())}, {int(idx.max())}], outside {self.name} "
                             f"of length {len(self)}")
        bounds = torch.tensor(self.offsets[1:], dtype=torch.long)
        part_of = torch.bucketize(idx, bounds, right=True)
        images = torch.empty(idx.numel(), self.channels, self.image_size, self.image_size, dtype=torch.uint8)
        labels = torch.empty(idx.numel(), dtype=torch.long)
        for part in part_of.unique().tolist():
            mask = part_of == part
            part_images, part_labels = self.parts[part].get_batch(idx[mask] - self.offsets[part])
            images[mask] = part_images
            labels[mask] = self.mixture_labels(part, part_labels)
        return images, labels

    def sample_weights(self) -> torch.Tensor:
        """Per-item float64 weights (summing to 1) for a weighted sampler."""
        total = sum(self.weights)
        return torch.cat([torch.full((len(p),), w / total / len(p), dtype=torch.float64)
                          for p, w in zip(self.parts, self.weights)])

