"""Time ``MaskSampler.sample`` per batch on the grids the trainer uses (CPU).

Usage: ``python bench/bench_masks.py [--iters 200] [--threads 1] [--out FILE]``.  One thread
matches a DataLoader worker, where the collate function runs.
"""
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from bench import harness  # noqa: E402
from jepa.masks import MaskSampler  # noqa: E402

CASES = [((7, 7), 128, 4), ((14, 14), 256, 10), ((16, 16), 256, 10)]


def measure(grid, batch: int, min_keep: int, reps: int) -> dict:
    """Seconds per ``sample`` call (10 untimed first) and the sampler's token statistics over the timed calls."""
    sampler = MaskSampler(grid, min_keep=min_keep)
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        sampler.sample(batch, generator=g)
    sampler.reset_stats()
    timing = harness.time_calls(lambda: sampler.sample(batch, generator=g), reps, warmup=0)
    return {"grid": list(grid), "batch": batch, "min_keep": min_keep, "median_ms": 1e3 * timing.median,
            "mean_ms": 1e3 * timing.mean, "p95_ms": 1e3 * timing.quantile(0.95), "stats": sampler.stats()}


def line(r: dict) -> str:
    st = r["stats"]
    return (f"- grid {r['grid'][0]}x{r['grid'][1]} B={r['batch']} min_keep={r['min_keep']}: "
            f"median {r['median_ms']:.3f} ms, mean {r['mean_ms']:.3f} ms, "
            f"p95 {r['p95_ms']:.3f} ms | context {st['context_tokens']:.1f} "
            f"(uncut {st['context_tokens_uncut']:.1f}), target {st['target_tokens']:.1f}, "
            f"relaxations/batch {st['relaxations_per_batch']:.3f}, target redraws {st['target_redraws']}")


def main(argv=None) -> int:
    p = harness.parser(__doc__)
    harness.add_timing(p, reps=200, flags=("--iters", "--reps"), help="timed batches per case")
    harness.add_threads(p, default=1)
    harness.add_out(p)
    args = harness.parse(p, argv)
    rows = [measure(grid, batch, min_keep, args.reps) for grid, batch, min_keep in CASES]
    text = f"MaskSampler.sample, {args.reps} batches per case\n\n" + "\n".join(line(r) for r in rows)
    harness.write_record(args.out, {"reps": args.reps, "rows": rows}, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
