"""Tar shards in the WebDataset layout (``KEY.jpg``/``KEY.png`` + ``KEY.cls``) and their ``index.json``.

``python -m jepa.shards`` writes them; training streams them (``data.dataset: shards``). A shard is read
front to back with the standard library's ``tarfile``, so a local file, a mounted object store or the
stdout of a ``pipe:`` command all work; members that are not needed are skipped without reading
their data where the file can seek.
"""
from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from jepa.config.braces import expand_braces
from jepa.data.datasets.errors import DatasetFormatError, DatasetNotFoundError
from jepa.errors import ConfigError

INDEX_NAME = "index.json"
FORMAT = "jepa-shards"
VERSION = 1
SHARD_PATTERN = "shard-{:06d}.tar"
# Member suffixes holding the image, in the WebDataset spelling (one per sample; the first found is used).
IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm")


def shard_file_name(url: str) -> str:
    """The shard's file name, which the index lists: the path's last part, or for ``pipe:`` the last word
    ending in ``.tar``."""
    if url.startswith("pipe:"):
        try:
            words = [w.rstrip(";|&") for w in shlex.split(url[5:])]
        except ValueError as exc:
            raise ConfigError(f"data.shards: cannot split the pipe command {url!r} into words: {exc}") from None
        tars = [w for w in words if w.endswith(".tar")]
        if not tars:
            raise ConfigError(f"data.shards: no word ending in .tar in the pipe command {url!r}; the shard's file "
                             "name must appear in it so that its index entry can be found")
        return tars[-1].rsplit("/", 1)[-1]
    return Path(url).name


@dataclass
class Sample:
    """One shard sample: where it is, its image bytes (None if the sample has no image member) and label."""

    shard: int
    member: int
    name: str
    data: bytes | None
    label: int


def read_index(path: Path) -> dict:
    """The index ``python -m jepa.shards`` wrote, checked."""
    try:
        index = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise DatasetFormatError(f"{path}: not a readable shard index ({exc}); re-run python -m jepa.shards") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT or index.get("version") != VERSION:
        raise DatasetFormatError(f"{path}: not a {FORMAT} index of version {VERSION}; re-run python -m jepa.shards")
    return index


def find_index(urls: list[str], root: str | None) -> Path:
    """``index.json`` in ``data.root`` (a folder or the file itself) or else next to the first local shard."""
    if root is not None:
        path = Path(root).expanduser()
        candidates = [path if path.suffix == ".json" else path / INDEX_NAME]
    elif urls[0].startswith("pipe:"):
        raise DatasetNotFoundError("data.shards is a pipe: command, so the shard index cannot be found next to "
                                   f"the shards; copy the {INDEX_NAME} that python -m jepa.shards wrote to this "
                                   "machine and set data.root to its folder")
    else:
        candidates = [Path(urls[0]).expanduser().parent / INDEX_NAME]
    for c in candidates:
        if c.is_file():
            return c
    raise DatasetNotFoundError(f"no shard index at {', '.join(map(str, candidates))}: write the shards with "
                               f"python -m jepa.shards (it writes {INDEX_NAME} beside them), or set data.root to "
                               "the folder holding their index", candidates)


class SampleStream:
    """A dataset read front to back in parts (tar shards, parquet row groups); a stream, not indexable.

    ``counts[k]`` samples are in part ``k`` (named ``urls[k]``); sample ``j`` of part ``k`` has the global id
    ``offsets[k] + j``. ``key`` is the config key naming the parts and ``more_parts`` how to make more of them,
    for the read plan's errors; ``where`` names the whole stream.
    """

    key, more_parts, where = "data.shards", "", ""
    urls: list[str]
    counts: list[int]
    offsets: list[int]
    name: str
    channels: int
    image_size: int
    images = None

    def __len__(self) -> int:
        return self.offsets[-1]

    def samples(self, shard: int, wanted: set[int]) -> Iterator[Sample]:
        """The samples of part ``shard`` whose positions are in ``wanted``, in order."""
        raise NotImplementedError


def offsets_of(counts: list[int]) -> list[int]:
    """The global id of each part's first sample, and the total last."""
    offsets = [0]
    for n in counts:
        offsets.append(offsets[-1] + n)
    return offsets


class ShardSet(SampleStream):
    """The shards ``data.shards`` names, with their sample counts from the index (see :class:`SampleStream`)."""

    more_parts = "write more, smaller shards (python -m jepa.shards --shard-size)"

    def __init__(self, urls: list[str], index: dict, index_path: Path, *, channels: int, image_size: int):
        entries = {s["name"]: s for s in index["shards"]}
        missing = [u for u in urls if shard_file_name(u) not in entries]
        if missing:
            raise DatasetFormatError(f"{index_path} lists no shard named {shard_file_name(missing[0])!r} (from "
                                     f"{missing[0]!r}); {len(missing)} of the {len(urls)} shards of data.shards are "
                                     f"not in the index, which holds {len(entries)}")
        self.urls = urls
        self.counts = [int(entries[shard_file_name(u)]["samples"]) for u in urls]
        self.sizes = [entries[shard_file_name(u)].get("bytes") for u in urls]
        self.offsets = offsets_of(self.counts)
        self.classes = list(index.get("classes", []))
        self.num_classes = len(self.classes)
        self.index_path, self.where = index_path, str(index_path)
        self.name, self.split, self.channels, self.image_size = "shards", "train", channels, image_size

    def __repr__(self) -> str:
        return f"ShardSet({len(self.urls)} shards, {len(self)} samples, index {self.index_path})"

    def samples(self, shard: int, wanted: set[int]) -> Iterator[Sample]:
        """The samples of ``shard`` whose member positions are in ``wanted``, in file order; the data of the
        others is skipped unread where the file can seek."""
        url, expected = self.urls[shard], self.counts[shard]
        position, last = -1, max(wanted, default=-1)
        with open_tar(url, self.sizes[shard]) as tar:
            key, members = None, {}
            try:
                for info in tar:
                    if not info.isfile():
                        continue
                    base, _, suffix = info.name.rpartition("/")[2].partition(".")
                    member_key = info.name.rpartition("/")[0] + "/" + base
                    if member_key != key:
                        if position in wanted:
                            yield self._sample(shard, position, key, members)
                        if position >= last:
                            return
                        key, members, position = member_key, {}, position + 1
                    if position in wanted:
                        members[suffix.lower()] = tar.extractfile(info).read()
            except (tarfile.TarError, EOFError, OSError) as exc:
                raise DatasetFormatError(f"{url}: truncated or not a tar shard ({type(exc).__name__}: {exc})") from None
            if position in wanted:
                yield self._sample(shard, position, key, members)
        if position + 1 != expected:
            raise DatasetFormatError(f"{url} holds {position + 1} samples but {self.index_path} says {expected}: the "
                                     "index does not match the shards; re-run python -m jepa.shards")

    def _sample(self, shard: int, position: int, key: str, members: dict) -> Sample:
        image = next((members[s] for s in IMAGE_SUFFIXES if s in members), None)
        name = f"{self.urls[shard]}:{key.lstrip('/')}"
        try:
            label = int(members["cls"].decode().strip()) if "cls" in members else -1
        except ValueError:
            label = -1
        return Sample(shard, position, name, image, label)


@contextlib.contextmanager
def open_tar(url: str, size: int | None = None):
    """A ``tarfile`` reading ``url``: a local path (seekable), or the stdout of the command after ``pipe:``."""
    if not url.startswith("pipe:"):
        path = Path(url).expanduser()
        try:
            actual = path.stat().st_size
            if size is not None and actual != size:
                raise DatasetFormatError(f"{url} is {actual} bytes but its index says {size}: the shard changed "
                                         "after the index was written; re-run python -m jepa.shards")
            tar = tarfile.open(path, mode="r:")
        except FileNotFoundError:
            raise DatasetNotFoundError(f"shard {url} does not exist (named by data.shards)", [path]) from None
        except (tarfile.TarError, OSError) as exc:
            raise DatasetFormatError(f"{url}: cannot open the shard ({type(exc).__name__}: {exc})") from None
        with tar:
            yield tar
        return
    proc = subprocess.Popen(url[5:], shell=True, stdout=subprocess.PIPE, bufsize=1 << 20)
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            yield tar
    except tarfile.TarError as exc:
        raise DatasetFormatError(f"{url}: the command's output is not a tar shard ({exc})") from None
    finally:
        stopped_early = proc.poll() is None  # the reader needed no more of the shard
        if stopped_early:
            proc.kill()
        proc.stdout.close()
        code = proc.wait()
    if code != 0 and not stopped_early:
        raise DatasetFormatError(f"{url}: the command exited with status {code} (its own message is in the log above)")


def load_shards(pattern: str, root: str | None, channels: int, image_size: int) -> ShardSet:
    """The :class:`ShardSet` of ``data.shards`` (brace pattern) with the index of ``data.root`` or beside them."""
    urls = expand_braces(pattern)
    if len(set(urls)) != len(urls):
        raise ConfigError(f"data.shards: {pattern!r} names some shards twice")
    if not urls[0].startswith("pipe:"):
        urls = [os.path.expanduser(u) for u in urls]
    path = find_index(urls, root)
    return ShardSet(urls, read_index(path), path, channels=channels, image_size=image_size)
