"""Batched image augmentation in plain torch: random resized crop, horizontal flip, normalisation.

A whole uint8 batch is augmented with one ``grid_sample`` call whose per-image
sampling grid encodes that image's crop box and flip.  All randomness comes from
the ``torch.Generator`` passed in, so a batch is reproducible from its seed and
DataLoader workers never share or touch the global RNG.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from jepa.data.datasets import dataset_stats

__all__ = ["CropParams", "BatchAugment", "EvalTransform", "normalize", "normalisation", "eval_transform"]

_TRIES = 10


@dataclass
class CropParams:
    """Per-image crop boxes in pixels (long ``[B]``) and horizontal-flip flags (bool ``[B]``)."""

    top: torch.Tensor
    left: torch.Tensor
    height: torch.Tensor
    width: torch.Tensor
    flip: torch.Tensor


def _stats_tensor(values: Sequence[float], what: str) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.float32).flatten()
    if t.numel() == 0 or not torch.isfinite(t).all():
        raise ValueError(f"{what} must be a non-empty sequence of finite numbers, got {values!r}")
    return t


def _mean_std(mean: Sequence[float], std: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel normalisation statistics, checked: same length, finite, std > 0."""
    m, s = _stats_tensor(mean, "mean"), _stats_tensor(std, "std")
    if m.numel() != s.numel():
        raise ValueError(f"mean has {m.numel()} values but std has {s.numel()}")
    if (s <= 0).any():
        raise ValueError(f"std must be > 0, got {list(std)}")
    return m, s


def _check_images(images: torch.Tensor, n_stats: int) -> None:
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise TypeError(f"images must be a uint8 tensor [B, C, H, W], got {got}")
    if n_stats != images.shape[1]:
        raise ValueError(f"mean/std have {n_stats} values but the images have {images.shape[1]} channels")


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``(x / 255 - mean) / std`` per channel for float ``x`` in [0, 255], in place where possible."""
    mean = mean.to(x.device).view(1, -1, 1, 1)
    std = std.to(x.device).view(1, -1, 1, 1)
    return x.div_(255.0).sub_(mean).div_(std)


def _resize_square(x: torch.Tensor, size: int) -> torch.Tensor:
    """Center-crop float ``[B, C, H, W]`` to a square, then bilinearly resize (antialiased) to ``size``."""
    h, w = x.shape[-2:]
    if h != w:
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        x = x[..., top:top + s, left:left + s]
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x


class BatchAugment:
    """Random resized crop + horizontal flip + normalisation of a uint8 batch, all images at once.

    Crop boxes follow the usual RandomResizedCrop recipe per image: area fraction
    uniform in ``crop_scale``, aspect ratio log-uniform in ``crop_ratio``, up to
    10 tries (vectorised), else a center crop at the clamped ratio.  The box is
    resampled bilinearly to ``image_size`` exactly as crop-then-resize would be
    (align_corners=False, samples clamped to the box), without antialiasing, so
    crops much larger than ``image_size`` alias a little.  ``random_crop=False``
    keeps the whole image (flip only, resized if its size differs).
    """

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float],
                 crop_scale: tuple[float, float] = (0.3, 1.0), crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 hflip: bool = True, random_crop: bool = True):
        if not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        lo, hi = (float(v) for v in crop_scale)
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {tuple(crop_scale)}")
        r_lo, r_hi = (float(v) for v in crop_ratio)
        if not 0 < r_lo <= r_hi:
            raise ValueError(f"crop_ratio must satisfy 0 < low <= high, got {tuple(crop_ratio)}")
        self.image_size = image_size
        self.mean, self.std = _mean_std(mean, std)
        self.crop_scale = (lo, hi)
        self.crop_ratio = (r_lo, r_hi)
        self.hflip = bool(hflip)
        self.random_crop = bool(random_crop)

    def __repr__(self) -> str:
        return (f"BatchAugment(image_size={self.image_size}, crop_scale={self.crop_scale}, "
                f"crop_ratio={self.crop_ratio}, hflip={self.hflip}, random_crop={self.random_crop})")

    def sample_params(self, batch: int, height: int, width: int, generator: torch.Generator) -> CropParams:
        """Draw crop boxes and flip flags for ``batch`` images of ``height x width`` from ``generator``."""
        dev = generator.device
        if self.random_crop:
            lo, hi = self.crop_scale
            log_lo, log_hi = math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1])
            scale = lo + (hi - lo) * torch.rand(batch, _TRIES, generator=generator, device=dev, dtype=torch.float64)
            log_ratio = log_lo + (log_hi - log_lo) * torch.rand(batch, _TRIES, generator=generator, device=dev,
                                                                dtype=torch.float64)
            area = scale * (height * width)
            ratio = torch.exp(log_ratio)
            w = torch.round(torch.sqrt(area * ratio))
            h = torch.round(torch.sqrt(area / ratio))
            ok = (w >= 1) & (w <= width) & (h >= 1) & (h <= height)
            first = ok.to(torch.int8).argmax(dim=1, keepdim=True)
            w = w.gather(1, first).squeeze(1)
            h = h.gather(1, first).squeeze(1)
            found = ok.any(dim=1)
            fb_h, fb_w = self._fallback(height, width)
            h = torch.where(found, h, torch.full_like(h, fb_h)).long()
            w = torch.where(found, w, torch.full_like(w, fb_w)).long()
            u = torch.rand(batch, 2, generator=generator, device=dev, dtype=torch.float64)
            top = torch.minimum(torch.floor(u[:, 0] * (height - h + 1)).long(), height - h)
            left = torch.minimum(torch.floor(u[:, 1] * (width - w + 1)).long(), width - w)
            top = torch.where(found, top, (height - h) // 2)
            left = torch.where(found, left, (width - w) // 2)
        else:
            top = torch.zeros(batch, dtype=torch.long, device=dev)
            left = torch.zeros(batch, dtype=torch.long, device=dev)
            h = torch.full((batch,), height, dtype=torch.long, device=dev)
            w = torch.full((batch,), width, dtype=torch.long, device=dev)
        if self.hflip:
            flip = torch.rand(batch, generator=generator, device=dev) < 0.5
        else:
            flip = torch.zeros(batch, dtype=torch.bool, device=dev)
        return CropParams(top, left, h, w, flip)

    def _fallback(self, height: int, width: int) -> tuple[int, int]:
        in_ratio = width / height
        if in_ratio < self.crop_ratio[0]:
            return round(width / self.crop_ratio[0]), width
        if in_ratio > self.crop_ratio[1]:
            return height, round(height * self.crop_ratio[1])
        return height, width

    def apply(self, images: torch.Tensor, params: CropParams) -> torch.Tensor:
        """Crop, resize, flip and normalise ``images`` with the given per-image parameters."""
        _check_images(images, self.mean.numel())
        b, _, height, width = images.shape
        s = self.image_size
        if not self.random_crop:
            x = _resize_square(images.to(torch.float32), s)
            flip = params.flip.to(x.device).view(b, 1, 1, 1)
            if self.hflip and bool(flip.any()):
                x = torch.where(flip, x.flip(-1), x)
            return normalize(x.contiguous(), self.mean, self.std)
        dev = images.device
        # Normalising first is equivalent (bilinear weights sum to 1) and fuses into one pass.
        scale = (1.0 / (255.0 * self.std)).to(dev).view(1, -1, 1, 1)
        x = torch.addcmul((-self.mean / self.std).to(dev).view(1, -1, 1, 1), images, scale)
        steps = (torch.arange(s, device=dev, dtype=torch.float32) + 0.5) / s
        top, left = params.top.to(dev, torch.float32), params.left.to(dev, torch.float32)
        h, w = params.height.to(dev, torch.float32), params.width.to(dev, torch.float32)
        # Pixel-centre coordinates of the samples, clamped to the box as crop-then-resize would.
        xs = left[:, None] + steps[None, :] * w[:, None] - 0.5
        ys = top[:, None] + steps[None, :] * h[:, None] - 0.5
        xs = torch.maximum(torch.minimum(xs, (left + w - 1)[:, None]), left[:, None])
        ys = torch.maximum(torch.minimum(ys, (top + h - 1)[:, None]), top[:, None])
        xs = torch.where(params.flip.to(dev)[:, None], xs.flip(1), xs)
        gx = (2 * xs + 1) / width - 1
        gy = (2 * ys + 1) / height - 1
        grid = torch.stack((gx[:, None, :].expand(b, s, s), gy[:, :, None].expand(b, s, s)), dim=-1)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment uint8 ``[B, C, H, W]`` into normalised float32 ``[B, C, image_size, image_size]``."""
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"BatchAugment needs a torch.Generator for its randomness, got {type(generator).__name__}")
        _check_images(images, self.mean.numel())
        params = self.sample_params(images.shape[0], images.shape[2], images.shape[3], generator)
        return self.apply(images, params)


class EvalTransform:
    """Deterministic evaluation transform: uint8 batch to normalised float32, resized to ``image_size``.

    Non-square inputs are center-cropped to a square first; resizing is bilinear
    with antialiasing.
    """

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float]):
        if not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        self.image_size = image_size
        self.mean, self.std = _mean_std(mean, std)

    def __repr__(self) -> str:
        return f"EvalTransform(image_size={self.image_size})"

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Normalise (and resize) uint8 ``[B, C, H, W]``; ``generator`` is accepted and ignored."""
        _check_images(images, self.mean.numel())
        x = _resize_square(images.to(torch.float32), self.image_size)
        return normalize(x.contiguous(), self.mean, self.std)


def normalisation(cfg) -> tuple[list[float], list[float]]:
    """The ``(mean, std)`` a run normalises with: ``data.mean``/``data.std``, else its (first) dataset's statistics."""
    d = cfg.data
    name = d.mix[0].name if d.mix else d.dataset
    mean, std = dataset_stats(name, d.channels)
    return (list(mean) if d.mean is None else d.mean), (list(std) if d.std is None else d.std)


def eval_transform(cfg, normalization: dict | None = None) -> EvalTransform:
    """The evaluation transform at ``data.image_size``: with the run's normalisation, or with ``normalization``
    (``{"mean", "std"}`` that loaded weights were trained with) when given."""
    if normalization is None:
        return EvalTransform(cfg.data.image_size, *normalisation(cfg))
    return EvalTransform(cfg.data.image_size, normalization["mean"], normalization["std"])
