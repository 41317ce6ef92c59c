"""One harness for every script in bench/: common flags, the machine's name, the matmul peak, timers, records.

A script builds its command line with ``parser`` and the ``add_*`` flags it needs (``--out``/``--out-dir``,
``--reps``/``--warmup``, ``--threads``, ``--device``), parses it with ``parse``, times with ``time_calls``,
names the machine with ``machine``/``device_name`` and writes ``<out>.json`` and ``<out>.md`` side by side
with ``write_record`` (atomically, the markdown printed).  Scripts import it as ``from bench import harness``
once the repository is on ``sys.path``; the pytest-benchmark files get it through ``bench/conftest.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from jepa.cpu import MATRIX_FLAGS, cpu_flags, cpu_model
from jepa.io import atomic_write_text
from jepa.profiling import synchronize

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
L2_FLUSH_BYTES = 512 << 20
SUPPRESS = argparse.SUPPRESS  # help text of a flag only the scripts pass each other


# ------------------------------------------------------------------ command line


def parser(doc: str, *, prog: str | None = None, epilog: str | None = None) -> argparse.ArgumentParser:
    """The script's parser, described by the first line of its docstring."""
    return argparse.ArgumentParser(prog=prog, description=doc.strip().splitlines()[0], epilog=epilog)


def add_out(p: argparse.ArgumentParser, help: str = "write the JSON record here (markdown beside it, .md)",
            required: bool = False) -> None:
    p.add_argument("--out", required=required, help=help)


def add_out_dir(p: argparse.ArgumentParser, default: Path = RESULTS) -> None:
    p.add_argument("--out-dir", default=str(default), help=f"folder of the <name>.json/.md record (default {default})")


def add_timing(p: argparse.ArgumentParser, reps: int, warmup: int | None = None, flags: tuple[str, ...] = ("--reps",),
               help: str = "timed repetitions") -> None:
    """``--reps`` (under the script's own names, ``flags``) and, if ``warmup`` is given, ``--warmup``."""
    p.add_argument(*flags, dest="reps", type=int, default=reps, metavar="N", help=f"{help} (default {reps})")
    if warmup is not None:
        p.add_argument("--warmup", type=int, default=warmup, metavar="N", help=f"untimed repetitions first (default {warmup})")


def add_threads(p: argparse.ArgumentParser, default: int | None = None) -> None:
    p.add_argument("--threads", type=int, default=default,
                   help="torch.set_num_threads" + (f" (default {default})" if default else " (default: torch's)"))


def add_device(p: argparse.ArgumentParser, default: str = "cpu") -> None:
    p.add_argument("--device", default=default, help=f"torch device (default {default})")


def parse(p: argparse.ArgumentParser, argv: list[str] | None = None, known: bool = False):
    """Parse ``argv``, check the counts, apply ``--threads``; with ``known``, also return the unparsed rest."""
    args, rest = p.parse_known_args(argv) if known else (p.parse_args(argv), [])
    if getattr(args, "reps", 1) < 1 or getattr(args, "warmup", 0) < 0:
        p.error(f"the repetition count must be >= 1 and --warmup >= 0, got {args.reps} and "
                f"{getattr(args, 'warmup', 0)}")
    if getattr(args, "threads", None):
        if args.threads < 1:
            p.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    return (args, rest) if known else args


def split_passthrough(argv: list[str] | None) -> tuple[list[str], list[str]]:
    """The script's own arguments and those after ``--``, which it passes on to the commands it runs."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1:]


# ------------------------------------------------------------------ naming the machine


def cpu_features(wanted: tuple[str, ...] = MATRIX_FLAGS) -> str:
    """Which of ``wanted`` instruction sets the CPU has, space-separated."""
    return " ".join(cpu_flags(wanted)) or f"none of {'/'.join(wanted)}"


def machine(device: torch.device | str | None = None) -> str:
    """The machine in a line: CPU model and matrix features, cores, torch version and threads; on CUDA the GPU first."""
    line = (f"{cpu_model()} ({cpu_features()}), {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")
    if device is not None and torch.device(device).type == "cuda":
        line = f"{torch.cuda.get_device_name(torch.device(device))}; host {line}"
    return line


def device_name(device: torch.device | str) -> str:
    """The GPU's name on CUDA, else the CPU model with cores and torch threads (the records' ``device``)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def results_dir(device: torch.device | str) -> Path:
    """``bench/results/<gpu>`` or ``bench/results/cpu-<model>``: where a device's default records go."""
    device = torch.device(device)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", device_name(device).split(",")[0]).strip("_")
    return RESULTS / (slug if device.type == "cuda" else f"cpu-{slug}")


# ------------------------------------------------------------------ timing


@dataclass(frozen=True)
class Timing:
    """Seconds per call of each timed round."""

    seconds: tuple[float, ...]

    @property
    def best(self) -> float:
        """The fastest round: on a shared machine noise only ever adds time."""
        return min(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.seconds)

    def quantile(self, q: float) -> float:
        """The round at fraction ``q`` of the sorted rounds (0.95: the 95th percentile)."""
        ordered = sorted(self.seconds)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def time_calls(fn: Callable[[], object], reps: int, *, warmup: int = 1, calls: int = 1,
               device: torch.device | str | None = None, flush_l2: bool = False) -> Timing:
    """Seconds per call over ``reps`` rounds of ``calls`` calls, after ``warmup`` untimed calls.

    On CUDA (``device``) the device is synchronised around each round; with ``flush_l2`` each round is
    instead timed by CUDA events after a 512 MiB write that evicts the L2 cache (small kernels' true
    DRAM traffic).  On CPU it is the wall clock; ``device=None`` never synchronises (host time only).
    """
    if reps < 1 or calls < 1:
        raise ValueError(f"reps and calls must be >= 1, got {reps} and {calls}")
    device = torch.device(device) if device is not None else None
    for _ in range(warmup):
        fn()
    if flush_l2 and device is not None and device.type == "cuda":
        return _event_rounds(fn, reps, calls, device)
    seconds = []
    for _ in range(reps):
        if device is not None:
            synchronize(device)
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        if device is not None:
            synchronize(device)
        seconds.append((time.perf_counter() - t0) / calls)
    return Timing(tuple(seconds))


def _event_rounds(fn, reps: int, calls: int, device: torch.device) -> Timing:
    """CUDA-event time of each round, each after an L2-flushing write."""
    flush = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.float32, device=device)
    torch.cuda.synchronize(device)
    pairs = []
    for _ in range(reps):
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        pairs.append((start, end))
    torch.cuda.synchronize(device)
    return Timing(tuple(s.elapsed_time(e) / 1e3 / calls for s, e in pairs))


def matmul_peak(device: torch.device | str, dtype: torch.dtype, n: int | None = None, reps: int = 8) -> float:
    """FLOP/s of the best of ``reps`` square ``n``-matmuls (default 2048 on CPU, 8192 on GPU): the practical peak."""
    device = torch.device(device)
    n = n or (2048 if device.type == "cpu" else 8192)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    return 2 * n ** 3 / time_calls(lambda: a @ b, reps, warmup=2, device=device).best


# ------------------------------------------------------------------ records


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` atomically (a reader never sees half a file)."""
    return atomic_write_text(path, text)


def write_json(path: str | Path, obj) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=1) + "\n")


def write_record(out: str | Path | None, result: dict, markdown: str, *, device=None, echo: bool = True) -> dict:
    """Print ``markdown``; with ``out``, write ``result`` there as JSON and ``markdown`` beside it (``.md``).

    Both carry the machine line (``machine(device)``, unless ``result`` names one).  Returns what was written.
    """
    result = {**result, "machine": result.get("machine") or machine(device)}
    markdown = f"{markdown.rstrip()}\n\nMachine: {result['machine']}\n"
    if echo:
        print(markdown, flush=True)
    if out is not None:
        path = Path(out)
        path = path.with_suffix(".json") if path.suffix == ".md" else path
        write_json(path, result)
        write_text(path.with_suffix(".md"), markdown)
        print(f"wrote {path} and {path.with_suffix('.md')}")
    return result
