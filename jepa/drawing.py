"""Pictures of what a model does, as uint8 RGB arrays ``[H, W, 3]``: mask overlays, feature PCA maps, retrieval.

Pure functions of tensors (no model, no dataset), drawn with torch and Pillow only, so they are exact and
deterministic: ``jepa.visualize`` gathers the inputs and writes PNGs or TensorBoard images.
"""
from __future__ import annotations

import io
from typing import Sequence

import torch
from PIL import Image, ImageDraw

from jepa.io import atomic_write_bytes

CONTEXT_TINT = (40, 140, 255)  # context tokens: blended over the image
TINT_ALPHA = 0.45
# one colour per target block (masks.npred > 8 repeats them); none is close to the context tint
BLOCK_COLOURS = ((230, 25, 75), (255, 225, 25), (60, 180, 75), (245, 130, 48), (240, 50, 230), (255, 255, 255),
                 (170, 110, 40), (128, 0, 0))
BACKGROUND = 255
GOOD, BAD = (60, 180, 75), (230, 25, 75)  # retrieval: neighbour of the query's class or not


def to_rgb_uint8(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalised images ``[B, C, H, W]`` (C = 1 or 3) back to uint8 RGB ``[B, H, W, 3]``."""
    m = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    x = ((images.detach().float().cpu() * s + m) * 255).round().clamp(0, 255).to(torch.uint8)
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
    return x.permute(0, 2, 3, 1).contiguous()


def upscale(image: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest-neighbour enlargement of ``[H, W, C]`` by an integer ``factor`` (tiny images stay crisp)."""
    return image.repeat_interleave(factor, 0).repeat_interleave(factor, 1) if factor > 1 else image


def display_scale(image_size: int, target: int = 96) -> int:
    """The integer factor that brings ``image_size`` to about ``target`` pixels (1 for large images)."""
    return max(1, round(target / image_size))


def outline_width(cell: int) -> int:
    return max(1, cell // 8)


def mask_overlay(image: torch.Tensor, grid: tuple[int, int], context: torch.Tensor,
                 targets: Sequence[torch.Tensor]) -> torch.Tensor:
    """``image`` ``[H, W, 3]`` uint8 with the ``context`` token cells tinted and each target block outlined.

    ``context``: patch ids; ``targets``: one id tensor per (rectangular) block. Every pixel of a context cell is
    blended with ``CONTEXT_TINT``; block ``m`` gets a border ``outline_width`` pixels wide, inside its bounding
    box, in ``BLOCK_COLOURS[m]`` (later blocks drawn over earlier ones). Nothing else changes.
    """
    h, w, _ = image.shape
    cell = h // grid[0]
    if cell * grid[0] != h or cell * grid[1] != w:
        raise ValueError(f"image of {h}x{w} pixels is not a whole number of cells of the {grid} patch grid")
    out = image.clone()
    in_context = torch.zeros(grid[0] * grid[1], dtype=torch.bool)
    in_context[context.long().cpu()] = True
    pixels = in_context.view(*grid).repeat_interleave(cell, 0).repeat_interleave(cell, 1)
    tint = torch.tensor(CONTEXT_TINT, dtype=torch.float32)
    blended = ((1 - TINT_ALPHA) * out.float() + TINT_ALPHA * tint).round().to(torch.uint8)
    out[pixels] = blended[pixels]
    t = outline_width(cell)
    for m, block in enumerate(targets):
        rows, cols = block.long().cpu() // grid[1], block.long().cpu() % grid[1]
        top, left = int(rows.min()) * cell, int(cols.min()) * cell
        bottom, right = (int(rows.max()) + 1) * cell, (int(cols.max()) + 1) * cell
        colour = torch.tensor(BLOCK_COLOURS[m % len(BLOCK_COLOURS)], dtype=torch.uint8)
        out[top:top + t, left:right] = colour
        out[bottom - t:bottom, left:right] = colour
        out[top:bottom, left:left + t] = colour
        out[top:bottom, right - t:right] = colour
    return out


def pca_rgb(features: torch.Tensor) -> torch.Tensor:
    """Patch features ``[n, gh, gw, D]`` projected on their first 3 principal components, as uint8 ``[n, gh, gw, 3]``.

    The components are fitted over all tokens of all ``n`` images together (so colours compare across the grid);
    each is scaled min-to-max onto 0-255. Signs are fixed (each direction's largest coordinate positive), so the
    colours depend only on the features. Fewer than 3 varying directions leave the rest of the channels at 0.
    """
    n, gh, gw, d = features.shape
    x = features.detach().double().cpu().reshape(-1, d)
    x = x - x.mean(0)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    k = min(3, vh.shape[0])
    v = vh[:k]
    signs = torch.sign(v.gather(1, v.abs().argmax(1, keepdim=True)))
    proj = x @ (v * signs).T                                                   # [n·gh·gw, k]
    lo, hi = proj.min(0).values, proj.max(0).values
    span = hi - lo
    live = span > 1e-9 * max(float(s[0]) if s.numel() else 0.0, 1e-300)       # components that actually vary
    scaled = torch.where(live, (proj - lo) / torch.where(live, span, torch.ones_like(span)), torch.zeros_like(proj))
    rgb = torch.zeros(proj.shape[0], 3, dtype=torch.float64)
    rgb[:, :k] = scaled
    return (rgb * 255).round().to(torch.uint8).view(n, gh, gw, 3)


def grid_of(tiles: Sequence[torch.Tensor], cols: int, pad: int = 4) -> torch.Tensor:
    """Equal-sized tiles ``[h, w, 3]`` laid out row by row, ``cols`` per row, ``pad`` white pixels apart."""
    if not tiles:
        raise ValueError("no tiles to lay out")
    h, w, _ = tiles[0].shape
    rows = -(-len(tiles) // cols)
    out = torch.full((rows * h + (rows + 1) * pad, cols * w + (cols + 1) * pad, 3), BACKGROUND, dtype=torch.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        out[top:top + h, left:left + w] = tile
    return out


def hstack(tiles: Sequence[torch.Tensor], pad: int = 2) -> torch.Tensor:
    """Tiles of one height side by side with ``pad`` white columns between them."""
    return grid_of(list(tiles), len(tiles), pad)[pad:-pad, pad:-pad] if pad else torch.cat(list(tiles), dim=1)


def captioned(tile: torch.Tensor, text: str, colour=(0, 0, 0), height: int = 12) -> torch.Tensor:
    """``tile`` with ``text`` (cut to fit) in Pillow's built-in bitmap font on a white strip below it."""
    w = tile.shape[1]
    strip = Image.new("RGB", (w, height), (BACKGROUND,) * 3)
    draw = ImageDraw.Draw(strip)
    while text and draw.textlength(text) > w - 2:
        text = text[:-1]
    draw.text((1, 0), text, fill=tuple(colour))
    strip_t = torch.frombuffer(bytearray(strip.tobytes()), dtype=torch.uint8).view(height, w, 3)
    return torch.cat([tile, strip_t], dim=0)


def framed(tile: torch.Tensor, colour, width: int = 2) -> torch.Tensor:
    """``tile`` with a ``width``-pixel border of ``colour`` drawn over its edge."""
    out = tile.clone()
    c = torch.tensor(colour, dtype=torch.uint8)
    out[:width], out[-width:], out[:, :width], out[:, -width:] = c, c, c, c
    return out


def feature_rows(images: torch.Tensor, maps: Sequence[torch.Tensor], names: Sequence[str], scale: int,
                 cols: int = 4) -> torch.Tensor:
    """Per image: the image beside each of its PCA maps (``maps[j]`` ``[n, gh, gw, 3]``), captioned with ``names``."""
    n, h, w, _ = images.shape
    tiles = []
    for i in range(n):
        parts = [captioned(upscale(images[i], scale), "image")]
        for m, name in zip(maps, names):
            cells = h * scale // m.shape[1]
            parts.append(captioned(upscale(m[i], cells), name))
        tiles.append(hstack(parts))
    return grid_of(tiles, cols, pad=8)


def retrieval_rows(queries: torch.Tensor, query_labels: Sequence[str], neighbours: torch.Tensor,
                   neighbour_labels: Sequence[Sequence[str]], scale: int) -> torch.Tensor:
    """One row per query: the query, then its neighbours framed green (same label) or red (another label)."""
    rows = []
    for i in range(queries.shape[0]):
        q = captioned(framed(upscale(queries[i], scale), (0, 0, 0)), f"query: {query_labels[i]}")
        tiles = [q]
        for j in range(neighbours.shape[1]):
            label = neighbour_labels[i][j]
            colour = GOOD if label == query_labels[i] else BAD
            tiles.append(captioned(framed(upscale(neighbours[i, j], scale), colour), label, colour))
        rows.append(hstack(tiles, pad=4))
    return grid_of(rows, 1, pad=6)


def save_png(image: torch.Tensor, path) -> None:
    """Write ``[H, W, 3]`` uint8 as a PNG (no metadata, so the bytes depend only on the pixels)."""
    arr = image.contiguous().numpy()
    pic = Image.frombytes("RGB", (arr.shape[1], arr.shape[0]), arr.tobytes())
    buf = io.BytesIO()
    pic.save(buf, format="PNG", optimize=True)
    atomic_write_bytes(path, buf.getvalue())
