"""Fixed 2-D sin-cos position embeddings, not learned (docs/algorithm.md#images-to-patches)."""
import torch


def _sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000 ** omega
    out = pos.reshape(-1, 1).double() * omega.reshape(1, -1)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_2d(dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """``[grid_h * grid_w, dim]`` table, row-major; half the channels encode the row, half the column.

    Odd or non-multiple-of-4 widths are zero-padded so any ``dim`` works.
    """
    quarter = dim // 4
    rows, cols = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    emb = torch.cat([_sincos_1d(2 * quarter, rows), _sincos_1d(2 * quarter, cols)], dim=1)
    if emb.shape[1] < dim:
        emb = torch.cat([emb, emb.new_zeros(emb.shape[0], dim - emb.shape[1])], dim=1)
    return emb.float()
