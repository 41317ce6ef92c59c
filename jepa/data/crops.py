"""Random resized crops of full-resolution image files, one image at a time, for file datasets.

The crop box is drawn from the file's header size with the usual random-resized-crop rule, then the
image is decoded (a JPEG at a reduced DCT scale where the crop shrinks enough, see ``draft_scale``),
cropped and resized to ``image_size`` with Pillow's antialiased bilinear filter, and optionally
flipped. Every draw comes from a ``random.Random`` seeded by the caller, so a crop is a function of
its seed and the file alone: any number of DataLoader workers gives the same images.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from jepa.data.datasets.decode import BadImageError, Source, draft_reduced, open_image, to_channels

TRIES = 10
# A reduced JPEG decode is used only where the crop still has at least this many source pixels per output
# pixel (Pillow's own thumbnail() default): the result stays within the tolerance tests/test_crops.py pins.
REDUCING_GAP = 2.0


@dataclass(frozen=True)
class Box:
    """A crop in full-resolution pixels."""

    left: int
    top: int
    width: int
    height: int

    def edges(self) -> tuple[int, int, int, int]:
        return self.left, self.top, self.left + self.width, self.top + self.height


def fallback_box(width: int, height: int, ratio: tuple[float, float]) -> Box:
    """The centred crop of the whole image, its aspect ratio clamped into ``ratio``."""
    aspect = width / height
    w, h = width, height
    if aspect < ratio[0]:
        h = round(width / ratio[0])
    elif aspect > ratio[1]:
        w = round(height * ratio[1])
    return Box((width - w) // 2, (height - h) // 2, w, h)


def sample_box(width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float],
               rng: random.Random) -> tuple[Box, bool]:
    """A random crop: area fraction uniform in ``scale``, aspect ratio log-uniform in ``ratio``, up to 10 tries
    for a box that fits, else :func:`fallback_box`. Returns the box and whether it is the fallback."""
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(TRIES):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return Box(rng.randint(0, width - w), rng.randint(0, height - h), w, h), False
    return fallback_box(width, height, ratio), True


def centre_square(width: int, height: int) -> Box:
    side = min(width, height)
    return Box((width - side) // 2, (height - side) // 2, side, side)


def draft_scale(box: Box, size: int, gap: float = REDUCING_GAP) -> int:
    """The largest DCT scale (8, 4, 2, else 1) that leaves the crop at least ``gap * size`` pixels on its
    shorter side."""
    shorter = min(box.width, box.height)
    for scale in (8, 4, 2):
        if shorter / scale >= gap * size:
            return scale
    return 1


def resized_crop(img: Image.Image, box: Box, scale: int, size: int) -> Image.Image:
    """``box`` (full-resolution pixels) of ``img`` (decoded at 1/``scale``) resized to ``size`` x ``size``:
    Pillow's crop-then-resize, antialiased bilinear. On a reduced decode the box has fractional edges, so the
    integer hull is cropped and the exact box resampled from it."""
    if scale == 1:
        return img.crop(box.edges()).resize((size, size), Image.BILINEAR)
    left, top, right, bottom = (v / scale for v in box.edges())
    x0, y0 = math.floor(left), math.floor(top)
    x1, y1 = min(math.ceil(right), img.width), min(math.ceil(bottom), img.height)
    hull = img.crop((x0, y0, x1, y1))
    return hull.resize((size, size), Image.BILINEAR,
                       box=(left - x0, top - y0, min(right, x1) - x0, min(bottom, y1) - y0))


class FileCrops:
    """One training view of an image file: random resized crop (or the centre square without ``random_crop``),
    optional horizontal flip, as uint8 ``[C, S, S]``; ``fast_decode`` allows reduced JPEG decoding."""

    def __init__(self, image_size: int, channels: int, crop_scale=(0.3, 1.0), crop_ratio=(3 / 4, 4 / 3),
                 hflip: bool = True, random_crop: bool = True, fast_decode: bool = True):
        self.image_size, self.channels = int(image_size), int(channels)
        self.crop_scale = (float(crop_scale[0]), float(crop_scale[1]))
        self.crop_ratio = (float(crop_ratio[0]), float(crop_ratio[1]))
        self.hflip, self.random_crop, self.fast_decode = bool(hflip), bool(random_crop), bool(fast_decode)

    def __repr__(self) -> str:
        return (f"FileCrops(image_size={self.image_size}, channels={self.channels}, crop_scale={self.crop_scale}, "
                f"crop_ratio={self.crop_ratio}, hflip={self.hflip}, random_crop={self.random_crop}, "
                f"fast_decode={self.fast_decode})")

    def draw(self, width: int, height: int, rng: random.Random) -> tuple[Box, bool]:
        """The crop box and flip of one view of a ``width`` x ``height`` image."""
        if self.random_crop:
            box, _ = sample_box(width, height, self.crop_scale, self.crop_ratio, rng)
        else:
            box = centre_square(width, height)
        return box, self.hflip and rng.random() < 0.5

    def image(self, source: Source, name: str, seed: int) -> Image.Image:
        """The view of ``source`` for ``seed`` as a Pillow image; raises :class:`BadImageError`."""
        rng = random.Random(seed)
        with open_image(source, name) as img:
            box, flip = self.draw(img.width, img.height, rng)
            scale = draft_reduced(img, self.channels, draft_scale(box, self.image_size)) if self.fast_decode else 1
            out = resized_crop(to_channels(img, self.channels, name), box, scale, self.image_size)
        return out.transpose(Image.FLIP_LEFT_RIGHT) if flip else out

    def __call__(self, source: Source, name: str, seed: int) -> torch.Tensor:
        """The view of ``source`` for ``seed`` as uint8 ``[C, S, S]``; raises :class:`BadImageError`."""
        array = np.array(self.image(source, name, seed))  # a writable copy for torch
        return torch.from_numpy(array.reshape(self.image_size, self.image_size, self.channels)).permute(2, 0, 1)

    def batch(self, sources: Sequence[tuple[Source, str]], seeds: Sequence[int]):
        """Views of several files into one uint8 ``[B, C, S, S]`` tensor.

        A file that fails is replaced by the next good file of the batch (cyclically), cropped with the failed
        slot's own seed. Returns ``(images, taken, bad)``: ``taken[k]`` is the slot whose file fills slot ``k``
        and ``bad`` one ``(name, cause)`` per replaced slot. ``images`` is None when every file failed.
        """
        n, s = len(sources), self.image_size
        out = torch.empty(n, self.channels, s, s, dtype=torch.uint8)
        failed: dict[int, BadImageError] = {}
        for k, ((source, name), seed) in enumerate(zip(sources, seeds)):
            try:
                out[k] = self(source, name, seed)
            except BadImageError as exc:
                failed[k] = exc
        taken = list(range(n))
        bad = [(failed[k].name, failed[k].cause) for k in sorted(failed)]
        for k in sorted(failed):
            taken[k] = self._replace(out, k, sources, seeds[k], failed)
            if taken[k] is None:
                return None, list(range(n)), bad
        return out, taken, bad

    def _replace(self, out: torch.Tensor, k: int, sources, seed: int, failed) -> int | None:
        """Fill slot ``k`` with the next good file's view for ``seed``; the slot used, or None if none is left."""
        n = len(sources)
        for j in ((k + step) % n for step in range(1, n)):
            if j in failed:
                continue
            try:
                out[k] = self(sources[j][0], sources[j][1], seed)
                return j
            except BadImageError:  # it decoded a moment ago: the file changed; try the next one
                continue
        return None
