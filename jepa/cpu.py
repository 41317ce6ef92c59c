"""What this CPU is and can do (``/proc/cpuinfo``), and the glibc allocator set-up that CPU training wants."""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform
import sys
from pathlib import Path

log = logging.getLogger("jepa")

# glibc mallopt parameters
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_allocator_tuned: bool | None = None

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


BF16_FLAGS = ("amx_bf16", "avx512_bf16")
FORCE_BF16_ENV = "JEPA_CPU_BF16"  # 1: treat the CPU as having bf16 matrix units, 0: as not; unset: ask the CPU


def cpu_bf16_matmul_flag(cpuinfo: str | None = None) -> str | None:
    """The bf16 matrix instruction set this CPU has (``amx_bf16`` before ``avx512_bf16``), or None.

    ``JEPA_CPU_BF16=1`` / ``0`` overrides the probe (``forced``/None), so tests and benchmarks can take either
    branch on any CPU; ``cpuinfo`` (a ``/proc/cpuinfo`` text) bypasses the override.
    """
    forced = os.environ.get(FORCE_BF16_ENV, "").strip() if cpuinfo is None else ""
    if forced in ("0", "1"):
        return f"{FORCE_BF16_ENV}={forced}" if forced == "1" else None
    found = cpu_flags(BF16_FLAGS, cpuinfo)
    return found[0] if found else None


def cpu_has_bf16_matmul(cpuinfo: str | None = None) -> bool:
    """Whether this CPU has bf16 matrix instructions (AVX-512 BF16 or AMX), where bf16 training is the fast path."""
    return cpu_bf16_matmul_flag(cpuinfo) is not None


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
