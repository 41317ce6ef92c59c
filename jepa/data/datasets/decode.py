"""Image files to Pillow images in the configured channels, optionally decoded at a reduced JPEG scale.

Every way a file can fail to be a usable image (empty, truncated, not an image, past Pillow's
decompression-bomb limit, an unconvertible mode, unreadable) becomes one :class:`BadImageError`
that names the file and the cause, so the loader can skip it or stop with a plain message.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from jepa.data.datasets.errors import DatasetFormatError

# A file path, or the bytes of a file (a tar shard member; None for a sample without an image member).
Source = Union[str, os.PathLike, bytes, None]

# Modes holding more than 8 bits per pixel, kept at their top 8 bits.
_WIDE_GRAY = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class BadImageError(DatasetFormatError):
    """``name`` cannot be used as an image; ``cause`` says why in plain words."""

    def __init__(self, name: str, cause: str):
        super().__init__(f"{name}: {cause}")
        self.name, self.cause = name, cause

    def __reduce__(self):  # DataLoader workers pickle exceptions
        return type(self), (self.name, self.cause)


def open_image(source: Source, name: str) -> Image.Image:
    """Open ``source`` lazily (header only); raises :class:`BadImageError` for files Pillow cannot identify."""
    try:
        if source is None:
            raise BadImageError(name, "the shard sample has no image member (.jpg, .png, ...)")
        if isinstance(source, bytes):
            if not source:
                raise BadImageError(name, "empty file (0 bytes)")
            fp = io.BytesIO(source)
        else:
            if os.path.getsize(source) == 0:
                raise BadImageError(name, "empty file (0 bytes)")
            fp = Path(source)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked below, as an error
            img = Image.open(fp)
    except BadImageError:
        raise
    except UnidentifiedImageError:
        raise BadImageError(name, "not an image Pillow can read (unknown or corrupt format)") from None
    except Image.DecompressionBombError:
        raise BadImageError(name, _bomb_cause(None)) from None
    except Exception as exc:  # an unreadable file, a broken header: anything here means "not usable"
        raise BadImageError(name, f"cannot open: {type(exc).__name__}: {exc}") from None
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and img.width * img.height > limit:
        img.close()
        raise BadImageError(name, _bomb_cause(img.size))
    return img


def _bomb_cause(size) -> str:
    dims = f"{size[0]}x{size[1]} = {size[0] * size[1]} pixels, " if size else ""
    return (f"{dims}past Pillow's decompression-bomb limit PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS}; "
            "if the file is genuine, raise that limit before training")


def draft_reduced(img: Image.Image, channels: int, scale: int) -> int:
    """Ask a JPEG decoder for 1/``scale`` of the full size (DCT scaling); returns the scale it will decode at.

    Non-JPEG images (and scale 1) decode at full size: 1.
    """
    if scale <= 1 or img.format != "JPEG":
        return 1
    w, h = img.size
    result = img.draft("L" if channels == 1 else "RGB", (max(1, w // scale), max(1, h // scale)))
    if result is None:
        return 1
    return max(1, round(w / result[1][2]))


def to_channels(img: Image.Image, channels: int, name: str) -> Image.Image:
    """Decode ``img`` into mode ``L`` (1 channel) or ``RGB`` (3): palette and alpha images drop their alpha as
    ``convert("RGB")`` does, CMYK and YCbCr are converted, 16-bit greyscale keeps its top 8 bits."""
    try:
        img.load()
        if img.mode in _WIDE_GRAY:
            img = Image.fromarray((np.asarray(img).astype(np.int64) >> 8).clip(0, 255).astype(np.uint8))
        elif img.mode in ("P", "PA"):
            img = img.convert("RGBA")  # a palette's transparency, without Pillow's warning
        target = "L" if channels == 1 else "RGB"
        return img if img.mode == target else img.convert(target)
    except Image.DecompressionBombError:
        raise BadImageError(name, _bomb_cause(img.size)) from None
    except OSError as exc:
        cause = str(exc) or type(exc).__name__
        if "truncated" in cause:
            cause = f"truncated file ({cause})"
        raise BadImageError(name, f"cannot decode: {cause}") from None
    except Exception as exc:  # SyntaxError, ValueError, struct.error ... from a broken file, or an unknown mode
        raise BadImageError(name, f"cannot decode ({img.format} {img.mode}): {type(exc).__name__}: {exc}") from None


def decode(source: Source, name: str, channels: int) -> Image.Image:
    """The whole image at full resolution in ``channels`` (1: ``L``, 3: ``RGB``)."""
    with open_image(source, name) as img:
        return to_channels(img, channels, name)
