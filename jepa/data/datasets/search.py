"""Where a dataset's files are: the directories searched, each dataset's splits, and how to get what is missing."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import jepa.data.datasets.cifar as cifar
import jepa.data.datasets.folder as folder
import jepa.data.datasets.idx as idx
import jepa.data.datasets.stl10 as stl10
from jepa.errors import ConfigError
from jepa.data.datasets.errors import DatasetNotFoundError

SPLITS = {
    "fashion_mnist": ("train", "test"),
    "mnist": ("train", "test"),
    "cifar10": ("train", "test"),
    "cifar100": ("train", "test"),
    "stl10": ("train", "test", "unlabeled", "train+unlabeled"),
    "imagefolder": ("train", "val", "test"),
    "synthetic": ("train", "val", "test"),
}
# Datasets that ship only train/test accept "val" as another name for "test".
SPLIT_ALIASES = {"val": "test", "valid": "test", "validation": "test"}

HOW_TO_GET = {
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


def resolve_split(name: str, split: str) -> str:
    valid = SPLITS[name]
    if split in valid:
        return split
    if split in SPLIT_ALIASES and SPLIT_ALIASES[split] in valid and name not in ("imagefolder", "synthetic"):
        return SPLIT_ALIASES[split]
    raise ConfigError(f"unknown split {split!r} for dataset {name!r}; valid: {', '.join(valid)}"
                     + ("" if name in ("imagefolder", "synthetic") else " ('val' means 'test')"))


def candidate_dirs(name: str, root, system_dirs: Mapping[str, Sequence[Path]]) -> list[tuple[Path, str]]:
    """The directories to look for ``name``'s files in, with why each one is searched; first hit wins.

    In order: the ``root`` argument (and ``root/<name>``), ``$JEPA_DATA/<name>``, ``$JEPA_DATA``,
    the system location ``system_dirs[name]`` (Debian's ``dataset-fashion-mnist`` package installs
    Fashion-MNIST into ``/usr/share/datasets/fashion-mnist``) and ``./data/<name>``.
    """
    candidates = []
    if root is not None:
        root = Path(root).expanduser()
        candidates += [(root, "root argument"), (root / name, "root argument/<name>")]
    env = os.environ.get("JEPA_DATA")
    if env:
        env_path = Path(env).expanduser()
        candidates += [(env_path / name, "$JEPA_DATA/<name>"), (env_path, "$JEPA_DATA")]
    candidates += [(d, "system location") for d in system_dirs.get(name, ())]
    candidates.append((Path.cwd() / "data" / name, "./data/<name>"))
    seen, unique = set(), []
    for path, why in candidates:
        key = os.path.abspath(path)
        if key not in seen:
            seen.add(key)
            unique.append((path, why))
    return unique


def expected_files(name: str, split: str) -> list[str]:
    if name in ("mnist", "fashion_mnist"):
        return idx.expected_files(split)
    if name in cifar.CIFAR:
        return cifar.expected_files(name, split)
    if name == "stl10":
        return stl10.expected_files(split)
    return folder.expected_files(split)


def has_files(name: str, split: str, path: Path) -> bool:
    if not path.is_dir():
        return False
    if name in ("mnist", "fashion_mnist"):
        return idx.has_files(path, split)
    if name in cifar.CIFAR:
        return cifar.has_files(path, name, split)
    if name == "stl10":
        return stl10.stl_dir(path, split) is not None
    return folder.find_split_dir(path, split) is not None


def find_dir(name: str, split: str, candidates: list[tuple[Path, str]]) -> Path:
    """The first of ``candidates`` (``(path, why)`` pairs) holding ``split``'s files.

    Raises :class:`DatasetNotFoundError` listing every candidate, the files expected and how to get them.
    """
    for path, _ in candidates:
        if has_files(name, split, path):
            return path
    looked = ", ".join(f"{os.path.abspath(p)} ({why})" for p, why in candidates)
    raise DatasetNotFoundError(
        f"dataset {name!r} (split {split!r}) not found; looked in {looked} for "
        f"{', '.join(expected_files(name, split))}",
        [p for p, _ in candidates], hint=f"to get it: {HOW_TO_GET[name]}")


def default_download_dir(name: str, root) -> Path:
    """Where ``download=True`` puts ``name``: ``root``, else ``$JEPA_DATA/<name>``, else ``./data/<name>``."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("JEPA_DATA")
    if env:
        return Path(env).expanduser() / name
    return Path.cwd() / "data" / name
