"""ImageNet-style ``<split>/<class>/<image>`` folders, decoded per item with Pillow (nothing held in memory)."""
from __future__ import annotations

from pathlib import Path

import torch

from jepa.data.datasets.decode import decode
from jepa.data.datasets.errors import DatasetFormatError, DatasetNotFoundError
from jepa.data.datasets.memory import ImageDataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


class EncodedImages(ImageDataset):
    """Images kept encoded (files or bytes) and decoded per item: image folders and Hugging Face datasets.

    Items (``[i]``, :meth:`get_batch`, used by evaluation) are converted to ``channels``, their shorter side
    resized to ``image_size`` and center-cropped to a square.  Training does not use them: it crops each
    image at full resolution (:meth:`source`, :class:`jepa.data.crops.FileCrops`).  ``images`` is None.
    """

    def source(self, index: int):
        """The encoded image of item ``index`` (a path or bytes) and the name errors give it."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        source, name = self.source(index)
        return decode_square(source, self.channels, self.image_size, name), int(self.labels[index])

    def get_batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode and stack the given items; slower than the in-memory datasets."""
        idx = torch.as_tensor(indices, dtype=torch.long).tolist()
        if not idx:
            empty = torch.empty(0, self.channels, self.image_size, self.image_size, dtype=torch.uint8)
            return empty, torch.empty(0, dtype=torch.long)
        images = torch.stack([self[i][0] for i in idx])
        return images, self.labels[torch.tensor(idx, dtype=torch.long)]


class ImageFolderDataset(EncodedImages):
    """An ImageNet-style ``<split>/<class>/<image>`` tree decoded per item with Pillow (see :class:`EncodedImages`)."""

    def __init__(self, samples: list[tuple[Path, int]], classes: list[str], *, split: str, channels: int,
                 image_size: int, root: Path):
        labels = torch.tensor([label for _, label in samples], dtype=torch.long)
        super().__init__(None, labels, name="imagefolder", split=split, num_classes=len(classes),
                         channels=channels, image_size=image_size, root=root)
        self.samples = samples
        self.classes = classes

    def source(self, index: int) -> tuple[Path, str]:
        """The file of item ``index`` and the name errors give it."""
        path = self.samples[index][0]
        return path, str(path)


def find_split_dir(folder: Path, split: str) -> Path | None:
    """``folder/split`` (for "test" also ``folder/val``) if it holds class folders, else None."""
    names = [split] + (["val"] if split == "test" else [])
    for name in names:
        candidate = folder / name
        if candidate.is_dir() and any(p.is_dir() for p in candidate.iterdir()):
            return candidate
    return None


def load_imagefolder(folder: Path, split, channels, image_size, subset) -> ImageFolderDataset:
    """Index ``split``'s images under ``folder``, with class indices taken from ``folder/train``."""
    split_dir = find_split_dir(folder, split)
    class_source = folder / "train" if (folder / "train").is_dir() else split_dir
    classes = sorted(p.name for p in class_source.iterdir() if p.is_dir())
    index = {c: i for i, c in enumerate(classes)}
    samples = []
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        if class_dir.name not in index:
            raise DatasetFormatError(f"{class_dir}: class {class_dir.name!r} is not among the training classes "
                                     f"in {class_source} ({len(classes)} classes)")
        for path in sorted(class_dir.rglob("*")):
            if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
                samples.append((path, index[class_dir.name]))
    if not samples:
        raise DatasetNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {split_dir}", [split_dir])
    if subset is not None:
        samples = samples[:subset]
    return ImageFolderDataset(samples, classes, split=split, channels=channels, image_size=image_size,
                              root=folder)


def decode_square(source, channels: int, size: int, name: str | None = None) -> torch.Tensor:
    """An image file (path or bytes) as uint8 ``[C, size, size]``: shorter side resized to ``size``, centre square."""
    from PIL import Image

    img = decode(source, name or str(source), channels)
    w, h = img.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    array = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    return array.view(size, size, channels).permute(2, 0, 1).contiguous()


def expected_files(split: str) -> list[str]:
    return [f"{split}/<class>/<image>"]
