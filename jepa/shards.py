"""Write an image folder into tar shards: ``python -m jepa.shards --src ROOT --out DIR [--shard-size 1GB]``.

The command line of jepa.data.shard_writer, which says how the shards are laid out, written and replaced.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from jepa import cli
from jepa.data.shard_writer import write_shards
from jepa.errors import ConfigError
from jepa.monitoring.progress import Progress

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12,
          "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str) -> int:
    """``1GB`` (10^9), ``512MiB`` (2^29), ``1.5G``, ``100000`` (bytes) as a number of bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = match and match[2].lower()
    if not match or unit not in _UNITS or float(match[1]) <= 0:
        raise ConfigError(f"--shard-size {text!r}: expected a positive size like 1GB, 500MB, 2GiB or 1000000")
    return int(float(match[1]) * _UNITS[unit])


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
    bar = None if args.no_progress else (lambda total: Progress(total, unit="image"))
    index = write_shards(Path(args.src), Path(args.out), size, args.num_shards, args.seed, bar, args.force)
    shards = index["shards"]
    gb = sum(s["bytes"] for s in shards) / 1e9
    last = len(shards) - 1
    print(f"wrote {index['samples']} images of {len(index['classes'])} classes into {len(shards)} shards "
          f"({gb:.2f} GB) in {args.out}\ntrain on them with: --data.dataset shards --data.shards "
          f"'{os.path.join(args.out, f'shard-{{000000..{last:06d}}}.tar')}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
