"""The errors every dataset reader raises, and the label-range check the array formats share."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from jepa.errors import UserError


class DatasetNotFoundError(UserError, FileNotFoundError):
    """A dataset's files are in none of the searched directories; ``searched`` lists them."""

    def __init__(self, message: str, searched: Sequence[Path] = (), hint: str = ""):
        super().__init__(message)
        self.searched = [Path(p) for p in searched]
        self.hint = hint

    def __str__(self):
        return f"{self.args[0]}; {self.hint}" if self.hint else self.args[0]


class DatasetFormatError(UserError, ValueError):
    """A dataset file exists but is corrupt, truncated or not in the expected format."""


class DownloadError(UserError, OSError):
    """A download failed (network error, interrupted transfer or checksum mismatch)."""


def check_labels(labels: torch.Tensor, num_classes: int, source) -> None:
    """Raise :class:`DatasetFormatError` naming ``source`` unless every label is in ``[0, num_classes)``."""
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise DatasetFormatError(f"{source}: labels span [{int(labels.min())}, {int(labels.max())}], "
                                 f"expected 0..{num_classes - 1}")
