"""Write an image folder into tar shards: ``python -m jepa.shards --src ROOT --out DIR [--shard-size 1GB]``.

``ROOT/<class>/<image>`` becomes ``DIR/shard-000000.tar, ...`` in the WebDataset layout (``KEY.jpg`` or
``KEY.png``, ... with the file's own bytes, and ``KEY.cls`` holding the class index as text), samples in a
seeded random order so that every shard mixes all classes, shards of about ``--shard-size`` with equal
sample counts, and ``DIR/index.json`` (classes, samples per shard) that training reads. Every file is
written atomically and the index last. ``DIR`` must not be or lie inside ``ROOT``, and shards or an index
already in ``DIR`` stop the command before it writes anything unless ``--force``; a forced re-run names what
it replaces and removes, and first removes the old index, so an interrupted re-run leaves shards that
training refuses (no index) rather than a mix of old and new ones.
"""
from __future__ import annotations

import io
import json
import math
import os
import random
import re
import sys
import tarfile
from pathlib import Path

from jepa import cli
from jepa.data.datasets.folder import IMAGE_EXTENSIONS
from jepa.data.shard_reader import FORMAT, INDEX_NAME, SHARD_PATTERN, VERSION
from jepa.errors import ConfigError, OutputExistsError
from jepa.io import atomic_write, atomic_write_text
from jepa.progress import Progress

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12,
          "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_STALE = re.compile(r"shard-(\d{6})\.tar")


def parse_size(text: str) -> int:
    """``1GB`` (10^9), ``512MiB`` (2^29), ``1.5G``, ``100000`` (bytes) as a number of bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = match and match[2].lower()
    if not match or unit not in _UNITS or float(match[1]) <= 0:
        raise ConfigError(f"--shard-size {text!r}: expected a positive size like 1GB, 500MB, 2GiB or 1000000")
    return int(float(match[1]) * _UNITS[unit])


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


def write_shard(path: Path, samples: list[tuple[str, Path, int]], bar: Progress) -> int:
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
                 progress: bool = True, force: bool = False) -> dict:
    """Write the image folder ``src`` into shards in ``out``; returns the index that was written.

    Shards or an index already in ``out`` are an error unless ``force`` (then named on stdout, replaced or removed).
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
    bar = Progress(len(samples), enabled=progress, unit="image")
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


def main(argv: list[str] | None = None) -> int:
    return cli.run(run, argv)


def run(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="python -m jepa.shards", description=__doc__.splitlines()[0])
    parser.add_argument("--src", required=True, help="the folder of class sub-folders (e.g. imagenet/train)")
    parser.add_argument("--out", required=True, help="where the shards and index.json go")
    parser.add_argument("--shard-size", default="1GB", help="about this many bytes a shard (default 1GB)")
    parser.add_argument("--num-shards", type=int, help="exactly this many shards instead of --shard-size")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample order (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--force", action="store_true", help="replace the shards and index.json of an earlier run "
                        "in --out (and remove its extra shards)")
    args = parser.parse_args(argv)
    size = parse_size(args.shard_size)
    if args.num_shards is not None and args.num_shards < 1:
        raise ConfigError(f"--num-shards {args.num_shards}: must be >= 1")
    index = write_shards(Path(args.src), Path(args.out), size, args.num_shards, args.seed, not args.no_progress,
                         args.force)
    shards = index["shards"]
    gb = sum(s["bytes"] for s in shards) / 1e9
    last = len(shards) - 1
    print(f"wrote {index['samples']} images of {len(index['classes'])} classes into {len(shards)} shards "
          f"({gb:.2f} GB) in {args.out}\ntrain on them with: --data.dataset shards --data.shards "
          f"'{os.path.join(args.out, f'shard-{{000000..{last:06d}}}.tar')}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
