"""CIFAR-10 and CIFAR-100: their pickled python batches, read from the extracted folder or the .tar.gz."""
from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from pathlib import Path

import torch

from jepa.data.datasets.convert import convert_images
from jepa.data.datasets.errors import DatasetFormatError, check_labels
from jepa.io import atomic_write_bytes

# name: (extracted folder, archive, {split: batch files})
CIFAR = {
    "cifar10": ("cifar-10-batches-py", "cifar-10-python.tar.gz",
                {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}),
    "cifar100": ("cifar-100-python", "cifar-100-python.tar.gz", {"train": ("train",), "test": ("test",)}),
}


def has_files(folder: Path, name: str, split: str) -> bool:
    sub, archive, files = CIFAR[name]
    return all((folder / sub / f).is_file() for f in files[split]) or (folder / archive).is_file()


def expected_files(name: str, split: str) -> list[str]:
    folder, archive, files = CIFAR[name]
    return [f"{folder}/{f}" for f in files[split]] + [f"or the archive {archive}"]


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that only builds the numpy arrays and builtins a CIFAR batch contains."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR batch file")
        if module.startswith("numpy.core."):
            import numpy
            if hasattr(numpy, "_core"):
                module = "numpy._core." + module[len("numpy.core."):]
        return super().find_class(module, name)


def _read_cifar_batch(data: bytes, source: str, label_key: str):
    try:
        entry = _CifarUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as exc:
        raise DatasetFormatError(f"{source}: not a readable CIFAR python batch: {exc}") from exc
    if not isinstance(entry, dict):
        raise DatasetFormatError(f"{source}: expected a pickled dict, got {type(entry).__name__}")
    entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
    if "data" not in entry or label_key not in entry:
        raise DatasetFormatError(f"{source}: missing key 'data' or {label_key!r}; has {sorted(entry)}")
    images = torch.as_tensor(entry["data"])
    labels = torch.as_tensor(list(entry[label_key]), dtype=torch.long)
    if images.dtype != torch.uint8 or images.dim() != 2 or images.shape[1] != 3 * 32 * 32:
        raise DatasetFormatError(f"{source}: 'data' must be uint8 of shape (N, 3072), got {images.dtype} "
                                 f"{tuple(images.shape)}")
    if images.shape[0] != labels.shape[0]:
        raise DatasetFormatError(f"{source}: {images.shape[0]} images but {labels.shape[0]} labels")
    return images.view(-1, 3, 32, 32), labels


def _cifar_members(folder: Path, name: str) -> dict[str, bytes] | None:
    """Extract the batch files from the archive; return them in memory if ``folder`` is read-only."""
    sub, archive, files = CIFAR[name]
    archive_path = folder / archive
    wanted = {f"{sub}/{f}" for split_files in files.values() for f in split_files}
    contents = {}
    try:
        with tarfile.open(archive_path, "r:gz") as tar:
            for member in tar:
                name_in_tar = member.name.lstrip("./")
                if name_in_tar in wanted and member.isfile():
                    contents[name_in_tar.split("/", 1)[1]] = tar.extractfile(member).read()
    except (OSError, EOFError, tarfile.TarError, zlib.error) as exc:
        raise DatasetFormatError(f"{archive_path}: cannot read the CIFAR archive (corrupt or truncated?): "
                                 f"{exc}") from exc
    missing = sorted(w for w in wanted if w.split("/", 1)[1] not in contents)
    if missing:
        raise DatasetFormatError(f"{archive_path}: archive lacks {', '.join(missing)}")
    try:
        (folder / sub).mkdir(exist_ok=True)
        for fname, data in contents.items():
            target = folder / sub / fname
            if not target.exists():
                atomic_write_bytes(target, data)
        return None
    except OSError:
        return contents


def load_cifar(folder, name, split, channels, image_size, subset, num_classes):
    """``(uint8 images [N, C, S, S], long labels [N])`` of ``split``, from the batch files or the archive."""
    sub, archive, files = CIFAR[name]
    label_key = "labels" if name == "cifar10" else "fine_labels"
    in_memory = None
    if not all((folder / sub / f).is_file() for f in files[split]):
        in_memory = _cifar_members(folder, name)
    parts_images, parts_labels, have = [], [], 0
    for fname in files[split]:
        if subset is not None and have >= subset:
            break
        if in_memory is not None:
            data, source = in_memory[fname], f"{folder / archive}:{sub}/{fname}"
        else:
            path = folder / sub / fname
            data, source = path.read_bytes(), str(path)
        images, labels = _read_cifar_batch(data, source, label_key)
        check_labels(labels, num_classes, source)
        parts_images.append(images)
        parts_labels.append(labels)
        have += labels.shape[0]
    images, labels = torch.cat(parts_images), torch.cat(parts_labels)
    if subset is not None:
        images, labels = images[:subset], labels[:subset]
    return convert_images(images, channels, image_size).contiguous(), labels

