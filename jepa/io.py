"""Files that are never half-written: atomic writes with fsync, hard links, and file hashes.

Every write goes to a temp file in the target's directory, is flushed and fsynced, then
renamed over the target, so a process killed at any instant leaves the previous file
intact. Checkpoints, exports, dataset downloads and reports all write through here.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import struct
import tempfile
from pathlib import Path

import torch

from jepa.errors import DiskFullError


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def fsync_dir(folder: str | Path):
    """Make a rename in ``folder`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def removed_on_error(tmp: str | Path):
    """Delete the temp file ``tmp`` if the block fails (or is interrupted), then re-raise."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write(path: str | Path, write, size_hint: int | None = None) -> Path:
    """Call ``write(binary_file)`` on a temp file next to ``path``, fsync it, rename it over ``path``.

    On any failure ``path`` keeps its previous content and the temp file (``.NAME.*.tmp``) is removed.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    written = 0
    try:
        with removed_on_error(tmp):
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o666 & ~_UMASK)
                try:
                    write(f)
                    f.flush()
                    os.fsync(f.fileno())
                finally:
                    written = f.tell()
            os.replace(tmp, path)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise disk_full(path, size_hint or written) from None
        raise
    fsync_dir(path.parent)
    return path


def disk_full(path: Path, needed: int) -> DiskFullError:
    """A DiskFullError naming the directory, the bytes the file needs and the bytes free there."""
    try:
        free = f"{shutil.disk_usage(path.parent).free / 1e6:.1f} MB free"
    except OSError:
        free = "free space unknown"
    return DiskFullError(errno.ENOSPC, f"no space left on the device writing {path}: it needs about "
                         f"{needed / 1e6:.1f} MB and {path.parent} has {free} (the previous file, if any, is intact)")


def atomic_save(obj, path: str | Path) -> Path:
    """``torch.save`` ``obj`` to ``path`` atomically."""
    return atomic_write(path, lambda f: torch.save(obj, f), size_hint=tensor_bytes(obj))


def tensor_bytes(obj) -> int:
    """Bytes of the tensors in a nested dict/list: about what ``torch.save`` writes."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_link(src: str | Path, dst: str | Path) -> Path:
    """Make ``dst`` an atomic hard link to ``src`` (no extra disk space); copy where links are unsupported."""
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.link.tmp")
    with removed_on_error(tmp):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        try:
            os.link(src, tmp)
        except OSError:
            return atomic_write(dst, lambda f: _copy_into(src, f))
        os.replace(tmp, dst)
    fsync_dir(dst.parent)
    return dst


def _copy_into(src: Path, f):
    with open(src, "rb") as s:
        shutil.copyfileobj(s, f)


def is_safetensors(path: str | os.PathLike) -> bool:
    """Whether ``path`` starts like a safetensors file: an 8-byte little-endian header length, then a JSON object."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= 100 << 20 and head[8:9] == b"{"


def file_hash(path: str | os.PathLike, algo: str = "md5", opener=open) -> str:
    """Hex digest (``hashlib`` algorithm ``algo``) of the bytes ``opener(path, "rb")`` reads, in 1 MiB blocks."""
    h = hashlib.new(algo)
    with opener(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_dir(path: str | Path, replaceable=lambda old: False):
    """Yield a temp directory next to ``path`` to fill; on success it becomes ``path``.

    An existing ``path`` is replaced only if ``replaceable(path)`` says it is an earlier output of the
    same kind (it is renamed aside and removed once the new directory is in place); anything else there
    is an error, so a mistyped ``--out`` never deletes a user's folder. On failure the temp directory goes.
    """
    path = Path(path)
    if path.exists() and not (path.is_dir() and replaceable(path)):
        raise FileExistsError(f"{path} already exists and is not an earlier export; choose another output path")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp's 0700 would make the export private
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = path.with_name(f".{path.name}.{os.getpid()}.old") if path.exists() else None
    if old is not None:
        os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        if old is not None:
            os.replace(old, path)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
