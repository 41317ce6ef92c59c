"""Hugging Face ``datasets`` as image data (``data.dataset: hf``): where a split's rows are, and the split loaded.

``data.hf_path`` is a hub name (read online, cached by the library), a ``save_to_disk`` folder, a folder of
data files (the hub's layout: ``train-*.parquet``, ``test-*.parquet``) or a glob of parquet files, where
``{split}`` stands for the split's name. The library is optional (``pip install 'jepa-trainer[hf]'``) and
imported only here, when an hf dataset is read. Images stay encoded and are decoded per item, like image
folders (:class:`EncodedImages`); streaming over parquet row groups is in :mod:`jepa.data.hf_stream`.
"""
from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from jepa.data.datasets.decode import BadImageError
from jepa.data.datasets.errors import DatasetNotFoundError
from jepa.data.datasets.folder import EncodedImages
from jepa.errors import ConfigError

INSTALL = "pip install 'jepa-trainer[hf]'"
HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
FILE_TYPES = {".parquet": "parquet", ".arrow": "arrow"}


@dataclass(frozen=True)
class HFOptions:
    """The ``data.hf_*`` keys: where the dataset is, the split trained on, its columns, streaming or not."""

    path: str | None
    split: str = "train"
    image_column: str = "image"
    label_column: str | None = "label"
    streaming: bool = False


def hf_options(d) -> HFOptions:
    """The hf options of ``cfg.data`` (a mixture part's root or a command's --data-root replaces the path)."""
    return HFOptions(d.hf_path, d.hf_split, d.hf_image_column, d.hf_label_column, d.hf_streaming)


def import_datasets():
    """The ``datasets`` module, or a one-line error saying how to install it."""
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"data.dataset: hf needs the Hugging Face datasets library, which is not installed: "
                          f"{INSTALL}") from None
    return datasets


def split_name(opts: HFOptions, split: str) -> str:
    """The dataset's name of the split a command asks for: ``train`` is ``data.hf_split``, others as given."""
    return opts.split if split == "train" else split


def pick_split(name: str, splits, where: str) -> str:
    """``name`` if the dataset has it (``test`` falls back to ``validation``), else an error listing its splits."""
    splits = [str(s) for s in splits]
    if name in splits:
        return name
    if name == "test" and "validation" in splits:
        return "validation"
    raise DatasetNotFoundError(f"data.hf_path {where}: no split {name!r}; its splits: {', '.join(splits) or 'none'} "
                               "(data.hf_split names the training split, python -m jepa.eval --test-split the "
                               "test split)")


def is_pattern(path: str) -> bool:
    """Whether ``path`` names files (a glob, a {split} pattern or one data file) rather than a folder or hub name."""
    return any(c in path for c in "*?[{") or Path(path).suffix in FILE_TYPES


def split_files(opts: HFOptions, split: str) -> list[str]:
    """The data files of ``split`` named by a file pattern: ``{split}`` filled in, or the one split a plain glob
    names (``data.hf_split``)."""
    path = os.path.expanduser(opts.path)
    if "{split}" not in path and split != opts.split:
        raise DatasetNotFoundError(f"data.hf_path {opts.path!r} names the files of one split ({opts.split}), not "
                                   f"{split!r}; put {{split}} in it (/data/x/{{split}}-*.parquet) to find the others")
    pattern = path.replace("{split}", split)
    files = sorted(glob.glob(pattern, recursive=True))
    if not files:
        raise DatasetNotFoundError(f"data.hf_path {opts.path!r}: no files match {pattern!r} (split {split!r}); "
                                   "valid: a hub name, a save_to_disk folder, a folder of parquet files or a "
                                   "parquet glob", [Path(pattern).parent])
    return files


def file_type(files: list[str], where: str) -> str:
    """``parquet`` or ``arrow``: the one format of ``files``."""
    kinds = {FILE_TYPES.get(Path(f).suffix) for f in files}
    if len(kinds) != 1 or None in kinds:
        suffixes = sorted({Path(f).suffix or "(none)" for f in files})
        raise ConfigError(f"data.hf_path {where}: the files must all be .parquet or all .arrow, got "
                          f"{', '.join(suffixes)}")
    return kinds.pop()


def location(path: str) -> str:
    """What ``data.hf_path`` is: ``files``, ``saved`` (a save_to_disk folder), ``folder`` (data files) or ``hub``."""
    local = Path(os.path.expanduser(path))
    if is_pattern(path):
        return "files"
    if local.is_dir():
        saved = (local / "dataset_dict.json").is_file() or (local / "state.json").is_file()
        return "saved" if saved else "folder"
    if local.exists() or not HUB_NAME.match(path):
        raise DatasetNotFoundError(f"data.hf_path {path!r} is neither a folder nor matches files (nor a hub name "
                                   "owner/name); valid: a hub name, a save_to_disk folder, a folder of parquet "
                                   "files or a parquet glob", [local])
    return "hub"


def open_saved(datasets, opts: HFOptions, split: str):
    """The split of a ``save_to_disk`` folder: a DatasetDict's split, or the one Dataset saved (``data.hf_split``)."""
    saved = datasets.load_from_disk(os.path.expanduser(opts.path))
    if isinstance(saved, datasets.DatasetDict):
        return saved[pick_split(split, list(saved), repr(opts.path))]
    return saved if split == opts.split else saved[pick_split(split, [], repr(opts.path))]


def builder(datasets, path: str):
    """The library's builder of a hub name or a folder of data files; a hub failure named in one line."""
    try:
        return datasets.load_dataset_builder(os.path.expanduser(path))
    except (FileNotFoundError, ConnectionError, ValueError, OSError) as exc:
        cause = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DatasetNotFoundError(f"data.hf_path {path!r} is neither a folder nor matches files, and the hub "
                                   f"cannot give it ({cause}); valid: a hub name (online), a save_to_disk folder, "
                                   "a folder of parquet files or a parquet glob", [Path(path)]) from None


def builder_splits(b) -> list[str]:
    """The split names a builder knows (from its data files, else its info)."""
    if b.config.data_files:
        return [str(s) for s in b.config.data_files]
    return [str(s) for s in (b.info.splits or {})]


def open_split(opts: HFOptions, split: str):
    """The map-style ``datasets.Dataset`` of the command's ``split`` (``train`` is ``data.hf_split``)."""
    datasets = import_datasets()
    name, kind = split_name(opts, split), location(opts.path)
    if kind == "files":
        files = split_files(opts, name)
        return datasets.load_dataset(file_type(files, repr(opts.path)), data_files={name: files}, split=name)
    if kind == "saved":
        return open_saved(datasets, opts, name)
    b = builder(datasets, opts.path)
    name = pick_split(name, builder_splits(b), repr(opts.path))
    b.download_and_prepare()
    return b.as_dataset(split=name)


def column(ds, key: str, name: str, where: str) -> str:
    """``name`` if the dataset has that column, else an error naming the key and listing the columns."""
    if name not in ds.column_names:
        raise ConfigError(f"data.{key}: no column {name!r} in {where}; its columns: {', '.join(ds.column_names)}")
    return name


def image_rows(datasets, ds, name: str, where: str):
    """Column ``name`` alone, as encoded images: an Image feature undecoded ({bytes, path}), or bytes as they are."""
    feature = ds.features[name]
    ds = ds.select_columns([name])
    if isinstance(feature, datasets.Image):
        return ds.cast_column(name, datasets.Image(decode=False))
    if isinstance(feature, datasets.Value) and feature.dtype in ("binary", "large_binary"):
        return ds
    raise ConfigError(f"data.hf_image_column: column {name!r} of {where} holds {feature}, not images (an Image "
                      "feature or encoded bytes); its columns: " + ", ".join(ds.column_names))


def label_values(datasets, ds, name: str | None) -> tuple[torch.Tensor, int]:
    """The labels (-1 where missing or unlabelled) and the class count (a ClassLabel's, else the largest + 1)."""
    if name is None:
        return torch.full((len(ds),), -1, dtype=torch.long), 0
    values = [-1 if v is None else int(v) for v in ds.select_columns([name]).with_format("numpy")[name]]
    labels = torch.tensor(np.asarray(values, dtype=np.int64).reshape(-1))
    feature = ds.features[name]
    if isinstance(feature, datasets.ClassLabel):
        return labels, feature.num_classes
    return labels, int(labels.max()) + 1 if labels.numel() else 0


def encoded(cell, name: str):
    """An image cell as a path or bytes for the decoder: ``{bytes, path}`` (bytes first) or bytes."""
    if isinstance(cell, dict):
        return cell.get("bytes") or cell.get("path")
    if cell is None or isinstance(cell, bytes):
        return cell
    raise BadImageError(name, f"holds a {type(cell).__name__}, not an encoded image")


class HFImageDataset(EncodedImages):
    """A split of a Hugging Face dataset, images decoded per item (the rows are memory-mapped, not loaded)."""

    def __init__(self, rows, labels: torch.Tensor, num_classes: int, *, where: str, split: str, channels: int,
                 image_size: int, root: str):
        super().__init__(None, labels, name="hf", split=split, num_classes=num_classes, channels=channels,
                         image_size=image_size, root=Path(root))
        self.rows, self.where = rows, where
        self.image_column = rows.column_names[0]

    def source(self, index: int):
        name = f"{self.where}[{index}]"
        return encoded(self.rows[int(index)][self.image_column], name), name


def load_hf(opts: HFOptions, split: str, channels: int, image_size: int, subset: int | None) -> HFImageDataset:
    """The command's ``split`` of ``opts`` as an :class:`HFImageDataset` (the first ``subset`` rows if set)."""
    if not opts.path:
        raise ConfigError("data.hf_path: not set; name the Hugging Face dataset (a hub name, a save_to_disk folder, "
                          "a folder of parquet files or a parquet glob), or pass --data-root")
    datasets = import_datasets()
    ds = open_split(opts, split)
    where = f"{opts.path} split {ds.split or split_name(opts, split)}"
    if subset is not None and subset < len(ds):
        ds = ds.select(range(subset))
    rows = image_rows(datasets, ds, column(ds, "hf_image_column", opts.image_column, where), where)
    label = None if opts.label_column is None else column(ds, "hf_label_column", opts.label_column, where)
    labels, num_classes = label_values(datasets, ds, label)
    if not len(ds):
        raise DatasetNotFoundError(f"data.hf_path {where}: the split has no rows")
    return HFImageDataset(rows, labels, num_classes, where=where, split=split, channels=channels,
                          image_size=image_size, root=opts.path)


def with_path(opts: HFOptions | None, root) -> HFOptions:
    """``opts`` (default keys when None) with ``root`` as the path where one is given."""
    opts = opts or HFOptions(None)
    return replace(opts, path=str(root)) if root is not None else opts
