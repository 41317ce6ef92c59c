"""Where the quality benchmarks write their record: ``<name>.json`` and ``<name>.md`` side by side."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from jepa.io import atomic_write_text
from jepa.profiling import cpu_flags, cpu_model


def split_passthrough(argv: list[str] | None) -> tuple[list[str], list[str]]:
    """The script's own arguments and those after ``--``, which it passes on to the commands it runs."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1:]


def machine() -> str:
    """The machine in a line: CPU model and matrix features, cores, torch version and threads."""
    return (f"{cpu_model()} ({' '.join(cpu_flags()) or 'no avx2/avx512/amx'}), {os.cpu_count()} cores, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads")


def write_record(out_dir: str | Path, name: str, result: dict, markdown: str) -> None:
    """Write ``result`` as JSON and ``markdown`` beside it (atomically), and print the markdown."""
    out = Path(out_dir)
    atomic_write_text(out / f"{name}.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / f"{name}.md", markdown)
    print(markdown)
    print(f"wrote {out / name}.json and .md")
