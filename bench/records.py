"""Where the quality benchmarks write their record: ``<name>.json`` and ``<name>.md`` side by side."""
from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

import torch

from jepa.io import atomic_write_text


def split_passthrough(argv: list[str] | None) -> tuple[list[str], list[str]]:
    """The script's own arguments and those after ``--``, which it passes on to the commands it runs."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1:]


MATRIX_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def _cpuinfo_field(key: str, cpuinfo: str | None) -> str | None:
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        if line.split(":", 1)[0].strip() == key:
            return line.split(":", 1)[1].strip()
    return None


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    return _cpuinfo_field("model name", cpuinfo) or platform.processor() or platform.machine()


def cpu_flags(wanted: tuple[str, ...] = MATRIX_FLAGS, cpuinfo: str | None = None) -> list[str]:
    """Which of ``wanted`` (vector/matrix instruction sets: one model name covers CPUs that differ in them) this
    CPU has, in ``wanted``'s order."""
    have = set((_cpuinfo_field("flags", cpuinfo) or "").split())
    return [f for f in wanted if f in have]


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
