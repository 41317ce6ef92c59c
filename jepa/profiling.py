"""Where a training step spends its time: torch.profiler traces, phase timing, op counts.

The trainer labels its phases with ``record_function`` ranges (``PHASES``); ``trace_profiler``
writes them into TensorBoard traces, ``PhaseTimer`` turns the same ranges into seconds per
phase for ``bench/throughput.py``.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import defaultdict
from pathlib import Path

import torch

log = logging.getLogger("jepa")

# The record_function labels of one step, in order ("masks" runs inside "data", "predictor" inside
# "context_forward"; a compiled online model folds the predictor into context_forward).
PHASES = ("data", "masks", "target_forward", "context_forward", "predictor", "loss", "backward", "optimizer", "ema")


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
