"""The errors every dataset reader raises, and the label-range check the array formats share."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are in none of the searched directories; ``searched`` lists them."""

    def __init__(self, message: str, searched: Sequence[Path] = ()):
        super().__init__(message)
        self.searched = [Path(p) for p in searched]


class DatasetFormatError(ValueError):
    """A dataset file exists but is corrupt, truncated or not in the expected format."""


class DownloadError(OSError):
    """A download failed (network error, interrupted transfer or checksum mismatch)."""


def check_labels(labels: torch.Tensor, num_classes: int, source) -> None:
    """Raise :class:`DatasetFormatError` naming ``source`` unless every label is in ``[0, num_classes)``."""
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise DatasetFormatError(f"{source}: labels span [{int(labels.min())}, {int(labels.max())}], "
                                 f"expected 0..{num_classes - 1}")
