"""Where a training step spends its time: torch.profiler traces, phase timing, op counts, CPU allocator set-up.

The trainer labels its phases with ``record_function`` ranges (``PHASES``); ``trace_profiler``
writes them into TensorBoard traces, ``PhaseTimer`` turns the same ranges into seconds per
phase for ``bench/throughput.py``.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

log = logging.getLogger("jepa")

# The record_function labels of one step, in order ("masks" runs inside "data", "predictor" inside
# "context_forward"; a compiled online model folds the predictor into context_forward).
PHASES = ("data", "masks", "target_forward", "context_forward", "predictor", "loss", "backward", "optimizer", "ema")

# glibc mallopt parameters
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_allocator_tuned: bool | None = None


def trace_profiler(out_dir: str | Path, wait: int, warmup: int, active: int, device: torch.device,
                   worker_name: str = "rank0") -> torch.profiler.profile:
    """A profiler (``.start()``/``.stop()`` or ``with``) writing one TensorBoard trace of ``active`` steps.

    Call ``.step()`` after every training step; open with ``tensorboard --logdir out_dir``
    (needs the torch-tb-profiler plugin) or load the ``.pt.trace.json`` in Perfetto / chrome://tracing.
    """
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.device(device).type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    return torch.profiler.profile(
        activities=activities,
        schedule=torch.profiler.schedule(wait=wait, warmup=warmup, active=active, repeat=1),
        on_trace_ready=torch.profiler.tensorboard_trace_handler(str(out_dir), worker_name=worker_name),
        record_shapes=True, profile_memory=True, with_stack=False)


class _NoProfiler:
    def step(self):
        pass


@contextlib.contextmanager
def step_profiler(enabled: bool, p, out_dir: str | Path, device: torch.device, rank: int = 0):
    """``with`` block yielding a started ``trace_profiler`` (``p``: the profiling config); disabled, a no-op stand-in."""
    if not enabled:
        yield _NoProfiler()
        return
    prof = trace_profiler(out_dir, p.wait, p.warmup, p.active, device, worker_name=f"rank{rank}")
    prof.start()
    if rank == 0:
        log.info("profiling %d steps after %d; traces in %s (tensorboard --logdir %s)", p.active, p.wait + p.warmup,
                 out_dir, out_dir)
    try:
        yield prof
    finally:
        prof.stop()


def synchronize(device: torch.device | str):
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class PhaseTimer:
    """Seconds per labelled phase, each EXCLUSIVE of the labelled phases nested in it.

    ``with timer.patch(jepa.train, jepa.data.batches):`` swaps those modules' ``record_function`` for a
    wrapper that still opens the real range (traces keep their labels) and synchronises the
    device at both ends, so on a GPU each phase owns the kernels it launched.  Only patch
    modules whose code runs eagerly: code inside a compiled region must not call the timer.
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.totals: dict[str, float] = defaultdict(float)
        self._stack: list[list] = []
        self._pid = os.getpid()

    @contextlib.contextmanager
    def range(self, name: str):
        if os.getpid() != self._pid:  # a DataLoader worker forked while patched: label only, never sync
            with torch.profiler.record_function(name):
                yield
            return
        synchronize(self.device)
        frame = [name, time.perf_counter(), 0.0]
        self._stack.append(frame)
        try:
            with torch.profiler.record_function(name):
                yield
                synchronize(self.device)
        finally:
            self._stack.pop()
            elapsed = time.perf_counter() - frame[1]
            self.totals[name] += elapsed - frame[2]
            if self._stack:
                self._stack[-1][2] += elapsed

    @contextlib.contextmanager
    def patch(self, *modules):
        saved = [(m, m.record_function) for m in modules]
        try:
            for m in modules:
                m.record_function = self.range
            yield self
        finally:
            for m, original in saved:
                m.record_function = original

    def reset(self):
        self.totals.clear()


def top_level_aten_ops(events) -> int:
    """How many ATen ops were dispatched from outside any other ATen op (what Python, autograd or
    compiled code called), counted in a profiler's ``events()``."""
    count = 0
    for e in events:
        if not e.name.startswith("aten::"):
            continue
        parent = e.cpu_parent
        while parent is not None and not parent.name.startswith("aten::"):
            parent = parent.cpu_parent
        count += parent is None
    return count


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


def cpu_has_bf16_matmul(cpuinfo: str | None = None) -> bool:
    """Whether this CPU has bf16 matrix instructions (AVX-512 BF16 or AMX), where bf16 training is the fast path."""
    return bool(cpu_flags(("avx512_bf16", "amx_bf16"), cpuinfo))


def tune_cpu_allocator(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Keep freed activation buffers in the glibc heap instead of returning them to the OS.

    By default glibc serves large blocks with mmap and trims the heap after a free, so every
    step page-faults its activations in again (~45k faults, 5-8 % of the CPU time of a step on
    ``configs/bench_fmnist_tiny.yaml``).  Fixing the thresholds (32 MiB is glibc's maximum
    mmap threshold) reuses the memory instead; RSS then stays at the step's peak.  Linux/glibc
    only, once per process; ``JEPA_TUNE_MALLOC=0`` turns it off.  Returns whether it applied.
    """
    global _allocator_tuned
    if _allocator_tuned is not None:
        return _allocator_tuned
    _allocator_tuned = False
    if os.environ.get("JEPA_TUNE_MALLOC", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)) == 1
        ok = libc.mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)) == 1 and ok
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    _allocator_tuned = ok
    if ok:
        log.info("CPU allocator: heap blocks up to %d MiB are reused, not unmapped (JEPA_TUNE_MALLOC=0 to disable)",
                 mmap_threshold >> 20)
    return ok
