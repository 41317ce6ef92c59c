"""Host time of one ``jepa_kernels.ema_update_`` call on a ViT parameter list: everything but the kernel itself.

    python bench/ema_host_time.py [--model vit_b] [--calls 2000] [--reps 5] [--out FILE]

Runs on CPU: the Triton path is forced under Triton's interpreter and the kernel launch is replaced
by a no-op, so what is timed is the work a training step pays on the host before the launch (plan
lookup, momentum, version bump).  Compared in the same run with: the floor (reading the two data
pointers of every pair, which any per-storage cache must do) and the custom-op entry that every call
went through before the plan cache (detach, op dispatch, checks; still the path inside torch.compile).
The target is <= 50 us per call for ViT-B (144 pairs).  Timings are the best of ``--reps`` rounds of
``--calls`` calls (a shared machine only ever adds time); run it on a quiet machine.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported: the Triton path on CPU tensors
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import jepa_kernels  # noqa: E402
from jepa_kernels import ema  # noqa: E402
from bench import harness  # noqa: E402
from bench.bench_kernel_ema import MODELS, vit_param_shapes  # noqa: E402


def best_us(fn, calls: int, reps: int) -> float:
    """Microseconds per call: the best of ``reps`` rounds of ``calls`` calls (host time, nothing synchronised)."""
    return 1e6 * harness.time_calls(fn, reps, calls=calls).best


def main(argv=None) -> int:
    p = harness.parser(__doc__)
    p.add_argument("--model", default="vit_b", choices=list(MODELS))
    p.add_argument("--calls", type=int, default=2000, help="calls per timed round (default 2000)")
    harness.add_timing(p, reps=5, help="timed rounds, the best kept")
    harness.add_out(p)
    args = harness.parse(p, argv)
    if args.calls < 1:
        p.error(f"--calls must be >= 1, got {args.calls}")
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
        "ema_update_ (plan cached)": best_us(lambda: jepa_kernels.ema_update_(targets, onlines, momentum), args.calls,
                                              args.reps),
        "floor: read both data pointers": best_us(
            lambda: (tuple(map(ptr, targets)), tuple(map(ptr, onlines))), args.calls, args.reps),
        "custom-op entry (detach + dispatch; the compiled path)": best_us(lambda: ema.ema_update_op(
            [t.detach() for t in targets], [o.detach() for o in onlines], 0.0, momentum), max(1, args.calls // 20), args.reps),
    }
    record = {"model": args.model, "pairs": len(shapes), "us_per_call": results, "target_us": 50.0}
    ok = results["ema_update_ (plan cached)"] <= 50.0
    lines = [f"EMA host time per call, {args.model} ({len(shapes)} pairs)", "", "| path | us per call |", "|---|---:|"]
    lines += [f"| {name} | {us:.1f} |" for name, us in results.items()]
    lines += ["", f"Target <= 50 us: {'met' if ok else 'NOT met'}"]
    harness.write_record(args.out, record, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
