"""Channel and size conversion of uint8 image batches, done once at load time in fixed-size chunks."""
from __future__ import annotations

import torch
import torch.nn.functional as F

# ITU-R BT.601 luma weights, the ones Pillow's convert("L") uses.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)

# Images converted (or generated, or read) per step, which bounds the float32 working memory.
CHUNK = 4096


def convert_images(images: torch.Tensor, channels: int | None = None, image_size: int | None = None) -> torch.Tensor:
    """Convert uint8 ``[N, C, H, W]`` images to ``channels`` and ``image_size`` in batched chunks.

    Gray to RGB repeats the channel, RGB to gray uses the luma weights; resizing
    is bilinear with antialiasing (area-like when shrinking).  None keeps the
    input's value; an already matching tensor is returned as is.
    """
    n, c, h, w = images.shape
    out_c = channels or c
    out_s = image_size or h
    if out_c == c and h == w == out_s:
        return images
    out = torch.empty(n, out_c, out_s, out_s, dtype=torch.uint8)
    for start in range(0, n, CHUNK):
        out[start:start + CHUNK] = convert_chunk(images[start:start + CHUNK], out_c, out_s)
    return out


def convert_chunk(x: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """Convert one uint8 ``[n, C, H, W]`` chunk (C = 1 or 3) to ``[n, channels, size, size]``."""
    c, h, w = x.shape[1:]
    if c not in (1, 3):
        raise ValueError(f"cannot convert images with {c} channels; supported: 1 (gray) or 3 (RGB)")
    if c == channels and h == w == size:
        return x
    if (h, w) == (size, size) and c == 1:
        return x.expand(-1, channels, -1, -1)
    y = x.float()
    if c == 3 and channels == 1:
        y = (y * torch.tensor(LUMA_WEIGHTS).view(1, 3, 1, 1)).sum(1, keepdim=True)
    if (h, w) != (size, size):
        y = F.interpolate(y, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    y = y.round_().clamp_(0, 255).to(torch.uint8)
    return y.expand(-1, channels, -1, -1) if y.shape[1] == 1 and channels == 3 else y
