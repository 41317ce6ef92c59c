"""Host time of one ``jepa_kernels.ema_update_`` call on a ViT parameter list: everything but the kernel itself.

    python bench/ema_host_time.py [--model vit_b] [--calls 2000] [--out FILE]

Runs on CPU: the Triton path is forced under Triton's interpreter and the kernel launch is replaced
by a no-op, so what is timed is the work a training step pays on the host before the launch (plan
lookup, momentum, version bump).  Compared in the same run with: the floor (reading the two data
pointers of every pair, which any per-storage cache must do) and the custom-op entry that every call
went through before the plan cache (detach, op dispatch, checks; still the path inside torch.compile).
The target is <= 50 us per call for ViT-B (144 pairs).  Timings are the best of several rounds
(a shared machine only ever adds time); run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported: the Triton path on CPU tensors
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import jepa_kernels  # noqa: E402
from jepa_kernels import ema  # noqa: E402
from bench.bench_kernel_ema import MODELS, vit_param_shapes  # noqa: E402
from jepa.io import atomic_write_text  # noqa: E402
from jepa.profiling import cpu_flags, cpu_has_bf16_matmul, cpu_model  # noqa: E402


def cpu_description() -> str:
    """The CPU's model name, core count and the vector/matrix features that set its speed."""
    feats = cpu_flags(("avx2", "avx512f", "avx512_bf16", "amx_bf16"))
    bf16 = " (bf16 matmul)" if cpu_has_bf16_matmul() else ""
    return f"{cpu_model()}, {os.cpu_count()} cores, features: {', '.join(feats) or 'none of avx2/avx512/amx'}{bf16}"


def best_us(fn, calls: int, rounds: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls)
    return best * 1e6


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vit_b", choices=list(MODELS))
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--out", help="also write the result as JSON here")
    args = p.parse_args(argv)

    depth, dim = MODELS[args.model]
    shapes = vit_param_shapes(depth, dim)
    targets = [torch.nn.Parameter(torch.zeros(s), requires_grad=False) for s in shapes]
    onlines = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
    momentum = torch.tensor(0.996, dtype=torch.float64)
    jepa_kernels.set_backend("triton")
    ema._launch = lambda plan, m: None  # host time only: the interpreter would run the kernel in Python
    ema.ema_update_now(targets, onlines, momentum)  # builds the plan (the first call's cost is not timed)

    ptr = torch.Tensor.data_ptr
    results = {
        "ema_update_ (plan cached)": best_us(lambda: jepa_kernels.ema_update_(targets, onlines, momentum), args.calls),
        "floor: read both data pointers": best_us(
            lambda: (tuple(map(ptr, targets)), tuple(map(ptr, onlines))), args.calls),
        "custom-op entry (detach + dispatch; the compiled path)": best_us(lambda: ema.ema_update_op(
            [t.detach() for t in targets], [o.detach() for o in onlines], 0.0, momentum), max(1, args.calls // 20)),
    }
    record = {"model": args.model, "pairs": len(shapes), "cpu": cpu_description(), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "us_per_call": results, "target_us": 50.0}
    print(f"EMA host time per call, {args.model} ({len(shapes)} pairs), {record['cpu']}, torch {torch.__version__}")
    for name, us in results.items():
        print(f"  {name:<36} {us:9.1f} us")
    ok = results["ema_update_ (plan cached)"] <= 50.0
    print(f"  target <= 50 us: {'met' if ok else 'NOT met'}")
    if args.out:
        atomic_write_text(Path(args.out), json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
