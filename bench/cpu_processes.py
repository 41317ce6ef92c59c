"""One training process on every core, or one single-threaded process per core (torchrun, gloo DDP): images/s.

Usage::

    python bench/cpu_processes.py [--config configs/cpu_fashion_mnist.yaml] [--cores 2] [--steps 100 400]
        [--out FILE] [-- --section.key value ...]

Small ViTs use two cores badly from one process (intra-op threads split matmuls too small to share).
This times the trainer as a user runs it, both ways, at the same global batch: ``python -m jepa.train`` on
``--cores`` threads, and ``torchrun --nproc_per_node CORES`` with one thread per process and the per-process
batch divided by CORES. Each way runs to two ``--training.stop_at_step`` values; the difference of the wall
times over the difference of the steps is the time per step with start-up (data, model, checkpoint) removed.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import harness  # noqa: E402
from jepa.config import load_config  # noqa: E402


def wall(cmd: list[str], threads: int) -> float:
    """Seconds ``cmd`` takes with OMP_NUM_THREADS=threads; raises on failure."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    t0 = time.time()
    done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-2000:]}")
    return time.time() - t0


def seconds_per_step(launcher: list[str], threads: int, args, batch: int, overrides: list[str]) -> float:
    times = []
    for steps in args.steps:
        with tempfile.TemporaryDirectory() as run_dir:
            cmd = [*launcher, "-m", "jepa.train", "--config", args.config, "--run-dir", run_dir,
                   "--training.stop_at_step", str(steps), "--data.batch_size", str(batch), *overrides]
            times.append(wall(cmd, threads))
            print(f"  {steps} steps: {times[-1]:.1f} s", flush=True)
    return (times[1] - times[0]) / (args.steps[1] - args.steps[0])


def main(argv: list[str] | None = None) -> int:
    own, overrides = harness.split_passthrough(argv)
    ap = harness.parser(__doc__)
    ap.add_argument("--config", default="configs/cpu_fashion_mnist.yaml")
    ap.add_argument("--cores", type=int, default=2, help="threads of the one process = processes of the other")
    ap.add_argument("--steps", type=int, nargs=2, default=[100, 400], metavar=("FEW", "MANY"))
    harness.add_out(ap)
    args = harness.parse(ap, own)
    if args.cores < 2 or not 0 < args.steps[0] < args.steps[1]:
        ap.error(f"--cores must be >= 2 and --steps FEW MANY with 0 < FEW < MANY, got {args.cores} and {args.steps}")
    batch = load_config(args.config).data.batch_size
    if batch % args.cores:
        ap.error(f"data.batch_size {batch} of {args.config} does not split over {args.cores} processes")
    print(f"one process, {args.cores} threads, batch {batch}", flush=True)
    one = seconds_per_step([sys.executable], args.cores, args, batch, overrides)
    print(f"{args.cores} processes (torchrun), 1 thread each, batch {batch // args.cores} each", flush=True)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.cores}"]
    many = seconds_per_step(torchrun, 1, args, batch // args.cores, overrides)
    rows = [(f"1 process x {args.cores} threads", one), (f"{args.cores} processes x 1 thread (gloo DDP)", many)]
    lines = [f"### One process or one per core: {args.config}, global batch {batch}", "",
             "| layout | ms per step | images/s | vs one process |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {1000 * s:.0f} | {batch / s:.0f} | {one / s:.2f}x |" for name, s in rows]
    lines += ["", f"Per-step time: wall time at step {args.steps[1]} minus step {args.steps[0]}, "
              f"over {args.steps[1] - args.steps[0]} steps."]
    harness.write_record(args.out, {"config": args.config, "batch": batch, "cores": args.cores, "steps": args.steps,
                                    "overrides": overrides, "seconds_per_step": dict(rows)}, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
