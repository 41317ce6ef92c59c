"""MNIST and Fashion-MNIST: their IDX files (gzipped or not), read straight into uint8 tensors."""
from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import torch

from jepa.data.datasets.convert import convert_images
from jepa.data.datasets.errors import DatasetFormatError, check_labels

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def idx_path(folder: Path, stem: str) -> Path | None:
    """``folder/stem.gz``, else ``folder/stem``, else None."""
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def has_files(folder: Path, split: str) -> bool:
    return all(idx_path(folder, f) is not None for f in IDX_FILES[split])


def expected_files(split: str) -> list[str]:
    return [f"{f}.gz (or uncompressed {f})" for f in IDX_FILES[split]]


def read_idx(path: str | os.PathLike) -> torch.Tensor:
    """Read an unsigned-byte IDX file (optionally gzipped) into a uint8 tensor of its dimensions."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = bytearray(f.read())
        else:
            data = bytearray(path.read_bytes())
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetFormatError(f"{path}: cannot read IDX file (corrupt or truncated gzip?): {exc}") from exc
    if len(data) < 4:
        raise DatasetFormatError(f"{path}: only {len(data)} bytes, too short for an IDX header")
    zero, dtype_code, ndim = struct.unpack(">HBB", bytes(data[:4]))
    if zero != 0 or dtype_code != 0x08 or ndim == 0:
        raise DatasetFormatError(
            f"{path}: bad IDX magic 0x{int.from_bytes(bytes(data[:4]), 'big'):08x}; expected 0x00000801 "
            "(labels) or 0x00000803 (images), i.e. unsigned-byte data")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetFormatError(f"{path}: truncated IDX header ({len(data)} bytes, need {header})")
    dims = struct.unpack(f">{ndim}I", bytes(data[4:header]))
    expected = header + math.prod(dims)
    if len(data) != expected:
        raise DatasetFormatError(f"{path}: IDX header says shape {dims} ({expected} bytes) but the file has "
                                 f"{len(data)} bytes (truncated or corrupt)")
    return torch.frombuffer(data, dtype=torch.uint8, offset=header).view(*dims)


def load_idx_pair(folder, split, channels, image_size, subset, num_classes):
    """``(uint8 images [N, C, S, S], long labels [N])`` of ``split`` from the IDX pair in ``folder``."""
    image_file, label_file = (idx_path(folder, f) for f in IDX_FILES[split])
    images = read_idx(image_file)
    labels = read_idx(label_file)
    if images.dim() != 3:
        raise DatasetFormatError(f"{image_file}: expected a 3-d IDX image file (N, H, W), got shape "
                                 f"{tuple(images.shape)}")
    if labels.dim() != 1:
        raise DatasetFormatError(f"{label_file}: expected a 1-d IDX label file, got shape {tuple(labels.shape)}")
    if images.shape[0] != labels.shape[0]:
        raise DatasetFormatError(f"{image_file} has {images.shape[0]} images but {label_file} has "
                                 f"{labels.shape[0]} labels")
    check_labels(labels, num_classes, label_file)
    if subset is not None:
        images, labels = images[:subset].clone(), labels[:subset]
    return convert_images(images.unsqueeze(1), channels, image_size).contiguous(), labels.long()

