"""Shared setup for the kernel benchmarks (``pytest bench/ --benchmark-only``).

The benchmarks are the ``bench_*`` functions of ``bench/bench_kernel_*.py``: names pytest's own
``python_files``/``python_functions`` (``test_*``) never match, so a plain ``pytest`` (``testpaths =
tests``), ``pytest .`` or ``pytest bench/`` collects none of them.  The hooks below collect them only
with ``--benchmark-only``, or when a file is named on the command line.  The other files in bench/
(``throughput.py``, ``bench_attention.py``, ``bench_masks.py``, ...) are scripts, never collected.

``JEPA_BENCH_SCALE`` = ``full`` (ViT-B/16 at 224 px, B=128; real ViT-S/B/L parameter lists)
or ``small`` (B=16; 1/6 of the blocks).  Default: ``full`` on CUDA, ``small`` on CPU.
``JEPA_BENCH_THREADS`` sets the CPU thread count (default: torch's).
Inputs have the dtypes the model produces: fp32 context tokens for the gather and fp32 targets for
the loss (the residual stream is fp32 under autocast), predictions in the autocast dtype (bf16 on
CUDA, fp32 on CPU).  These are CPU benchmarks first: on a GPU, ``bench/gpu_check.sh`` measures the
kernels at realistic sizes with the L2 cache flushed (B = 128 here fits in a GPU's L2).
The machine is named as in every bench record (``bench/harness.py``): in each benchmark's ``extra_info``
and in the ``machine_info`` of ``--benchmark-json`` / ``--benchmark-autosave``.
"""
import os
from fnmatch import fnmatch
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import jepa_kernels
from bench import harness

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
SCALE = os.environ.get("JEPA_BENCH_SCALE", "full" if CUDA else "small")
if SCALE not in ("small", "full"):
    raise ValueError(f"JEPA_BENCH_SCALE must be 'small' or 'full', got {SCALE!r}")
DTYPE = torch.bfloat16 if CUDA else torch.float32
if os.environ.get("JEPA_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["JEPA_BENCH_THREADS"]))
# reference = the reference I-JEPA code's unfused way; torch = our fallback; triton = fused kernel
IMPLS = ["reference", "torch"] + (["triton"] if CUDA and jepa_kernels.HAS_TRITON else [])


def ijepa_sizes():
    """ViT-B/16 at 224 px: N=196 patches, D=768, M=4 target masks of K=36 patches."""
    return dict(B=128 if SCALE == "full" else 16, N=196, D=768, M=4, K=36)


def mask_indices(m, b, k, n, device=DEVICE):
    """Sorted distinct patch indices per (mask, sample), as the I-JEPA mask collator yields."""
    return torch.rand(m, b, n, device=device).argsort(-1)[..., :k].sort(-1).values


BENCH_DIR = Path(__file__).resolve().parent
BENCH_FILES = "bench_kernel_*.py"
BENCH_FUNCTIONS = "bench_"


def is_bench_file(path):
    return fnmatch(path.name, BENCH_FILES) and path.resolve().parent == BENCH_DIR


class BenchModule(pytest.Module):
    """A kernel benchmark file: its items are the ``bench_*`` functions (not ``python_functions``)."""

    def funcnamefilter(self, name):
        return name.startswith(BENCH_FUNCTIONS)


def pytest_collect_file(file_path, parent):
    """Collect ``bench_kernel_*.py`` (which ``python_files`` skips) under ``--benchmark-only``."""
    if (is_bench_file(file_path) and parent.config.getoption("benchmark_only", False)
            and not parent.session.isinitpath(file_path)):
        return BenchModule.from_parent(parent, path=file_path)
    return None


def pytest_pycollect_makemodule(module_path, parent):
    """A benchmark file named on the command line reaches pytest's own collection: make it a BenchModule."""
    if is_bench_file(module_path):
        return BenchModule.from_parent(parent, path=module_path)
    return None


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config, machine_info):
    """pytest-benchmark's saved JSON carries the harness's machine line beside its own fields."""
    machine_info["jepa_machine"] = harness.machine(DEVICE)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "impls(extra=(), exclude=()): change the implementations an ``impl`` benchmark runs"
    )


def pytest_generate_tests(metafunc):
    """Parametrise ``impl`` over reference / torch / triton (triton only on CUDA)."""
    if "impl" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("impls")
        extra = tuple(marker.kwargs.get("extra", ())) if marker else ()
        exclude = tuple(marker.kwargs.get("exclude", ())) if marker else ()
        impls = [i for i in IMPLS[:1] + list(extra) + IMPLS[1:] if i not in exclude]
        metafunc.parametrize("impl", impls)


@pytest.fixture
def env():
    """Device, dtype, scale and input helpers shared by the benchmarks."""
    return SimpleNamespace(
        device=DEVICE, dtype=DTYPE, scale=SCALE, cuda=CUDA, sizes=ijepa_sizes(), mask_indices=mask_indices
    )


@pytest.fixture
def run_bench(benchmark):
    """Time ``fn`` under ``impl`` (sets the kernels backend), record bytes and GB/s."""

    def run(fn, *, nbytes, group, impl, **info):
        if impl in ("torch", "triton"):
            jepa_kernels.set_backend(impl)
        benchmark.group = group
        benchmark.extra_info.update(
            impl=impl, bytes=int(nbytes), device=str(DEVICE), machine=harness.machine(DEVICE), scale=SCALE, **info
        )
        if CUDA:
            iters = 10

            def timed():
                for _ in range(iters):
                    fn()
                torch.cuda.synchronize()

            benchmark.pedantic(timed, rounds=20, warmup_rounds=2, iterations=1)
        else:
            iters = 1
            benchmark.pedantic(fn, rounds=10, warmup_rounds=1, iterations=1)
        # min, not median: a shared machine only ever adds time
        seconds = benchmark.stats.stats.min / iters
        benchmark.extra_info["seconds_per_call"] = seconds
        benchmark.extra_info["GB/s"] = round(nbytes / seconds / 1e9, 2)

    yield run
    jepa_kernels.set_backend("auto")
