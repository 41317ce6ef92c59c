"""Writers of tiny dataset files in the real on-disk formats, for loader tests.

Each writer takes uint8 images ``[N, C, H, W]`` (or ``[N, H, W]`` for IDX) and
integer labels and produces exactly the bytes the official distributions use.
"""
from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import torch

IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def idx_bytes(array: torch.Tensor) -> bytes:
    """Unsigned-byte IDX encoding: magic 0x0000 08 <ndim>, big-endian dims, raw data."""
    array = array.to(torch.uint8).contiguous()
    header = struct.pack(">HBB", 0, 0x08, array.dim()) + struct.pack(f">{array.dim()}I", *array.shape)
    return header + array.numpy().tobytes()


def write_idx(path: Path, array: torch.Tensor, *, compress: bool = True) -> Path:
    data = idx_bytes(array)
    path = Path(path)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def write_mnist_like(folder: Path, split: str, images: torch.Tensor, labels, *, compress: bool = True) -> Path:
    """Write ``<split>`` IDX image and label files (``[N, H, W]`` images) as MNIST/Fashion-MNIST name them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    image_name, label_name = IDX_NAMES[split]
    suffix = ".gz" if compress else ""
    write_idx(folder / (image_name + suffix), images, compress=compress)
    write_idx(folder / (label_name + suffix), torch.as_tensor(labels, dtype=torch.uint8), compress=compress)
    return folder


def cifar_batch_bytes(images: torch.Tensor, labels, label_key: str = "labels") -> bytes:
    """A CIFAR python batch: pickled dict with ``data`` uint8 (N, 3072) in CHW order and a label list."""
    images = images.to(torch.uint8).contiguous()
    entry = {
        "batch_label": "test batch",
        "data": images.reshape(images.shape[0], -1).numpy().astype(np.uint8),
        label_key: [int(v) for v in labels],
        "filenames": [f"img_{i}.png" for i in range(images.shape[0])],
    }
    if label_key == "fine_labels":
        entry["coarse_labels"] = [int(v) // 5 for v in labels]
    return pickle.dumps(entry, protocol=2)


def write_cifar10(folder: Path, train: list[tuple[torch.Tensor, list[int]]], test: tuple[torch.Tensor, list[int]],
                  *, archive: bool = False) -> Path:
    """Write ``cifar-10-batches-py/data_batch_1..5, test_batch`` (5 train batches), or the .tar.gz holding them."""
    if len(train) != 5:
        raise ValueError("CIFAR-10 has exactly 5 training batches")
    files = {f"data_batch_{i + 1}": cifar_batch_bytes(x, y) for i, (x, y) in enumerate(train)}
    files["test_batch"] = cifar_batch_bytes(*test)
    files["batches.meta"] = pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}, protocol=2)
    return _write_cifar(Path(folder), "cifar-10-batches-py", "cifar-10-python.tar.gz", files, archive)


def write_cifar100(folder: Path, train: tuple[torch.Tensor, list[int]], test: tuple[torch.Tensor, list[int]],
                   *, archive: bool = False) -> Path:
    """Write ``cifar-100-python/train, test`` (fine labels), or the .tar.gz holding them."""
    files = {"train": cifar_batch_bytes(*train, label_key="fine_labels"),
             "test": cifar_batch_bytes(*test, label_key="fine_labels"),
             "meta": pickle.dumps({"fine_label_names": [f"f{i}" for i in range(100)]}, protocol=2)}
    return _write_cifar(Path(folder), "cifar-100-python", "cifar-100-python.tar.gz", files, archive)


def _write_cifar(folder: Path, sub: str, archive_name: str, files: dict[str, bytes], archive: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if not archive:
        (folder / sub).mkdir(exist_ok=True)
        for name, data in files.items():
            (folder / sub / name).write_bytes(data)
        return folder
    with tarfile.open(folder / archive_name, "w:gz") as tar:
        dir_info = tarfile.TarInfo(sub)
        dir_info.type = tarfile.DIRTYPE
        dir_info.mode = 0o755
        tar.addfile(dir_info)
        for name, data in files.items():
            info = tarfile.TarInfo(f"{sub}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return folder


def stl_images_bytes(images: torch.Tensor) -> bytes:
    """STL-10 ``*_X.bin``: per image, per channel, 96x96 pixels in column-major order."""
    images = images.to(torch.uint8)
    if tuple(images.shape[1:]) != (3, 96, 96):
        raise ValueError(f"STL-10 images are [N, 3, 96, 96], got {tuple(images.shape)}")
    return images.transpose(2, 3).contiguous().numpy().tobytes()


def write_stl10(folder: Path, split: str, images: torch.Tensor, labels=None) -> Path:
    """Write ``stl10_binary/<split>_X.bin`` and (labels 0..9 stored as 1..10) ``<split>_y.bin``."""
    sub = Path(folder) / "stl10_binary"
    sub.mkdir(parents=True, exist_ok=True)
    (sub / f"{split}_X.bin").write_bytes(stl_images_bytes(images))
    if labels is not None:
        (sub / f"{split}_y.bin").write_bytes(bytes(int(v) + 1 for v in labels))
    return Path(folder)


def write_image_folder(root: Path, layout: dict[str, dict[str, list[torch.Tensor]]], ext: str = ".png") -> Path:
    """Write ``root/<split>/<class>/<i><ext>`` from ``{split: {class: [uint8 [C, H, W], ...]}}`` via Pillow."""
    from PIL import Image

    root = Path(root)
    for split, classes in layout.items():
        for cls, images in classes.items():
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i, img in enumerate(images):
                array = img.permute(1, 2, 0).contiguous().numpy()
                pil = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
                pil.save(folder / f"{i:03d}{ext}", **({"quality": 95} if ext in (".jpg", ".jpeg") else {}))
    return root


def write_varied_folder(root: Path, classes: int = 3, per_class: int = 8, *, seed: int = 0, sides=(20, 60),
                        ext: str = ".jpg") -> Path:
    """``root/train/c<k>/<i><ext>``: random RGB images whose sides vary in ``sides``, for per-image crops."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = Path(root) / "train" / f"c{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            w, h = (int(v) for v in rng.integers(sides[0], sides[1] + 1, 2))
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i:03d}{ext}")
    return Path(root)


def encoded_images(n: int, seed: int, sides=(17, 40)) -> list[bytes]:
    """``n`` random RGB images of varied sizes, PNG and JPEG in turn, as file bytes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        w, h = (int(v) for v in rng.integers(sides[0], sides[1] + 1, 2))
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG" if i % 2 else "JPEG")
        out.append(buf.getvalue())
    return out


def write_hf_parquet(path: Path, images: list[bytes], labels: list[int], row_group_size: int = 6,
                     class_label: bool = False) -> Path:
    """A parquet file as the ``datasets`` library writes one (an Image column of {bytes, path}, a label column,
    the features in the schema metadata), in row groups of ``row_group_size``."""
    import datasets
    import pyarrow.parquet as pq

    label = datasets.ClassLabel(num_classes=max(labels) + 1) if class_label else datasets.Value("int64")
    features = datasets.Features({"image": datasets.Image(), "label": label})
    ds = datasets.Dataset.from_dict({"image": [{"bytes": b, "path": None} for b in images], "label": labels},
                                    features=features)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(ds.data.table, path, row_group_size=row_group_size)
    return Path(path)
