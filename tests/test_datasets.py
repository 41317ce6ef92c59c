"""Dataset loaders against tiny files in the real formats, the real Fashion-MNIST, and downloads."""
import functools
import gzip
import http.server
import os
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from jepa.data import datasets as D
from jepa.data.datasets import (DatasetFormatError, DatasetNotFoundError, DownloadError, MixtureDataset, dataset_stats,
                           download, load_dataset)

from data_formats import (stl_images_bytes, write_cifar10, write_cifar100, write_idx, write_image_folder,
                          write_mnist_like, write_stl10)

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz")
needs_fashion = pytest.mark.skipif(not all((FASHION_DIR / f).is_file() for f in FASHION_FILES),
                                   reason="real Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


def rand_u8(*shape, seed=0):
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No $JEPA_DATA, no system location, cwd in an empty temp dir: only explicit roots are found."""
    monkeypatch.delenv("JEPA_DATA", raising=False)
    monkeypatch.setattr(D, "SYSTEM_DIRS", {})
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return tmp_path


# --- array formats ---------------------------------------------------------


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
@pytest.mark.parametrize("compress", [True, False])
def test_idx_loader_returns_exact_pixels_and_labels(isolated, name, compress):
    train_x, train_y = rand_u8(7, 28, 28, seed=1), [3, 1, 4, 1, 5, 9, 2]
    test_x, test_y = rand_u8(4, 28, 28, seed=2), [6, 5, 3, 5]
    root = isolated / "idx"
    write_mnist_like(root, "train", train_x, train_y, compress=compress)
    write_mnist_like(root, "test", test_x, test_y, compress=compress)

    ds = load_dataset(name, "train", root)
    assert (len(ds), ds.num_classes, ds.channels, ds.image_size, ds.name) == (7, 10, 1, 28, name)
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (7, 1, 28, 28)
    assert torch.equal(ds.images[:, 0], train_x)
    assert ds.labels.tolist() == train_y and ds.labels.dtype == torch.long
    image, label = ds[4]
    assert torch.equal(image, train_x[4].unsqueeze(0)) and label == 5 and isinstance(label, int)

    test = load_dataset(name, "test", root)
    assert torch.equal(test.images[:, 0], test_x) and test.labels.tolist() == test_y
    assert load_dataset(name, "val", root).labels.tolist() == test_y


def test_channel_and_size_conversion(isolated):
    x = rand_u8(5, 28, 28, seed=3)
    x[0] = 77
    write_mnist_like(isolated / "m", "train", x, [0, 1, 2, 3, 4])
    rgb = load_dataset("mnist", "train", isolated / "m", channels=3)
    assert rgb.channels == 3 and torch.equal(rgb.images, x.unsqueeze(1).expand(-1, 3, -1, -1))

    small = load_dataset("mnist", "train", isolated / "m", image_size=14)
    ref = F.interpolate(x.unsqueeze(1).float(), size=(14, 14), mode="bilinear", align_corners=False,
                        antialias=True).round().clamp(0, 255).to(torch.uint8)
    assert small.image_size == 14 and small.images.shape == (5, 1, 14, 14)
    assert torch.equal(small.images, ref)
    assert (small.images[0] == 77).all()

    both = load_dataset("mnist", "train", isolated / "m", channels=3, image_size=32)
    assert both.images.shape == (5, 3, 32, 32)
    assert torch.equal(both.images[:, 0], both.images[:, 2])


def cifar_fixture(root, archive):
    train = [(rand_u8(2, 3, 32, 32, seed=10 + i), [i, (i + 3) % 10]) for i in range(5)]
    test = (rand_u8(3, 3, 32, 32, seed=20), [9, 0, 7])
    write_cifar10(root, train, test, archive=archive)
    return train, test


@pytest.mark.parametrize("archive", [False, True])
def test_cifar10_batches_and_archive(isolated, archive):
    root = isolated / "c10"
    train, test = cifar_fixture(root, archive)
    ds = load_dataset("cifar10", "train", root)
    assert (len(ds), ds.num_classes, ds.channels, ds.image_size) == (10, 10, 3, 32)
    assert torch.equal(ds.images, torch.cat([x for x, _ in train]))
    assert ds.labels.tolist() == [v for _, y in train for v in y]
    te = load_dataset("cifar10", "test", root)
    assert torch.equal(te.images, test[0]) and te.labels.tolist() == test[1]
    if archive:
        assert (root / "cifar-10-batches-py" / "data_batch_5").is_file()
        assert not list(root.rglob("*.part")) and not list(root.rglob("*.tmp"))

    gray = load_dataset("cifar10", "test", root, channels=1)
    luma = (test[0].float() * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    assert gray.channels == 1 and torch.equal(gray.images, luma.round().clamp(0, 255).to(torch.uint8))
    assert len(load_dataset("cifar10", "train", root, subset=3)) == 3


@pytest.mark.parametrize("archive", [False, True])
def test_cifar100_fine_labels(isolated, archive):
    train = (rand_u8(4, 3, 32, 32, seed=30), [0, 99, 42, 7])
    test = (rand_u8(2, 3, 32, 32, seed=31), [98, 1])
    write_cifar100(isolated / "c100", train, test, archive=archive)
    ds = load_dataset("cifar100", "train", isolated / "c100")
    assert ds.num_classes == 100 and ds.labels.tolist() == train[1] and torch.equal(ds.images, train[0])
    te = load_dataset("cifar100", "test", isolated / "c100")
    assert te.labels.tolist() == test[1] and torch.equal(te.images, test[0])


def test_cifar_reads_python2_era_numpy_names(isolated):
    """The real batches were pickled by Python 2 with numpy 1 (``numpy.core.multiarray``)."""
    root = isolated / "py2"
    _, test = cifar_fixture(root, archive=False)
    path = root / "cifar-10-batches-py" / "test_batch"
    data = path.read_bytes()
    assert b"numpy._core.multiarray\n" in data
    path.write_bytes(data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    ds = load_dataset("cifar10", "test", root)
    assert torch.equal(ds.images, test[0]) and ds.labels.tolist() == test[1]


def test_cifar_rejects_foreign_pickle(isolated):
    import pickle

    root = isolated / "evil"
    cifar_fixture(root, archive=False)
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(os.system, protocol=2))
    with pytest.raises(DatasetFormatError, match="test_batch.*not allowed"):
        load_dataset("cifar10", "test", root)


def test_stl10_column_major_orientation(isolated):
    root = isolated / "stl"
    images = rand_u8(3, 3, 96, 96, seed=40)
    write_stl10(root, "train", images, [0, 9, 4])
    write_stl10(root, "test", images[:2], [1, 2])
    write_stl10(root, "unlabeled", images.flip(0))

    # One image built byte by byte from the format description: channel-major,
    # then column-major pixels, so byte c*9216 + x*96 + y is pixel (row y, column x).
    raw = bytearray(3 * 96 * 96)
    raw[0 * 9216 + 70 * 96 + 5] = 255        # red at row 5, column 70
    raw[1 * 9216 + 2 * 96 + 90] = 128        # green at row 90, column 2
    (root / "stl10_binary" / "test_X.bin").write_bytes(stl_images_bytes(images[:2]) + bytes(raw))
    (root / "stl10_binary" / "test_y.bin").write_bytes(bytes([2, 3, 10]))

    ds = load_dataset("stl10", "train", root)
    assert (len(ds), ds.num_classes, ds.channels, ds.image_size) == (3, 10, 3, 96)
    assert torch.equal(ds.images, images) and ds.labels.tolist() == [0, 9, 4]

    te = load_dataset("stl10", "test", root)
    assert te.labels.tolist() == [1, 2, 9]
    marked = te.images[2]
    assert marked[0, 5, 70] == 255 and marked[0, 70, 5] == 0
    assert marked[1, 90, 2] == 128 and marked[1, 2, 90] == 0
    assert int(marked.count_nonzero()) == 2

    un = load_dataset("stl10", "unlabeled", root)
    assert torch.equal(un.images, images.flip(0)) and un.labels.tolist() == [-1, -1, -1]
    both = load_dataset("stl10", "train+unlabeled", root, image_size=32, channels=1)
    assert both.images.shape == (6, 1, 32, 32) and both.labels.tolist() == [0, 9, 4, -1, -1, -1]


def test_image_folder_png_exact_and_jpeg(isolated):
    root = isolated / "folder"
    imgs = {c: [rand_u8(3, 16, 16, seed=50 + 10 * k + i) for i in range(2)] for k, c in enumerate(["dog", "cat"])}
    write_image_folder(root, {"train": imgs, "val": {"cat": imgs["cat"][:1]}})
    ds = load_dataset("imagefolder", "train", root, image_size=16)
    assert ds.images is None and ds.classes == ["cat", "dog"] and ds.num_classes == 2
    assert len(ds) == 4 and ds.labels.tolist() == [0, 0, 1, 1]
    for i, expected in enumerate(imgs["cat"] + imgs["dog"]):
        image, _ = ds[i]
        assert image.dtype == torch.uint8 and torch.equal(image, expected)
    batch, labels = ds.get_batch(torch.tensor([3, 0]))
    assert torch.equal(batch[0], imgs["dog"][1]) and labels.tolist() == [1, 0]

    test = load_dataset("imagefolder", "test", root, image_size=16)  # no test/ dir: val/
    assert len(test) == 1 and test.labels.tolist() == [0] and test.split == "test"

    gray = load_dataset("imagefolder", "train", root, image_size=8, channels=1)
    assert gray[0][0].shape == (1, 8, 8)

    smooth = torch.linspace(0, 255, 16).round().to(torch.uint8).view(1, 1, 16).expand(3, 16, 16).contiguous()
    write_image_folder(isolated / "jpg", {"train": {"a": [smooth]}}, ext=".jpg")
    jpg = load_dataset("imagefolder", "train", isolated / "jpg", image_size=16)
    assert (jpg[0][0].int() - smooth.int()).abs().max() <= 8


def test_image_folder_resizes_shorter_side_then_center_crops(isolated):
    wide = torch.zeros(3, 16, 32, dtype=torch.uint8)
    wide[:, :, 16:] = 255
    write_image_folder(isolated / "wide", {"train": {"a": [wide]}})
    image, _ = load_dataset("imagefolder", "train", isolated / "wide", image_size=16)[0]
    assert image.shape == (3, 16, 16)
    assert (image[:, :, :7] == 0).all() and (image[:, :, 9:] == 255).all()
    image, _ = load_dataset("imagefolder", "train", isolated / "wide", image_size=8)[0]
    assert image.shape == (3, 8, 8) and (image[:, :, :3] == 0).all() and (image[:, :, 5:] == 255).all()


def test_synthetic_is_deterministic_and_learnable():
    a = load_dataset("synthetic", synthetic_size=300, seed=3)
    b = load_dataset("synthetic", synthetic_size=300, seed=3)
    c = load_dataset("synthetic", synthetic_size=300, seed=4)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    assert a.images.shape == (300, 3, 32, 32) and a.num_classes == 10
    assert torch.bincount(a.labels, minlength=10).tolist() == [30] * 10
    gray = load_dataset("synthetic", channels=1, image_size=28, synthetic_size=64, synthetic_classes=4)
    assert gray.images.shape == (64, 1, 28, 28) and gray.num_classes == 4
    assert len(load_dataset("synthetic", synthetic_size=300, subset=50)) == 50

    test = load_dataset("synthetic", "test", synthetic_size=200, seed=3)
    assert not torch.equal(test.images[:10], a.images[:10])
    x = a.images.float().flatten(1)
    means = torch.stack([x[a.labels == k].mean(0) for k in range(10)])
    pred = torch.cdist(test.images.float().flatten(1), means).argmin(1)
    assert (pred == test.labels).float().mean() > 0.5


def test_get_batch_matches_getitem(isolated):
    x = rand_u8(6, 28, 28, seed=60)
    write_mnist_like(isolated / "m", "train", x, [5, 4, 3, 2, 1, 0])
    ds = load_dataset("mnist", "train", isolated / "m")
    idx = torch.tensor([5, 0, 3, 3])
    images, labels = ds.get_batch(idx)
    assert torch.equal(images, torch.stack([ds[i][0] for i in idx.tolist()]))
    assert labels.tolist() == [0, 5, 2, 2]


# --- real Fashion-MNIST ----------------------------------------------------


@needs_fashion
def test_real_fashion_mnist(monkeypatch):
    monkeypatch.delenv("JEPA_DATA", raising=False)
    train = load_dataset("fashion_mnist", "train")
    test = load_dataset("fashion_mnist", "test")
    assert train.root == FASHION_DIR
    assert (len(train), len(test)) == (60000, 10000)
    assert train.images.shape == (60000, 1, 28, 28) and train.num_classes == 10
    for ds, per_class in ((train, 6000), (test, 1000)):
        assert torch.bincount(ds.labels, minlength=10).tolist() == [per_class] * 10
    pixels = train.images.float().div_(255)
    mean, std = dataset_stats("fashion_mnist")
    assert mean == (0.2860,) and std == (0.3530,)
    assert abs(pixels.mean().item() - 0.2860) < 5e-4
    assert abs(pixels.std().item() - 0.3530) < 5e-4


def test_dataset_stats_channel_requests():
    assert dataset_stats("fashion_mnist", channels=3) == ((0.2860,) * 3, (0.3530,) * 3)
    assert dataset_stats("mnist") == ((0.1307,), (0.3081,))
    assert dataset_stats("cifar10")[0] == (0.4914, 0.4822, 0.4465)
    assert dataset_stats("stl10") == dataset_stats("synthetic") == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    (m,), (s,) = dataset_stats("cifar10", channels=1)
    assert abs(m - (0.299 * 0.4914 + 0.587 * 0.4822 + 0.114 * 0.4465)) < 1e-4 and 0.2 < s < 0.27
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        dataset_stats("nope")


# --- finding files, errors -------------------------------------------------


def test_missing_dataset_lists_every_place(isolated, monkeypatch):
    env = isolated / "env"
    monkeypatch.setenv("JEPA_DATA", str(env))
    system = isolated / "system" / "fashion-mnist"
    monkeypatch.setattr(D, "SYSTEM_DIRS", {"fashion_mnist": (system,)})
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("fashion_mnist", "train", isolated / "given")
    msg = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    for place in (isolated / "given", isolated / "given" / "fashion_mnist", env / "fashion_mnist", env, system,
                  isolated / "cwd" / "data" / "fashion_mnist"):
        assert str(place) in msg
        assert place in info.value.searched
    assert "train-images-idx3-ubyte.gz" in msg and "train-labels-idx1-ubyte.gz" in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "download" in msg

    with pytest.raises(DatasetNotFoundError, match="cifar-10-python.tar.gz"):
        load_dataset("cifar10", "test")
    with pytest.raises(DatasetNotFoundError, match="stl10_binary/train_X.bin"):
        load_dataset("stl10", "train", download=True)


def test_jepa_data_search_order(isolated, monkeypatch):
    env = isolated / "env"
    write_mnist_like(env, "train", rand_u8(5, 28, 28), [0] * 5)
    monkeypatch.setenv("JEPA_DATA", str(env))
    monkeypatch.setattr(D, "SYSTEM_DIRS", {"fashion_mnist": (isolated / "system",)})
    write_mnist_like(isolated / "system", "train", rand_u8(6, 28, 28), [0] * 6)
    write_mnist_like(isolated / "cwd" / "data" / "fashion_mnist", "train", rand_u8(7, 28, 28), [0] * 7)

    assert len(load_dataset("fashion_mnist")) == 5                       # $JEPA_DATA beats system and ./data
    write_mnist_like(env / "fashion_mnist", "train", rand_u8(3, 28, 28), [0] * 3)
    ds = load_dataset("fashion_mnist")
    assert len(ds) == 3 and ds.root == env / "fashion_mnist"             # $JEPA_DATA/<name> beats $JEPA_DATA
    write_mnist_like(isolated / "given", "train", rand_u8(4, 28, 28), [0] * 4)
    assert len(load_dataset("fashion_mnist", root=isolated / "given")) == 4   # root argument first
    monkeypatch.delenv("JEPA_DATA")
    assert len(load_dataset("fashion_mnist")) == 6                       # then the system location
    monkeypatch.setattr(D, "SYSTEM_DIRS", {})
    assert len(load_dataset("fashion_mnist")) == 7                       # then ./data/<name>


def test_corrupt_idx_files_name_the_file(isolated):
    root = isolated / "bad"
    write_mnist_like(root, "train", rand_u8(4, 28, 28), [0, 1, 2, 3])
    images = root / "train-images-idx3-ubyte.gz"

    data = bytearray(gzip.decompress(images.read_bytes()))
    data[2] = 0x0D  # float data type: not unsigned bytes
    images.write_bytes(gzip.compress(bytes(data)))
    with pytest.raises(DatasetFormatError, match=r"train-images-idx3-ubyte\.gz.*bad IDX magic 0x00000d03"):
        load_dataset("mnist", "train", root)

    write_idx(images, rand_u8(4, 28, 28))
    images.write_bytes(gzip.compress(gzip.decompress(images.read_bytes())[:-100]))
    with pytest.raises(DatasetFormatError, match=r"train-images-idx3-ubyte\.gz.*truncated or corrupt"):
        load_dataset("mnist", "train", root)

    write_idx(images, rand_u8(4, 28, 28))
    images.write_bytes(images.read_bytes()[:-20])
    with pytest.raises(DatasetFormatError, match=r"train-images-idx3-ubyte\.gz"):
        load_dataset("mnist", "train", root)

    write_idx(images, rand_u8(5, 28, 28))
    with pytest.raises(DatasetFormatError, match="5 images but .*train-labels-idx1-ubyte.gz has 4 labels"):
        load_dataset("mnist", "train", root)

    write_idx(images, rand_u8(4, 28, 28))
    write_idx(root / "train-labels-idx1-ubyte.gz", torch.tensor([0, 1, 2, 10], dtype=torch.uint8))
    with pytest.raises(DatasetFormatError, match=r"train-labels-idx1-ubyte\.gz: labels span \[0, 10\]"):
        load_dataset("mnist", "train", root)


def test_bad_arguments_are_named(isolated):
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'.*fashion_mnist"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="unknown split 'dev' for dataset 'mnist'.*train, test"):
        load_dataset("mnist", "dev")
    with pytest.raises(ValueError, match="channels=2"):
        load_dataset("synthetic", channels=2)
    with pytest.raises(ValueError, match="download is not supported for 'stl10'"):
        download("stl10", isolated)


# --- downloads -------------------------------------------------------------


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def serve(tmp_path):
    """Start an HTTP server on 127.0.0.1 for a directory (or handler); yields its base URL."""
    servers = []

    def start(directory=None, handler=None):
        handler = handler or functools.partial(_Quiet, directory=str(directory))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@needs_fashion
def test_download_real_fashion_mnist_verifies_checksums(isolated, serve):
    url = serve(FASHION_DIR)
    root = isolated / "dl"
    ds = load_dataset("fashion_mnist", "test", root, download=True, base_url=url)
    assert len(ds) == 10000 and ds.root == root
    assert sorted(p.name for p in root.iterdir()) == sorted(FASHION_FILES)
    for name in FASHION_FILES:
        assert (root / name).read_bytes() == (FASHION_DIR / name).read_bytes()
    assert download("fashion_mnist", root, url) == root  # already there and valid: nothing fetched


@needs_fashion
def test_download_rejects_corrupted_copy_and_leaves_nothing(isolated, serve):
    served = isolated / "served"
    served.mkdir()
    for name in FASHION_FILES:
        (served / name).symlink_to(FASHION_DIR / name)
    bad = bytearray((FASHION_DIR / "train-labels-idx1-ubyte.gz").read_bytes())
    bad[len(bad) // 2] ^= 0xFF
    (served / "train-labels-idx1-ubyte.gz").unlink()
    (served / "train-labels-idx1-ubyte.gz").write_bytes(bytes(bad))
    url = serve(served)
    root = isolated / "dl"
    with pytest.raises(DownloadError) as info:
        download("fashion_mnist", root, url)
    msg = str(info.value)
    assert f"{url}train-labels-idx1-ubyte.gz" in msg
    assert "expected MD5 25c81989df183df01b3e8a0aad5dffbe" in msg
    assert "got " in msg
    assert list(root.iterdir()) == []


def test_download_interrupted_transfer_leaves_nothing(isolated, serve):
    class Truncating(_Quiet):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"\x1f\x8b" + b"x" * 1000)
            self.wfile.flush()
            self.close_connection = True

    url = serve(handler=Truncating)
    root = isolated / "dl"
    with pytest.raises(DownloadError, match=r"127\.0\.0\.1.*train-images-idx3-ubyte\.gz"):
        download("mnist", root, url, progress=False)
    assert list(root.iterdir()) == []


def test_download_missing_file_names_url(isolated, serve):
    url = serve(isolated / "cwd")
    with pytest.raises(DownloadError, match=r"could not download .*127\.0\.0\.1.*cifar-10-python\.tar\.gz.*404"):
        load_dataset("cifar10", root=isolated / "dl", download=True, base_url=url)
    assert list((isolated / "dl").iterdir()) == []


# --- mixtures --------------------------------------------------------------


def test_mixture_sampling_follows_weights():
    small = load_dataset("synthetic", synthetic_size=50, seed=1, synthetic_classes=5)
    large = load_dataset("synthetic", synthetic_size=950, seed=2)
    for weights, expected in (([1.0, 1.0], 0.5), ([3.0, 1.0], 0.75)):
        mix = MixtureDataset([small, large], weights)
        w = mix.sample_weights()
        assert w.shape == (1000,) and abs(float(w.sum()) - 1) < 1e-9
        draws = torch.multinomial(w, 40000, replacement=True, generator=torch.Generator().manual_seed(0))
        frac_small = (draws < 50).float().mean().item()
        assert abs(frac_small - expected) < 0.015


def test_mixture_get_batch_and_labels():
    a = load_dataset("synthetic", synthetic_size=20, seed=1, synthetic_classes=4)
    b = load_dataset("synthetic", synthetic_size=30, seed=2, synthetic_classes=6)
    mix = MixtureDataset([a, b], [1, 1])
    assert len(mix) == 50 and mix.num_classes == 10 and mix.channels == 3 and mix.image_size == 32
    idx = torch.tensor([49, 0, 20, 19, 35])
    images, labels = mix.get_batch(idx)
    assert torch.equal(images, torch.stack([mix[i][0] for i in idx.tolist()]))
    assert labels.tolist() == [b.labels[29] + 4, a.labels[0], b.labels[0] + 4, a.labels[19], b.labels[15] + 4]
    assert torch.equal(images[0], b.images[29]) and torch.equal(images[3], a.images[19])
    assert mix.mixture_labels(1, torch.tensor([0, 5, -1])).tolist() == [4, 9, -1]  # unlabelled stays -1
    assert mix.mixture_labels(0, torch.tensor([0, 3])).tolist() == [0, 3]
    assert (MixtureDataset([a, b], [1, 1], labels="none").get_batch(idx)[1] == -1).all()
    assert MixtureDataset([a, b], [1, 1], labels="shared")[20][1] == int(b.labels[0])
    with pytest.raises(IndexError):
        mix.get_batch(torch.tensor([50]))

    gray = load_dataset("synthetic", synthetic_size=10, channels=1)
    with pytest.raises(ValueError, match="same channels= and image_size="):
        MixtureDataset([a, gray], [1, 1])
    with pytest.raises(ValueError, match="positive"):
        MixtureDataset([a, b], [1, 0])


def test_checksum_accepts_a_recompressed_archive_by_its_payload(tmp_path):
    """A .gz whose bytes differ (other gzip settings) passes when the decompressed content has the known MD5."""
    import hashlib

    payload = bytes(range(256)) * 50
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(payload, mtime=0))
    payload_md5 = hashlib.md5(payload).hexdigest()
    assert D._checksum_problem(path, hashlib.md5(path.read_bytes()).hexdigest(), None) is None
    assert D._checksum_problem(path, "0" * 32, payload_md5) is None
    problem = D._checksum_problem(path, "0" * 32, "1" * 32)
    assert f"expected MD5 {'0' * 32}" in problem and f"got {payload_md5}" in problem
