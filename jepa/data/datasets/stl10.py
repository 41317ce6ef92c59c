"""STL-10: its raw binary files (column-major 3x96x96 images, 1-based labels), read in chunks."""
from __future__ import annotations

from pathlib import Path

import torch

from jepa.data.datasets.convert import CHUNK, convert_chunk
from jepa.data.datasets.errors import DatasetFormatError

STL_DIR = "stl10_binary"
# split: (image file, label file or None)
STL_FILES = {"train": ("train_X.bin", "train_y.bin"), "test": ("test_X.bin", "test_y.bin"),
             "unlabeled": ("unlabeled_X.bin", None)}


def _needed(split: str) -> list[str]:
    return [f for part in split.split("+") for f in STL_FILES[part] if f]


def expected_files(split: str) -> list[str]:
    return [f"{STL_DIR}/{f}" for f in _needed(split)]


def stl_dir(folder: Path, split: str) -> Path | None:
    """The folder holding ``split``'s files: ``folder/stl10_binary`` or ``folder`` itself; None if neither."""
    needed = _needed(split)
    for candidate in (folder / STL_DIR, folder):
        if all((candidate / f).is_file() for f in needed):
            return candidate
    return None


def _read_stl_images(path: Path, channels, image_size, limit) -> torch.Tensor:
    per_image = 3 * 96 * 96
    size = path.stat().st_size
    if size % per_image:
        raise DatasetFormatError(f"{path}: {size} bytes is not a multiple of one 3x96x96 image "
                                 f"({per_image} bytes); truncated or corrupt")
    n = size // per_image if limit is None else min(limit, size // per_image)
    out_c, out_s = channels or 3, image_size or 96
    out = torch.empty(n, out_c, out_s, out_s, dtype=torch.uint8)
    with open(path, "rb") as f:
        for start in range(0, n, CHUNK):
            count = min(CHUNK, n - start)
            buf = bytearray(f.read(count * per_image))
            if len(buf) != count * per_image:
                raise DatasetFormatError(f"{path}: file ended early while reading image {start}")
            # The files store each channel column-major (x outer, y inner).
            chunk = torch.frombuffer(buf, dtype=torch.uint8).view(count, 3, 96, 96).transpose(2, 3)
            out[start:start + count] = convert_chunk(chunk, out_c, out_s)
    return out


def _read_stl_labels(path: Path, n_images: int, limit) -> torch.Tensor:
    labels = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8).long()
    if labels.numel() != n_images:
        raise DatasetFormatError(f"{path}: {labels.numel()} labels but the image file holds {n_images} images")
    if labels.numel() and (int(labels.min()) < 1 or int(labels.max()) > 10):
        raise DatasetFormatError(f"{path}: labels span [{int(labels.min())}, {int(labels.max())}], "
                                 "expected 1..10")
    labels = labels - 1
    return labels if limit is None else labels[:limit]


def load_stl10(folder, split, channels, image_size, subset):
    """``(uint8 images [N, C, S, S], long labels [N])``; "unlabeled" items get label -1."""
    stl = stl_dir(folder, split)
    images, labels, remaining = [], [], subset
    for part in split.split("+"):
        if remaining is not None and remaining <= 0:
            break
        x_name, y_name = STL_FILES[part]
        x = _read_stl_images(stl / x_name, channels, image_size, remaining)
        if y_name is None:
            y = torch.full((x.shape[0],), -1, dtype=torch.long)
        else:
            n_total = (stl / x_name).stat().st_size // (3 * 96 * 96)
            y = _read_stl_labels(stl / y_name, n_total, remaining)
        images.append(x)
        labels.append(y)
        if remaining is not None:
            remaining -= x.shape[0]
    if len(images) == 1:
        return images[0], labels[0]
    return torch.cat(images), torch.cat(labels)

