"""One gloo rank of the SIGReg test: ``sigreg_worker.py RANK WORLD STORE_FILE OUT_DIR``.

Every rank builds the same global batch (``make_inputs``), keeps its own consecutive rows (``ROWS``,
unequal on purpose) and saves the statistic, the gradient on its rows, and the gradient of a shared
linear layer averaged over ranks as DDP would, to ``OUT_DIR/rank<R>.pt``.  tests/test_sigreg.py runs
the single-process reference on the whole batch with the same functions.
"""
from __future__ import annotations

import sys

import torch

ROWS = (4, 3)  # rows per rank: N = 7, split unevenly
WIDTH, DIM, SLICES = 6, 5, 3


def make_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The global batch's inputs ``[N, WIDTH]``, a linear layer ``[WIDTH, DIM]`` and the directions, in float64."""
    from jepa.sigreg import sigreg_directions
    g = torch.Generator().manual_seed(7)
    inputs = torch.randn(sum(ROWS), WIDTH, generator=g, dtype=torch.float64)
    layer = torch.randn(WIDTH, DIM, generator=g, dtype=torch.float64) / WIDTH ** 0.5
    return inputs, layer, sigreg_directions(DIM, SLICES, step=3, seed=11, dtype=torch.float64)


def evaluate(inputs: torch.Tensor, layer: torch.Tensor, directions: torch.Tensor, scale_by_n: bool) -> dict:
    """The statistic of ``inputs @ layer``, its gradient on the embeddings and on ``layer``."""
    from jepa.sigreg import sigreg
    layer = layer.clone().requires_grad_(True)
    z = inputs @ layer
    z.retain_grad()
    value = sigreg(z, directions, scale_by_n=scale_by_n)
    value.backward()
    return {"value": value.detach(), "z_grad": z.grad, "layer_grad": layer.grad}


def main(rank: int, world: int, store: str, out: str) -> None:
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        inputs, layer, directions = make_inputs()
        start = sum(ROWS[:rank])
        mine = inputs[start:start + ROWS[rank]]
        results = {}
        for scaled in (False, True):
            r = evaluate(mine, layer, directions, scaled)
            dist.all_reduce(r["layer_grad"])
            r["layer_grad"] /= world  # what DDP does to parameter gradients
            results[scaled] = r
        torch.save(results, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
