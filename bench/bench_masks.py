"""Time ``MaskSampler.sample`` per batch on the grids the trainer uses (CPU).

Usage: ``python bench/bench_masks.py [--iters 200] [--threads 1]``.  One thread
matches a DataLoader worker, where the collate function runs.
"""
import argparse
import pathlib
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from jepa.masks import MaskSampler  # noqa: E402

CASES = [((7, 7), 128, 4), ((14, 14), 256, 10), ((16, 16), 256, 10)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {args.iters} batches per case")
    for grid, batch, min_keep in CASES:
        sampler = MaskSampler(grid, min_keep=min_keep)
        g = torch.Generator().manual_seed(0)
        for _ in range(10):
            sampler.sample(batch, generator=g)
        sampler.reset_stats()
        times = []
        for _ in range(args.iters):
            t0 = time.perf_counter()
            sampler.sample(batch, generator=g)
            times.append(time.perf_counter() - t0)
        times.sort()
        st = sampler.stats()
        print(f"grid {grid[0]}x{grid[1]} B={batch} min_keep={min_keep}: "
              f"median {1e3 * times[len(times) // 2]:.3f} ms, mean {1e3 * sum(times) / len(times):.3f} ms, "
              f"p95 {1e3 * times[int(0.95 * len(times))]:.3f} ms | context {st['context_tokens']:.1f} "
              f"(uncut {st['context_tokens_uncut']:.1f}), target {st['target_tokens']:.1f}, "
              f"relaxations/batch {st['relaxations_per_batch']:.3f}, target redraws {st['target_redraws']}")


if __name__ == "__main__":
    main()
