"""Image datasets for JEPA pre-training and linear probing.

Every loader returns an :class:`ImageDataset` whose items are
``(uint8 tensor [C, S, S], int label)``.  The array datasets (MNIST,
Fashion-MNIST, CIFAR-10/100, STL-10) are decoded once into a single in-memory
uint8 tensor, already converted to the requested channel count and size, so
that a training step can slice a whole batch with :meth:`ImageDataset.get_batch`
and augment it on the fly (see :mod:`jepa.transforms`).

Files are looked up in this order (first hit wins): the ``root`` argument (and
``root/<name>``), ``$JEPA_DATA/<name>``, ``$JEPA_DATA``, the system location
(Debian's ``dataset-fashion-mnist`` package installs Fashion-MNIST into
``/usr/share/datasets/fashion-mnist``) and ``./data/<name>``.
"""
from __future__ import annotations

import bisect
import gzip
import hashlib
import http.client
import io
import math
import os
import pickle
import struct
import sys
import tarfile
import tempfile
import time
import urllib.request
import zlib
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from jepa.io import fsync_dir

__all__ = [
    "DATASETS",
    "DatasetNotFoundError",
    "DatasetFormatError",
    "DownloadError",
    "ImageDataset",
    "ImageFolderDataset",
    "MixtureDataset",
    "load_dataset",
    "dataset_stats",
    "download",
    "convert_images",
    "read_idx",
]

DATASETS = ("fashion_mnist", "mnist", "cifar10", "cifar100", "stl10", "imagefolder", "synthetic")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

# ITU-R BT.601 luma weights, the ones Pillow's convert("L") uses.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)

_NUM_CLASSES = {"fashion_mnist": 10, "mnist": 10, "cifar10": 10, "cifar100": 100, "stl10": 10}
_NATIVE_SHAPE = {"fashion_mnist": (1, 28), "mnist": (1, 28), "cifar10": (3, 32), "cifar100": (3, 32),
                 "stl10": (3, 96)}
_SPLITS = {
    "fashion_mnist": ("train", "test"),
    "mnist": ("train", "test"),
    "cifar10": ("train", "test"),
    "cifar100": ("train", "test"),
    "stl10": ("train", "test", "unlabeled", "train+unlabeled"),
    "imagefolder": ("train", "val", "test"),
    "synthetic": ("train", "val", "test"),
}
# Datasets that ship only train/test accept "val" as another name for "test".
_SPLIT_ALIASES = {"val": "test", "valid": "test", "validation": "test"}

# Module-level so tests (and unusual installations) can repoint them.
SYSTEM_DIRS = {
    "fashion_mnist": (Path("/usr/share/datasets/fashion-mnist"),),
    "mnist": (Path("/usr/share/datasets/mnist"),),
}

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_CIFAR = {
    "cifar10": ("cifar-10-batches-py", "cifar-10-python.tar.gz",
                {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}),
    "cifar100": ("cifar-100-python", "cifar-100-python.tar.gz", {"train": ("train",), "test": ("test",)}),
}
_STL_DIR = "stl10_binary"
_STL_FILES = {"train": ("train_X.bin", "train_y.bin"), "test": ("test_X.bin", "test_y.bin"),
              "unlabeled": ("unlabeled_X.bin", None)}

# Download sources.  URLs, mirrors and archive MD5s are those of torchvision
# (torchvision/datasets/mnist.py: MNIST.mirrors/resources and
# FashionMNIST.mirrors/resources; torchvision/datasets/cifar.py: CIFAR10/CIFAR100
# url and tgz_md5); the Fashion-MNIST archive MD5s are also the ones published
# in zalandoresearch/fashion-mnist README.md.  The third column is the MD5 of
# the *decompressed* IDX file, as listed by public loaders that check unpacked
# files (e.g. torchvision-based FashionMNIST wrappers' ``raw_data`` tables):
# mirrors that re-gzip the data (Debian's dataset-fashion-mnist package ships
# byte-different .gz files with identical content) are accepted through it.
_DOWNLOADS = {
    "mnist": (
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        (("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873", "6bbc9ace898e44ae57da46a324031adb"),
         ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432", "a25bea736e30d166cdddb491f175f624"),
         ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3", "2646ac647ad5339dbf082846283269ea"),
         ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c", "27ae3e4e09519cfbb04c329615203637")),
    ),
    "fashion_mnist": (
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        (("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
         ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe", "9018921c3c673c538a1fc5bad174d6f9"),
         ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79", "8181f5470baa50b63fa0f6fddb340f0a"),
         ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310", "15d484375f8d13e6eb1aabb0c3f46965")),
    ),
    "cifar10": (
        ("https://www.cs.toronto.edu/~kriz/",),
        (("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a", None),),
    ),
    "cifar100": (
        ("https://www.cs.toronto.edu/~kriz/",),
        (("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85", None),),
    ),
}

_IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_STATS = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "stl10": _IMAGENET_STATS,
    "imagefolder": _IMAGENET_STATS,
    "synthetic": _IMAGENET_STATS,
}

_CHUNK = 4096


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are in none of the searched directories; ``searched`` lists them."""

    def __init__(self, message: str, searched: Sequence[Path] = ()):
        super().__init__(message)
        self.searched = [Path(p) for p in searched]


class DatasetFormatError(ValueError):
    """A dataset file exists but is corrupt, truncated or not in the expected format."""


class DownloadError(OSError):
    """A download failed (network error, interrupted transfer or checksum mismatch)."""


# ---------------------------------------------------------------------------
# Datasets


class ImageDataset(torch.utils.data.Dataset):
    """Images held in memory as one uint8 tensor ``images [N, C, S, S]`` with ``labels [N]``.

    Labels are class indices in ``[0, num_classes)``, or -1 for unlabeled items.
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


class ImageFolderDataset(ImageDataset):
    """An ImageNet-style ``<split>/<class>/<image>`` tree decoded per item with Pillow.

    Each image is converted to ``channels``, its shorter side resized to
    ``image_size`` and center-cropped to a square; the training augmentation's
    random-resized-crop then happens on that square.  ``images`` is None.
    """

    def __init__(self, samples: list[tuple[Path, int]], classes: list[str], *, split: str, channels: int,
                 image_size: int, root: Path):
        labels = torch.tensor([label for _, label in samples], dtype=torch.long)
        super().__init__(None, labels, name="imagefolder", split=split, num_classes=len(classes),
                         channels=channels, image_size=image_size, root=root)
        self.samples = samples
        self.classes = classes

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return _decode_image(path, self.channels, self.image_size), label

    def get_batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode and stack the given items; slower than the in-memory datasets."""
        idx = torch.as_tensor(indices, dtype=torch.long).tolist()
        if not idx:
            empty = torch.empty(0, self.channels, self.image_size, self.image_size, dtype=torch.uint8)
            return empty, torch.empty(0, dtype=torch.long)
        images = torch.stack([self[i][0] for i in idx])
        return images, self.labels[torch.tensor(idx, dtype=torch.long)]


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

    def _map_labels(self, part: int, labels: torch.Tensor) -> torch.Tensor:
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
        return image, int(self._map_labels(part, torch.tensor(label)))

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
            labels[mask] = self._map_labels(part, part_labels)
        return images, labels

    def sample_weights(self) -> torch.Tensor:
        """Per-item float64 weights (summing to 1) for a weighted sampler."""
        total = sum(self.weights)
        return torch.cat([torch.full((len(p),), w / total / len(p), dtype=torch.float64)
                          for p, w in zip(self.parts, self.weights)])


# ---------------------------------------------------------------------------
# Public entry points


def load_dataset(name: str, split: str = "train", root: str | os.PathLike | None = None, *,
                 channels: int | None = None, image_size: int | None = None, download: bool = False,
                 base_url: str | None = None, synthetic_size: int = 1024, synthetic_classes: int = 10,
                 seed: int = 0, subset: int | None = None) -> ImageDataset:
    """Load a dataset split as an :class:`ImageDataset` of ``(uint8 [C, S, S], label)`` items.

    ``channels`` (1 or 3) and ``image_size`` convert the images once at load
    time; None keeps the native format (imagefolder defaults to 3 x 224,
    synthetic to 3 x 32).  ``download=True`` fetches MNIST, Fashion-MNIST and
    CIFAR when they are missing.  ``subset=n`` keeps the first n items (for
    imagefolder in class-then-file-name order).  Synthetic data is for tests and
    benchmarks: it is only produced when ``name="synthetic"``.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels={channels!r} for dataset {name!r}; valid: None (native), 1 or 3")
    if image_size is not None and (not isinstance(image_size, int) or image_size <= 0):
        raise ValueError(f"image_size={image_size!r} for dataset {name!r}; must be a positive int or None")
    if subset is not None and (not isinstance(subset, int) or subset <= 0):
        raise ValueError(f"subset={subset!r} for dataset {name!r}; must be a positive int or None")
    split = _resolve_split(name, split)

    if name == "synthetic":
        ds = _make_synthetic(synthetic_size, synthetic_classes, channels or 3, image_size or 32, seed, split)
        if subset is not None and subset < len(ds):
            ds.images, ds.labels = ds.images[:subset].clone(), ds.labels[:subset].clone()
        return ds
    if name == "imagefolder":
        return _load_imagefolder(split, root, channels or 3, image_size or 224, subset)

    try:
        folder = _find_dir(name, split, root)
    except DatasetNotFoundError:
        if not download or name not in _DOWNLOADS:
            raise
        folder = _default_download_dir(name, root)
        _download(name, folder, base_url)
        folder = _find_dir(name, split, folder, search_defaults=False)

    if name in ("mnist", "fashion_mnist"):
        images, labels = _load_idx_pair(folder, split, channels, image_size, subset, _NUM_CLASSES[name])
    elif name in _CIFAR:
        images, labels = _load_cifar(folder, name, split, channels, image_size, subset)
    else:
        images, labels = _load_stl10(folder, split, channels, image_size, subset)
    return ImageDataset(images, labels, name=name, split=split, num_classes=_NUM_CLASSES[name], root=folder)


def dataset_stats(name: str, channels: int | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel ``(mean, std)`` of a dataset's training images, in [0, 1] units.

    For a 1-channel request of an RGB dataset the channels are combined with the
    luma weights: the mean exactly, the std approximately (as if the channels
    were perfectly correlated, ``sum(w_c * std_c)``; natural images are close).
    For a 3-channel request of a gray dataset the single value is repeated.
    """
    if name not in _STATS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels={channels!r}; valid: None (native), 1 or 3")
    mean, std = _STATS[name]
    if channels is None or channels == len(mean):
        return mean, std
    if channels == 3:
        return mean * 3, std * 3
    return ((round(sum(w * m for w, m in zip(LUMA_WEIGHTS, mean)), 4),),
            (round(sum(w * s for w, s in zip(LUMA_WEIGHTS, std)), 4),))


def download(name: str, root: str | os.PathLike, base_url: str | None = None, *,
             progress: bool = True) -> Path:
    """Download a dataset's files into ``root`` and verify their published MD5s.

    Each file goes to a temporary file in ``root``, is fsynced and verified, and
    only when every file of the dataset passed are they renamed into place, so
    an interrupted or corrupt transfer leaves nothing behind.  ``base_url``
    replaces the canonical mirrors (``base_url + file name``).  Files already
    present with a valid checksum are kept.  Returns ``root``.
    """
    if name not in _DOWNLOADS:
        raise ValueError(f"download is not supported for {name!r}; supported: {', '.join(_DOWNLOADS)}"
                         + (f". {_HOW_TO_GET[name]}" if name in _HOW_TO_GET else ""))
    mirrors, files = _DOWNLOADS[name]
    if base_url is not None:
        mirrors = (base_url if base_url.endswith("/") else base_url + "/",)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, Path]] = []
    try:
        for filename, md5, payload_md5 in files:
            final = root / filename
            if final.is_file() and _checksum_problem(final, md5, payload_md5) is None:
                continue
            errors = []
            for mirror in mirrors:
                url = mirror + filename
                try:
                    tmp = _fetch(url, root, filename, progress)
                except DownloadError as exc:
                    errors.append(str(exc))
                    continue
                problem = _checksum_problem(tmp, md5, payload_md5)
                if problem is not None:
                    tmp.unlink(missing_ok=True)
                    errors.append(f"checksum mismatch for {url}: {problem}")
                    continue
                staged.append((tmp, final))
                break
            else:
                raise DownloadError(f"could not download {name} file {filename} into {root}:\n  "
                                    + "\n  ".join(errors))
        for tmp, final in staged:
            os.replace(tmp, final)
        fsync_dir(root)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    return root


_download = download


def convert_images(images: torch.Tensor, channels: int | None = None, image_size: int | None = None) -> torch.Tensor:
    """Convert uint8 ``[N, C, H, W]`` images to ``channels`` and ``image_size`` in batched chunks.

    Gray to RGB repeats the channel, RGB to gray uses the luma weights; resizing
    is bilinear with antialiasing (area-like when shrinking).  None keeps the
    input's value; an already matching tensor is returned as is.
    """
    n, c, h, w = images.shape
    out_c = channels or c
    out_s = image_size or h
    if out_c == c and h == w == out_s:
        return images
    out = torch.empty(n, out_c, out_s, out_s, dtype=torch.uint8)
    for start in range(0, n, _CHUNK):
        out[start:start + _CHUNK] = _convert_chunk(images[start:start + _CHUNK], out_c, out_s)
    return out


# ---------------------------------------------------------------------------
# Locating files

_HOW_TO_GET = {
    "fashion_mnist": ("`apt-get install dataset-fashion-mnist` (installs into "
                      "/usr/share/datasets/fashion-mnist), or set data.download: true "
                      "(load_dataset(..., download=True)), or put the four .gz files from "
                      "https://github.com/zalandoresearch/fashion-mnist in one of the directories above"),
    "mnist": ("set data.download: true (load_dataset(..., download=True)), or put the four .gz files from "
              "https://ossci-datasets.s3.amazonaws.com/mnist/ in one of the directories above"),
    "cifar10": ("set data.download: true (load_dataset(..., download=True)), or put "
                "cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html (or its extracted "
                "cifar-10-batches-py/ folder) in one of the directories above"),
    "cifar100": ("set data.download: true (load_dataset(..., download=True)), or put "
                 "cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html (or its extracted "
                 "cifar-100-python/ folder) in one of the directories above"),
    "stl10": ("automatic download is not supported (2.6 GB); download "
              "https://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz and extract it so that "
              "stl10_binary/ sits in one of the directories above"),
    "imagefolder": ("arrange images as <root>/train/<class>/<image> and <root>/val/<class>/<image> and pass "
                    "root= or set $JEPA_DATA"),
}


def _resolve_split(name: str, split: str) -> str:
    valid = _SPLITS[name]
    if split in valid:
        return split
    if split in _SPLIT_ALIASES and _SPLIT_ALIASES[split] in valid and name not in ("imagefolder", "synthetic"):
        return _SPLIT_ALIASES[split]
    raise ValueError(f"unknown split {split!r} for dataset {name!r}; valid: {', '.join(valid)}"
                     + ("" if name in ("imagefolder", "synthetic") else " ('val' means 'test')"))


def _candidate_dirs(name: str, root) -> list[tuple[Path, str]]:
    candidates = []
    if root is not None:
        root = Path(root).expanduser()
        candidates += [(root, "root argument"), (root / name, "root argument/<name>")]
    env = os.environ.get("JEPA_DATA")
    if env:
        env_path = Path(env).expanduser()
        candidates += [(env_path / name, "$JEPA_DATA/<name>"), (env_path, "$JEPA_DATA")]
    candidates += [(d, "system location") for d in SYSTEM_DIRS.get(name, ())]
    candidates.append((Path.cwd() / "data" / name, "./data/<name>"))
    seen, unique = set(), []
    for path, why in candidates:
        key = os.path.abspath(path)
        if key not in seen:
            seen.add(key)
            unique.append((path, why))
    return unique


def _expected_files(name: str, split: str) -> list[str]:
    if name in ("mnist", "fashion_mnist"):
        return [f"{f}.gz (or uncompressed {f})" for f in _IDX_FILES[split]]
    if name in _CIFAR:
        folder, archive, files = _CIFAR[name]
        return [f"{folder}/{f}" for f in files[split]] + [f"or the archive {archive}"]
    if name == "stl10":
        files = [f for part in split.split("+") for f in _STL_FILES[part] if f]
        return [f"{_STL_DIR}/{f}" for f in files]
    return [f"{split}/<class>/<image>"]


def _has_files(name: str, split: str, folder: Path) -> bool:
    if not folder.is_dir():
        return False
    if name in ("mnist", "fashion_mnist"):
        return all(_idx_path(folder, f) is not None for f in _IDX_FILES[split])
    if name in _CIFAR:
        sub, archive, files = _CIFAR[name]
        return all((folder / sub / f).is_file() for f in files[split]) or (folder / archive).is_file()
    if name == "stl10":
        return _stl_dir(folder, split) is not None
    return _imagefolder_split_dir(folder, split) is not None


def _find_dir(name: str, split: str, root, *, search_defaults: bool = True) -> Path:
    candidates = _candidate_dirs(name, root) if search_defaults else [(Path(root), "download directory")]
    for path, _ in candidates:
        if _has_files(name, split, path):
            return path
    looked = "\n".join(f"  - {os.path.abspath(p)} ({why})" for p, why in candidates)
    raise DatasetNotFoundError(
        f"dataset {name!r} (split {split!r}) not found. Looked in:\n{looked}\n"
        f"Expected files: {', '.join(_expected_files(name, split))}\n"
        f"To get it: {_HOW_TO_GET[name]}.",
        [p for p, _ in candidates])


def _default_download_dir(name: str, root) -> Path:
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("JEPA_DATA")
    if env:
        return Path(env).expanduser() / name
    return Path.cwd() / "data" / name


# ---------------------------------------------------------------------------
# Format readers


def _idx_path(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


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


def _load_idx_pair(folder, split, channels, image_size, subset, num_classes):
    image_file, label_file = (_idx_path(folder, f) for f in _IDX_FILES[split])
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
    _check_labels(labels, num_classes, label_file)
    if subset is not None:
        images, labels = images[:subset].clone(), labels[:subset]
    return convert_images(images.unsqueeze(1), channels, image_size).contiguous(), labels.long()


def _check_labels(labels: torch.Tensor, num_classes: int, source) -> None:
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise DatasetFormatError(f"{source}: labels span [{int(labels.min())}, {int(labels.max())}], "
                                 f"expected 0..{num_classes - 1}")


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that only builds the numpy arrays and builtins a CIFAR batch contains."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR batch file")
        if module.startswith("numpy.core."):
            import numpy
            if hasattr(numpy, "_core"):
                module = "numpy._core." + module[len("numpy.core."):]
        return super().find_class(module, name)


def _read_cifar_batch(data: bytes, source: str, label_key: str):
    try:
        entry = _CifarUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as exc:
        raise DatasetFormatError(f"{source}: not a readable CIFAR python batch: {exc}") from exc
    if not isinstance(entry, dict):
        raise DatasetFormatError(f"{source}: expected a pickled dict, got {type(entry).__name__}")
    entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
    if "data" not in entry or label_key not in entry:
        raise DatasetFormatError(f"{source}: missing key 'data' or {label_key!r}; has {sorted(entry)}")
    images = torch.as_tensor(entry["data"])
    labels = torch.as_tensor(list(entry[label_key]), dtype=torch.long)
    if images.dtype != torch.uint8 or images.dim() != 2 or images.shape[1] != 3 * 32 * 32:
        raise DatasetFormatError(f"{source}: 'data' must be uint8 of shape (N, 3072), got {images.dtype} "
                                 f"{tuple(images.shape)}")
    if images.shape[0] != labels.shape[0]:
        raise DatasetFormatError(f"{source}: {images.shape[0]} images but {labels.shape[0]} labels")
    return images.view(-1, 3, 32, 32), labels


def _cifar_members(folder: Path, name: str) -> dict[str, bytes] | None:
    """Extract the batch files from the archive; return them in memory if ``folder`` is read-only."""
    sub, archive, files = _CIFAR[name]
    archive_path = folder / archive
    wanted = {f"{sub}/{f}" for split_files in files.values() for f in split_files}
    contents = {}
    try:
        with tarfile.open(archive_path, "r:gz") as tar:
            for member in tar:
                name_in_tar = member.name.lstrip("./")
                if name_in_tar in wanted and member.isfile():
                    contents[name_in_tar.split("/", 1)[1]] = tar.extractfile(member).read()
    except (OSError, EOFError, tarfile.TarError, zlib.error) as exc:
        raise DatasetFormatError(f"{archive_path}: cannot read the CIFAR archive (corrupt or truncated?): "
                                 f"{exc}") from exc
    missing = sorted(w for w in wanted if w.split("/", 1)[1] not in contents)
    if missing:
        raise DatasetFormatError(f"{archive_path}: archive lacks {', '.join(missing)}")
    try:
        (folder / sub).mkdir(exist_ok=True)
        for fname, data in contents.items():
            target = folder / sub / fname
            if not target.exists():
                _atomic_write(target, data)
        return None
    except OSError:
        return contents


def _load_cifar(folder, name, split, channels, image_size, subset):
    sub, archive, files = _CIFAR[name]
    label_key = "labels" if name == "cifar10" else "fine_labels"
    in_memory = None
    if not all((folder / sub / f).is_file() for f in files[split]):
        in_memory = _cifar_members(folder, name)
    parts_images, parts_labels, have = [], [], 0
    for fname in files[split]:
        if subset is not None and have >= subset:
            break
        if in_memory is not None:
            data, source = in_memory[fname], f"{folder / archive}:{sub}/{fname}"
        else:
            path = folder / sub / fname
            data, source = path.read_bytes(), str(path)
        images, labels = _read_cifar_batch(data, source, label_key)
        _check_labels(labels, _NUM_CLASSES[name], source)
        parts_images.append(images)
        parts_labels.append(labels)
        have += labels.shape[0]
    images, labels = torch.cat(parts_images), torch.cat(parts_labels)
    if subset is not None:
        images, labels = images[:subset], labels[:subset]
    return convert_images(images, channels, image_size).contiguous(), labels


def _stl_dir(folder: Path, split: str) -> Path | None:
    needed = [f for part in split.split("+") for f in _STL_FILES[part] if f]
    for candidate in (folder / _STL_DIR, folder):
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
        for start in range(0, n, _CHUNK):
            count = min(_CHUNK, n - start)
            buf = bytearray(f.read(count * per_image))
            if len(buf) != count * per_image:
                raise DatasetFormatError(f"{path}: file ended early while reading image {start}")
            # The files store each channel column-major (x outer, y inner).
            chunk = torch.frombuffer(buf, dtype=torch.uint8).view(count, 3, 96, 96).transpose(2, 3)
            out[start:start + count] = _convert_chunk(chunk, out_c, out_s)
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


def _load_stl10(folder, split, channels, image_size, subset):
    stl = _stl_dir(folder, split)
    images, labels, remaining = [], [], subset
    for part in split.split("+"):
        if remaining is not None and remaining <= 0:
            break
        x_name, y_name = _STL_FILES[part]
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


def _imagefolder_split_dir(folder: Path, split: str) -> Path | None:
    names = [split] + (["val"] if split == "test" else [])
    for name in names:
        candidate = folder / name
        if candidate.is_dir() and any(p.is_dir() for p in candidate.iterdir()):
            return candidate
    return None


def _load_imagefolder(split, root, channels, image_size, subset) -> ImageFolderDataset:
    folder = _find_dir("imagefolder", split, root)
    split_dir = _imagefolder_split_dir(folder, split)
    class_source = folder / "train" if (folder / "train").is_dir() else split_dir
    classes = sorted(p.name for p in class_source.iterdir() if p.is_dir())
    index = {c: i for i, c in enumerate(classes)}
    samples = []
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        if class_dir.name not in index:
            raise DatasetFormatError(f"{class_dir}: class {class_dir.name!r} is not among the training classes "
                                     f"in {class_source} ({len(classes)} classes)")
        for path in sorted(class_dir.rglob("*")):
            if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
                samples.append((path, index[class_dir.name]))
    if not samples:
        raise DatasetNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {split_dir}", [split_dir])
    if subset is not None:
        samples = samples[:subset]
    return ImageFolderDataset(samples, classes, split=split, channels=channels, image_size=image_size,
                              root=folder)


def _decode_image(path: Path, channels: int, size: int) -> torch.Tensor:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB")
    except Exception as exc:
        raise DatasetFormatError(f"{path}: cannot decode image: {exc}") from exc
    w, h = img.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    array = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    return array.view(size, size, channels).permute(2, 0, 1).contiguous()


def _make_synthetic(n, num_classes, channels, size, seed, split) -> ImageDataset:
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
    for start in range(0, n, _CHUNK):
        lab = labels[start:start + _CHUNK]
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


def _convert_chunk(x: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    c, h, w = x.shape[1:]
    if c not in (1, 3):
        raise ValueError(f"cannot convert images with {c} channels; supported: 1 (gray) or 3 (RGB)")
    if c == channels and h == w == size:
        return x
    if (h, w) == (size, size) and c == 1:
        return x.expand(-1, channels, -1, -1)
    y = x.float()
    if c == 3 and channels == 1:
        y = (y * torch.tensor(LUMA_WEIGHTS).view(1, 3, 1, 1)).sum(1, keepdim=True)
    if (h, w) != (size, size):
        y = F.interpolate(y, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    y = y.round_().clamp_(0, 255).to(torch.uint8)
    return y.expand(-1, channels, -1, -1) if y.shape[1] == 1 and channels == 3 else y


# ---------------------------------------------------------------------------
# Download helpers


def file_hash(path: str | os.PathLike, algo: str = "md5", opener=open) -> str:
    """Hex digest (``hashlib`` algorithm ``algo``) of the bytes ``opener(path, "rb")`` reads, in 1 MiB blocks."""
    h = hashlib.new(algo)
    with opener(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _checksum_problem(path: Path, md5: str, payload_md5: str | None) -> str | None:
    """None if ``path`` matches the archive MD5 (or its gunzipped payload matches ``payload_md5``)."""
    actual = file_hash(path)
    if actual == md5:
        return None
    detail = f"expected MD5 {md5}, got {actual}"
    if payload_md5 is not None:
        try:
            payload = file_hash(path, opener=gzip.open)
        except (OSError, EOFError, zlib.error) as exc:
            payload = f"unreadable gzip ({exc})"
        if payload == payload_md5:
            return None
        detail += f"; decompressed content: expected MD5 {payload_md5}, got {payload}"
    return detail


def _fetch(url: str, root: Path, filename: str, progress: bool) -> Path:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=root)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            request = urllib.request.Request(url, headers={"User-Agent": "jepa-datasets/1"})
            with urllib.request.urlopen(request, timeout=60) as response:
                total = response.headers.get("Content-Length")
                total = int(total) if total and total.isdigit() else None
                show = progress and (total is None or total > (1 << 20))
                live = show and sys.stderr.isatty()
                done, last = 0, 0.0
                try:
                    while True:
                        block = response.read(1 << 20)
                        if not block:
                            break
                        out.write(block)
                        done += len(block)
                        if live and time.monotonic() - last > 0.5:
                            last = time.monotonic()
                            _progress_line(filename, done, total, "\r")
                finally:
                    if show:
                        _progress_line(filename, done, total, "\r" if live else "", "\n")
            if total is not None and done != total:
                raise DownloadError(f"interrupted transfer from {url}: received {done} of {total} bytes")
            out.flush()
            os.fsync(out.fileno())
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, DownloadError):
            raise
        if isinstance(exc, (OSError, http.client.HTTPException, ValueError)):
            raise DownloadError(f"could not download {url}: {exc}") from exc
        raise
    return tmp


def _progress_line(filename: str, done: int, total: int | None, start: str, end: str = "") -> None:
    if total:
        text = f"{start}  {filename}: {done / 1e6:.1f}/{total / 1e6:.1f} MB ({100 * done // total}%)"
    else:
        text = f"{start}  {filename}: {done / 1e6:.1f} MB"
    sys.stderr.write(text + end)
    sys.stderr.flush()


def _atomic_write(target: Path, data: bytes) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
