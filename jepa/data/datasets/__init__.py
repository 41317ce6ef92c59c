"""Image datasets for JEPA pre-training and linear probing: the dataset names, load_dataset and the public API.

One module per file format (idx, cifar, stl10, folder, synthetic); load_dataset dispatches on the name.
"""
from __future__ import annotations

import os
from pathlib import Path

from jepa.config.choices import DATASETS, DatasetName
from jepa.data.datasets.cifar import CIFAR, load_cifar
from jepa.data.datasets.convert import LUMA_WEIGHTS, convert_images
from jepa.data.datasets.decode import BadImageError
from jepa.data.datasets.downloads import DOWNLOADS, _checksum_problem, download  # noqa: F401 (tests use it)
from jepa.data.datasets.errors import DatasetFormatError, DatasetNotFoundError, DownloadError
from jepa.data.datasets.folder import (IMAGE_EXTENSIONS, EncodedImages, ImageFolderDataset,  # noqa: F401
                                       load_imagefolder)
from jepa.data.datasets.hf import HFOptions, hf_options, load_hf, with_path
from jepa.data.datasets.idx import load_idx_pair, read_idx
from jepa.data.datasets.memory import ImageDataset
from jepa.data.datasets.mixture import MixtureDataset
from jepa.data.datasets.search import candidate_dirs, default_download_dir, find_dir, resolve_split
from jepa.data.datasets.stl10 import load_stl10
from jepa.data.datasets.synthetic import make_synthetic
from jepa.errors import ConfigError

# load_dataset's ``download`` argument hides the function inside it.
_download = download

__all__ = [
    "BadImageError",
    "DATASETS",
    "DatasetName",
    "DatasetNotFoundError",
    "DatasetFormatError",
    "DownloadError",
    "ImageDataset",
    "ImageFolderDataset",
    "EncodedImages",
    "HFOptions",
    "hf_options",
    "load_options",
    "MixtureDataset",
    "load_dataset",
    "dataset_stats",
    "download",
    "convert_images",
    "read_idx",
]


_NUM_CLASSES = {"fashion_mnist": 10, "mnist": 10, "cifar10": 10, "cifar100": 100, "stl10": 10}

# Module-level so tests (and unusual installations) can repoint them; load_dataset reads it on every call.
SYSTEM_DIRS = {
    "fashion_mnist": (Path("/usr/share/datasets/fashion-mnist"),),
    "mnist": (Path("/usr/share/datasets/mnist"),),
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
    "shards": _IMAGENET_STATS,
    "hf": _IMAGENET_STATS,
}


def load_options(d) -> dict:
    """``load_dataset``'s keyword options that ``cfg.data`` fixes: channels, image size and the hf settings."""
    return dict(channels=d.channels, image_size=d.image_size, hf=hf_options(d))


def load_dataset(name: str, split: str = "train", root: str | os.PathLike | None = None, *,
                 channels: int | None = None, image_size: int | None = None, download: bool = False,
                 base_url: str | None = None, synthetic_size: int = 1024, synthetic_classes: int = 10,
                 seed: int = 0, subset: int | None = None, hf: HFOptions | None = None) -> ImageDataset:
    """Load a dataset split as an :class:`ImageDataset` of ``(uint8 [C, S, S], label)`` items.

    ``channels`` (1 or 3) and ``image_size`` convert the images once at load
    time; None keeps the native format (imagefolder defaults to 3 x 224,
    synthetic to 3 x 32).  ``download=True`` fetches MNIST, Fashion-MNIST and
    CIFAR when they are missing.  ``subset=n`` keeps the first n items (for
    imagefolder in class-then-file-name order).  ``hf`` holds the ``data.hf_*`` keys of an hf dataset (``root``,
    where given, replaces its path; the command's ``train`` split is ``hf.split``).  Synthetic data is for tests and
    benchmarks: it is only produced when ``name="synthetic"``.
    """
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels={channels!r} for dataset {name!r}; valid: None (native), 1 or 3")
    if image_size is not None and (not isinstance(image_size, int) or image_size <= 0):
        raise ValueError(f"image_size={image_size!r} for dataset {name!r}; must be a positive int or None")
    if subset is not None and (not isinstance(subset, int) or subset <= 0):
        raise ValueError(f"subset={subset!r} for dataset {name!r}; must be a positive int or None")
    if name == "shards":
        raise ValueError("shards are streamed for training only (data.shards); to evaluate or monitor, load the "
                         "image folder they were written from (dataset imagefolder)")
    if name == "hf":
        return load_hf(with_path(hf, root), split, channels or 3, image_size or 224, subset)
    split = resolve_split(name, split)

    if name == "synthetic":
        ds = make_synthetic(synthetic_size, synthetic_classes, channels or 3, image_size or 32, seed, split)
        if subset is not None and subset < len(ds):
            ds.images, ds.labels = ds.images[:subset].clone(), ds.labels[:subset].clone()
        return ds
    if name == "imagefolder":
        folder = find_dir(name, split, candidate_dirs(name, root, SYSTEM_DIRS))
        return load_imagefolder(folder, split, channels or 3, image_size or 224, subset)

    try:
        folder = find_dir(name, split, candidate_dirs(name, root, SYSTEM_DIRS))
    except DatasetNotFoundError:
        if not download or name not in DOWNLOADS:
            raise
        folder = default_download_dir(name, root)
        _download(name, folder, base_url)
        folder = find_dir(name, split, [(Path(folder), "download directory")])

    if name in ("mnist", "fashion_mnist"):
        images, labels = load_idx_pair(folder, split, channels, image_size, subset, _NUM_CLASSES[name])
    elif name in CIFAR:
        images, labels = load_cifar(folder, name, split, channels, image_size, subset, _NUM_CLASSES[name])
    else:
        images, labels = load_stl10(folder, split, channels, image_size, subset)
    return ImageDataset(images, labels, name=name, split=split, num_classes=_NUM_CLASSES[name], root=folder)


def dataset_stats(name: str, channels: int | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel ``(mean, std)`` of a dataset's training images, in [0, 1] units.

    For a 1-channel request of an RGB dataset the channels are combined with the
    luma weights: the mean exactly, the std approximately (as if the channels
    were perfectly correlated, ``sum(w_c * std_c)``; natural images are close).
    For a 3-channel request of a gray dataset the single value is repeated.
    """
    if name not in _STATS:
        raise ConfigError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels={channels!r}; valid: None (native), 1 or 3")
    mean, std = _STATS[name]
    if channels is None or channels == len(mean):
        return mean, std
    if channels == 3:
        return mean * 3, std * 3
    return ((round(sum(w * m for w, m in zip(LUMA_WEIGHTS, mean)), 4),),
            (round(sum(w * s for w, s in zip(LUMA_WEIGHTS, std)), 4),))
