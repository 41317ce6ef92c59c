"""Downloads of MNIST, Fashion-MNIST and CIFAR from their canonical mirrors, verified against published MD5s."""
from __future__ import annotations

import gzip
import http.client
import os
import sys
import tempfile
import time
import urllib.request
import zlib
from pathlib import Path

from jepa.errors import ConfigError
from jepa.data.datasets.errors import DownloadError
from jepa.data.datasets.search import HOW_TO_GET
from jepa.io import file_hash, fsync_dir

# Download sources.  URLs, mirrors and archive MD5s are those of torchvision
# (torchvision/datasets/mnist.py: MNIST.mirrors/resources and
# FashionMNIST.mirrors/resources; torchvision/datasets/cifar.py: CIFAR10/CIFAR100
# url and tgz_md5); the Fashion-MNIST archive MD5s are also the ones published
# in zalandoresearch/fashion-mnist README.md.  The third column is the MD5 of
# the *decompressed* IDX file, as listed by public loaders that check unpacked
# files (e.g. torchvision-based FashionMNIST wrappers' ``raw_data`` tables):
# mirrors that re-gzip the data (Debian's dataset-fashion-mnist package ships
# byte-different .gz files with identical content) are accepted through it.
DOWNLOADS = {
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


def download(name: str, root: str | os.PathLike, base_url: str | None = None, *,
             progress: bool = True) -> Path:
    """Download a dataset's files into ``root`` and verify their published MD5s.

    Each file goes to a temporary file in ``root``, is fsynced and verified, and
    only when every file of the dataset passed are they renamed into place, so
    an interrupted or corrupt transfer leaves nothing behind.  ``base_url``
    replaces the canonical mirrors (``base_url + file name``).  Files already
    present with a valid checksum are kept.  Returns ``root``.
    """
    if name not in DOWNLOADS:
        raise ConfigError(f"download is not supported for {name!r}; supported: {', '.join(DOWNLOADS)}"
                         + (f". {HOW_TO_GET[name]}" if name in HOW_TO_GET else ""))
    mirrors, files = DOWNLOADS[name]
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

