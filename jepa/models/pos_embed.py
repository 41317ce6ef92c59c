"""Fixed 2-D sin-cos position embeddings, not learned (docs/algorithm.md#images-to-patches).

Imported weights may bring their own table (docs/interop.md); ``resize_grid`` moves such a
table to another patch grid.
"""
import torch
import torch.nn.functional as F


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


def is_our_sincos(table: torch.Tensor, grid: tuple[int, int], atol: float = 1e-6) -> bool:
    """Whether ``table`` (``[1, N, D]`` or ``[N, D]``) is this project's sin-cos table for ``grid``."""
    ours = sincos_2d(table.shape[-1], *grid)
    return table.numel() == ours.numel() and torch.allclose(table.reshape(ours.shape).float(), ours, atol=atol)


def resize_grid(table: torch.Tensor, old: tuple[int, int], new: tuple[int, int]) -> torch.Tensor:
    """A ``[1, old_h·old_w, D]`` table on the ``new`` grid: bicubic interpolation over the 2-D grid.

    As the official I-JEPA code and transformers do it (``align_corners=False``, no antialiasing);
    the same grid returns ``table`` itself.
    """
    if tuple(old) == tuple(new):
        return table
    dim = table.shape[-1]
    grid = table.detach().float().reshape(1, old[0], old[1], dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=tuple(new), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, new[0] * new[1], dim).to(table.dtype)
