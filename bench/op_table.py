"""Where a CPU training step's time goes: self CPU time per op class (matmul, casts, attention, ...) from the profiler.

    python bench/op_table.py [--config configs/bench_fmnist_tiny.yaml] [--precisions fp32,bf16] [--reps 5]
        [--threads 2] [--out FILE]

Builds the Trainer of the config (synthetic images, so only the step is measured), runs ``--warmup`` steps,
then profiles ``--reps`` steps with ``torch.profiler`` and sums each ATen op's self CPU time into the classes
of ``CLASSES`` (by name; the first class whose key occurs in the op's name wins, else "other"). Beside it, the
matmul peak of the same run and the step's MFU, so that a low MFU shows which non-matmul classes to attack.
Profiling adds a little time to every op; compare classes, not the total with bench/throughput.py.
"""
from __future__ import annotations

import collections
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from bench import harness  # noqa: E402
from jepa.config import load_config  # noqa: E402
from jepa.train import Trainer  # noqa: E402

CLASSES = [
    ("matmul", ("addmm", "mm", "bmm", "matmul", "linear")),
    ("attention", ("scaled_dot_product", "softmax")),
    ("layer norm", ("layer_norm",)),
    ("GELU", ("gelu",)),
    ("casts and copies", ("copy_", "_to_copy", "aten::to", "clone", "contiguous")),
    ("gather and loss", ("jepa_kernels", "index_select", "index_add")),
    ("optimizer", ("adam", "_foreach", "lerp", "addcdiv", "sqrt")),
    ("elementwise", ("add", "mul", "div", "sub", "fill_", "zero_", "sum", "mean", "where", "cat", "stack")),
]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def op_class(name: str) -> str:
    return next((c for c, keys in CLASSES if any(k in name for k in keys)), "other")


def profile_steps(config: str, precision: str, reps: int, warmup: int, run_dir: Path) -> dict[str, float]:
    """Milliseconds of self CPU time per step for each op class."""
    cfg = load_config(config, {"training.precision": precision, "training.device": "cpu",
                               "data.dataset": "synthetic", "eval.every_epochs": 0, "logging.rankme_batch": 0})
    trainer = Trainer(cfg, run_dir=run_dir)
    batches = trainer.epoch_batches()
    groups = [next(batches) for _ in range(warmup + reps)]
    for group in groups[:warmup]:
        trainer.train_step(group)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for group in groups[warmup:]:
            trainer.train_step(group)
    totals: collections.Counter = collections.Counter()
    for event in prof.key_averages():
        totals[op_class(event.key)] += event.self_cpu_time_total / 1e3 / reps
    return dict(totals.most_common())


SHAPES = [("qkv, target encoder", 6272, 192, 576), ("MLP in, target encoder", 6272, 192, 768),
          ("MLP out, target encoder", 6272, 768, 192), ("qkv, context encoder", 1920, 192, 576),
          ("MLP in, predictor", 2048, 96, 384)]  # M x K x N of bench_fmnist_tiny's forward matmuls (batch 128)


def shape_rates(dtype: torch.dtype, reps: int) -> dict[str, float]:
    """GFLOP/s of lone matmuls at the step's own shapes: what the matmuls could reach outside the step."""
    out = {}
    for name, m, k, n in SHAPES:
        a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
        out[f"{name} {m}x{k}x{n}"] = 2 * m * k * n / harness.time_calls(lambda: a @ b, reps, warmup=2).best / 1e9
    return out


def main(argv: list[str] | None = None) -> int:
    p = harness.parser(__doc__)
    p.add_argument("--config", default=str(ROOT / "configs" / "bench_fmnist_tiny.yaml"))
    p.add_argument("--precisions", default="fp32,bf16", help="comma-separated, of fp32 and bf16")
    harness.add_timing(p, reps=5, warmup=3, help="profiled steps")
    harness.add_threads(p, default=2)
    harness.add_out(p)
    args = harness.parse(p, argv)
    precisions = [x.strip() for x in args.precisions.split(",") if x.strip()]
    if not precisions or any(x not in DTYPES for x in precisions):
        p.error(f"--precisions takes a comma-separated subset of {', '.join(DTYPES)}, got {args.precisions!r}")
    rows, lines = {}, [f"### Self CPU time per op class, {Path(args.config).name} ({args.reps} steps profiled)", ""]
    for precision in precisions:
        with tempfile.TemporaryDirectory() as tmp:
            classes = profile_steps(args.config, precision, args.reps, args.warmup, Path(tmp))
        peak = harness.matmul_peak("cpu", DTYPES[precision]) / 1e9
        shapes = shape_rates(DTYPES[precision], 10)
        rows[precision] = {"classes_ms": {k: round(v, 2) for k, v in classes.items()},
                           "matmul_peak_gflops": round(peak), "shape_gflops": {k: round(v) for k, v in shapes.items()}}
        total = sum(classes.values())
        lines += [f"{precision}: matmul peak {peak:.0f} GFLOP/s (2048-matmuls, this run)", "",
                  "| op class | ms per step | share |", "|---|---:|---:|"]
        lines += [f"| {c} | {ms:.1f} | {100 * ms / total:.0f} % |" for c, ms in classes.items()]
        lines += [f"| total | {total:.1f} | 100 % |", "", "| lone matmul at the step's shape | GFLOP/s |", "|---|---:|"]
        lines += [f"| {name} | {rate:.0f} |" for name, rate in shapes.items()] + [""]
    harness.write_record(args.out, {"config": args.config, "reps": args.reps, "rows": rows}, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
