"""Write an image folder into tar shards (what ``python -m jepa.shards`` runs).

``ROOT/<class>/<image>`` becomes ``DIR/shard-000000.tar, ...`` in the WebDataset layout (``KEY.jpg`` or
``KEY.png``, ... with the file's own bytes, and ``KEY.cls`` holding the class index as text), samples in a
seeded random order so that every shard mixes all classes, shards of about ``shard_size`` bytes with equal
sample counts, and ``DIR/index.json`` (classes, samples per shard) that training reads (``shard_reader``).
Every file is written atomically and the index last. ``DIR`` must not be or lie inside ``ROOT``, and shards
or an index already in ``DIR`` stop the write before anything is written unless ``force``; a forced re-run
names what it replaces and removes, and first removes the old index, so an interrupted re-run leaves shards
that training refuses (no index) rather than a mix of old and new ones.
"""
from __future__ import annotations

import io
import json
import math
import random
import re
import tarfile
from pathlib import Path
from typing import Callable, Protocol

from jepa.data.datasets.folder import IMAGE_EXTENSIONS
from jepa.data.shard_reader import FORMAT, INDEX_NAME, SHARD_PATTERN, VERSION
from jepa.errors import ConfigError, OutputExistsError
from jepa.io import atomic_write, atomic_write_text

_STALE = re.compile(r"shard-(\d{6})\.tar")


class Bar(Protocol):
    """What the writer reports to: ``n`` images written so far, ``update(n)`` after each, ``close()`` at the end."""

    n: int

    def update(self, n: int): ...

    def close(self): ...


class Quiet:
    """The bar of a write nobody watches (the caller passed no ``progress``)."""

    n = 0

    def update(self, n: int):
        self.n = n

    def close(self):
        pass


def scan(src: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """The class names (sorted sub-folders) and ``(file, class index)`` of every image under them."""
    if not src.is_dir():
        raise FileNotFoundError(f"--src {src}: not a folder")
    classes = sorted(p.name for p in src.iterdir() if p.is_dir())
    samples = [(path, label) for label, name in enumerate(classes) for path in sorted((src / name).rglob("*"))
               if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()]
    if not samples:
        raise FileNotFoundError(f"--src {src}: no images ({', '.join(IMAGE_EXTENSIONS)}) in class sub-folders "
                                f"{src}/<class>/; point --src at the folder that holds the class folders")
    return classes, samples


def check_out(src: Path, out: Path):
    """Refuse an ``out`` that is ``src`` or inside it: the shards would land among the images they are read from."""
    src_real, out_real = src.resolve(), out.resolve()
    if out_real == src_real or src_real in out_real.parents:
        where = "is" if out_real == src_real else "is inside"
        raise ConfigError(f"--out {out} {where} --src {src}: the shards would be written among the images they "
                          f"are read from; choose an --out outside {src}")


def previous_output(out: Path) -> list[str]:
    """The names of the files in ``out`` this command writes or removes: shards and the index of an earlier run."""
    if not out.is_dir():
        return []
    return sorted(p.name for p in out.iterdir() if p.name == INDEX_NAME or _STALE.fullmatch(p.name))


def name_files(names: list[str]) -> str:
    """``index.json, shard-000000.tar … shard-000009.tar (10 shards)``: runs of consecutive shards as ranges."""
    numbers = sorted(int(_STALE.fullmatch(n)[1]) for n in names if _STALE.fullmatch(n))
    parts = [n for n in names if not _STALE.fullmatch(n)]
    start = 0
    for i, k in enumerate(numbers):
        if i + 1 == len(numbers) or numbers[i + 1] != k + 1:
            lo, hi = SHARD_PATTERN.format(numbers[start]), SHARD_PATTERN.format(k)
            parts.append(lo if lo == hi else f"{lo} … {hi} ({k - numbers[start] + 1} shards)")
            start = i + 1
    return ", ".join(parts)


def tar_bytes(size: int) -> int:
    """Bytes a sample of a ``size``-byte image takes in a shard (headers, the label member, 512-byte padding)."""
    return 512 + 512 * math.ceil(size / 512) + 1024


def member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0  # fixed metadata: the same input gives the same bytes
    return info, io.BytesIO(data)


def write_shard(path: Path, samples: list[tuple[str, Path, int]], bar: Bar) -> int:
    """Write ``(key, file, label)`` samples into the tar ``path`` atomically; returns its size in bytes."""
    def write(f):
        with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for key, file, label in samples:
                suffix = file.suffix.lower().lstrip(".")
                tar.addfile(*member(f"{key}.{'jpg' if suffix == 'jpeg' else suffix}", file.read_bytes()))
                tar.addfile(*member(f"{key}.cls", str(label).encode()))
                bar.update(bar.n + 1)
    atomic_write(path, write)
    return path.stat().st_size


def write_shards(src: Path, out: Path, shard_size: int = 10**9, num_shards: int | None = None, seed: int = 0,
                 progress: Callable[[int], Bar] | None = None, force: bool = False) -> dict:
    """Write the image folder ``src`` into shards in ``out``; returns the index that was written.

    Shards or an index already in ``out`` are an error unless ``force`` (then named on stdout, replaced or removed).
    ``progress(total)``, if given, makes the bar that follows the ``total`` images as they are written.
    """
    src, out = Path(src), Path(out)
    classes, samples = scan(src)
    check_out(src, out)
    if num_shards is not None and num_shards > len(samples):
        raise ConfigError(f"--num-shards {num_shards}: {src} holds only {len(samples)} images, and a shard holds at "
                          f"least one; give --num-shards {len(samples)} or fewer")
    random.Random(seed).shuffle(samples)
    total = sum(tar_bytes(path.stat().st_size) for path, _ in samples)
    n = num_shards or min(max(1, math.ceil(total / shard_size)), len(samples))
    removed = replace_previous(out, n, force)
    width = max(8, len(str(len(samples) - 1)))
    out.mkdir(parents=True, exist_ok=True)
    (out / INDEX_NAME).unlink(missing_ok=True)
    bar = progress(len(samples)) if progress is not None else Quiet()
    shards = []
    for k in range(n):
        lo, hi = k * len(samples) // n, (k + 1) * len(samples) // n
        chunk = [(f"{i:0{width}d}", path, label) for i, (path, label) in enumerate(samples[lo:hi], start=lo)]
        name = SHARD_PATTERN.format(k)
        shards.append({"name": name, "samples": len(chunk), "bytes": write_shard(out / name, chunk, bar)})
    bar.close()
    for name in removed:
        (out / name).unlink(missing_ok=True)
    index = {"format": FORMAT, "version": VERSION, "samples": len(samples), "classes": classes, "shards": shards,
             "source": str(Path(src).resolve()), "seed": seed}
    atomic_write_text(out / INDEX_NAME, json.dumps(index, indent=1) + "\n")
    return index


def replace_previous(out: Path, n: int, force: bool) -> list[str]:
    """Stop if ``out`` holds an earlier run's shards or index (without ``force``); with it, say what is replaced
    and return the earlier shards beyond the ``n`` new ones (removed once the new ones are written)."""
    previous = previous_output(out)
    if not previous:
        return []
    if not force:
        raise OutputExistsError(f"--out {out} already holds {name_files(previous)}; add --force to replace them, "
                                "or choose an empty folder")
    kept = {INDEX_NAME, *(SHARD_PATTERN.format(k) for k in range(n))}
    replaced, removed = [p for p in previous if p in kept], [p for p in previous if p not in kept]
    if replaced:
        print(f"--force: replacing {name_files(replaced)} in {out}")
    if removed:
        print(f"--force: removing {name_files(removed)} from {out} (not part of the {n} new shards)")
    return removed
