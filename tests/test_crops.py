"""Per-image random resized crops of image files: the crop distribution, Pillow's pixels, reduced JPEG decoding,
channel conversion and bad files."""
import io
import math
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from jepa.data.crops import FileCrops, draft_scale, fallback_box, sample_box
from jepa.data.datasets.decode import BadImageError, decode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.loader import synthetic_photo  # noqa: E402

SCALE, RATIO = (0.08, 1.0), (3 / 4, 4 / 3)
# Two-sample KS critical value at alpha = 0.001 for n = m: 1.949 * sqrt(2 / n).
KS_ALPHA_COEF = 1.949


def ks_statistic(a, b) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical CDFs."""
    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    points = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, points, side="right") / len(a)
    cdf_b = np.searchsorted(b, points, side="right") / len(b)
    return float(np.abs(cdf_a - cdf_b).max())


def independent_boxes(width, height, n, scale, ratio, rng: np.random.Generator, log_uniform=True):
    """Area fractions and log aspect ratios of ``n`` random-resized-crop boxes, drawn array-wise with numpy:
    10 candidate boxes per crop, the first that fits wins, else the centre crop with its ratio clamped."""
    area = width * height
    target = area * rng.uniform(scale[0], scale[1], (n, 10))
    if log_uniform:
        aspect = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), (n, 10)))
    else:
        aspect = rng.uniform(ratio[0], ratio[1], (n, 10))
    w = np.floor(np.sqrt(target * aspect) + 0.5)
    h = np.floor(np.sqrt(target / aspect) + 0.5)
    fits = (w >= 1) & (w <= width) & (h >= 1) & (h <= height)
    rows, first = np.arange(n), fits.argmax(axis=1)
    w, h = w[rows, first], h[rows, first]
    fb_w, fb_h = width, height
    if width / height < ratio[0]:
        fb_h = math.floor(width / ratio[0] + 0.5)
    elif width / height > ratio[1]:
        fb_w = math.floor(height * ratio[1] + 0.5)
    found = fits.any(axis=1)
    w, h = np.where(found, w, fb_w), np.where(found, h, fb_h)
    return w * h / area, np.log(w / h)


@pytest.mark.parametrize("width,height", [(500, 375), (375, 500), (224, 224), (640, 96), (37, 53)])
def test_crop_distribution_matches_an_independent_implementation(width, height):
    """10,000 draws per shape; two-sample KS statistic below its alpha = 0.001 critical value, 0.0276."""
    n = 10_000
    rng = random.Random(1234)
    ours = [sample_box(width, height, SCALE, RATIO, rng)[0] for _ in range(n)]
    area = np.array([b.width * b.height for b in ours]) / (width * height)
    log_ratio = np.log([b.width / b.height for b in ours])
    ref_area, ref_log_ratio = independent_boxes(width, height, n, SCALE, RATIO, np.random.default_rng(99))
    threshold = KS_ALPHA_COEF * math.sqrt(2 / n)
    assert ks_statistic(area, ref_area) < threshold
    assert ks_statistic(log_ratio, ref_log_ratio) < threshold
    if width >= 224 and height >= 224:  # the test has power: uniform instead of log-uniform ratios are told apart
        _, wrong = independent_boxes(width, height, n, SCALE, RATIO, np.random.default_rng(5), log_uniform=False)
        assert ks_statistic(wrong, ref_log_ratio) > threshold
    for box in ours:
        assert 0 <= box.left and box.left + box.width <= width and 0 <= box.top and box.top + box.height <= height


def test_crop_positions_are_uniform_over_the_free_range():
    rng = random.Random(3)
    tops = [sample_box(100, 100, (0.25, 0.25), (1, 1), rng)[0].top for _ in range(4000)]
    assert ks_statistic(tops, np.random.default_rng(0).integers(0, 51, 4000)) < KS_ALPHA_COEF * math.sqrt(2 / 4000)
    assert min(tops) == 0 and max(tops) == 50


@pytest.mark.parametrize("width,height,expected", [
    (1000, 10, (493, 0, 13, 10)),      # far too wide: full height, width at the largest ratio, centred
    (10, 1000, (0, 493, 10, 13))])     # far too tall: full width, height at the smallest ratio
def test_fallback_triggers_where_no_box_fits(width, height, expected):
    boxes = [sample_box(width, height, (0.9, 1.0), RATIO, random.Random(s)) for s in range(50)]
    assert all(fallback for _, fallback in boxes)
    assert {(b.left, b.top, b.width, b.height) for b, _ in boxes} == {expected}
    assert fallback_box(300, 200, RATIO).edges() == (16, 0, 283, 200)  # 3:2 clamped to 4:3
    assert fallback_box(300, 300, RATIO).edges() == (0, 0, 300, 300)  # a ratio in range keeps the whole image


def test_fallback_is_rare_where_boxes_fit():
    rng = random.Random(0)
    fallbacks = sum(sample_box(500, 375, (0.3, 1.0), RATIO, rng)[1] for _ in range(2000))
    assert fallbacks < 20


def png_bytes(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize("shape", [(375, 500), (64, 48), (41, 97)])
@pytest.mark.parametrize("size", [16, 32])
def test_pixels_equal_pillows_crop_then_resize(shape, size):
    data = png_bytes(np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8))
    crops = FileCrops(size, 3, crop_scale=(0.08, 1.0))
    flips = 0
    for seed in range(12):
        out = crops(data, "x.png", seed)
        box, flip = crops.draw(shape[1], shape[0], random.Random(seed))
        expected = Image.open(io.BytesIO(data)).crop(box.edges()).resize((size, size), Image.BILINEAR)
        if flip:
            expected = expected.transpose(Image.FLIP_LEFT_RIGHT)
        flips += flip
        assert out.dtype == torch.uint8 and out.shape == (3, size, size)
        assert torch.equal(out, torch.from_numpy(np.array(expected)).permute(2, 0, 1))
    assert 0 < flips < 12


def test_same_seed_same_view_and_seeds_differ():
    data = png_bytes(np.random.default_rng(0).integers(0, 256, (80, 120, 3), dtype=np.uint8))
    crops = FileCrops(24, 3)
    assert torch.equal(crops(data, "x", 5), crops(data, "x", 5))
    assert len({crops(data, "x", s).sum().item() for s in range(6)}) == 6


def test_centre_square_without_random_crop():
    array = np.zeros((40, 80, 3), dtype=np.uint8)
    array[:, 20:60] = 200  # the centre square is uniform
    out = FileCrops(20, 3, random_crop=False, hflip=False)(png_bytes(array), "x", 0)
    assert (out == 200).all()


def jpeg(img: Image.Image, quality=90) -> bytes:
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality)
    return out.getvalue()


@pytest.fixture(scope="module")
def photos():
    rng = np.random.default_rng(5)
    return [synthetic_photo(int(rng.integers(300, 520)), int(rng.integers(300, 520)), rng) for _ in range(6)]


@pytest.mark.parametrize("channels", [3, 1])
def test_reduced_jpeg_decode_stays_within_the_stated_tolerance(photos, channels):
    """Tolerance (docs/deviations.md, "Crop source"): against a full decode, mean |diff| <= 1 level of 255 over all
    reduced crops, <= 2 on any one crop, 99.9th percentile <= 8; for colour images JPEG quality 90 itself changes
    these crops by about as much (measured here too)."""
    size = 40
    fast, full = FileCrops(size, channels), FileCrops(size, channels, fast_decode=False)
    diffs, per_crop, scales, compression = [], [], set(), []
    for k, img in enumerate(photos):
        data, lossless = jpeg(img), png_bytes(np.array(img))
        for seed in range(20):
            box, _ = fast.draw(img.width, img.height, random.Random(seed))
            scale = draft_scale(box, size)
            if scale == 1:
                continue
            scales.add(scale)
            a, b = fast(data, "x", seed).int(), full(data, "x", seed).int()
            d = (a - b).abs().flatten().numpy()
            diffs.append(d)
            per_crop.append(d.mean())
            compression.append((b - full(lossless, "x", seed).int()).abs().float().mean().item())
    assert len(per_crop) >= 40 and scales >= {2, 4}, "too few reduced decodes: the test would be vacuous"
    d = np.concatenate(diffs)
    assert d.mean() <= 1.0 and max(per_crop) <= 2.0 and np.percentile(d, 99.9) <= 8
    if channels == 3:  # colour JPEG: quality 90's own loss (chroma subsampling included) is of the same size
        assert d.mean() <= 1.5 * np.mean(compression)
    assert d.max() > 0, "reduced decoding changed nothing: it was not used"


def test_reduced_decode_only_where_the_crop_shrinks_enough():
    from jepa.data.crops import Box
    assert draft_scale(Box(0, 0, 447, 500), 112) == 1
    assert draft_scale(Box(0, 0, 448, 500), 112) == 2
    assert draft_scale(Box(0, 0, 500, 1000), 62) == 4
    assert draft_scale(Box(0, 0, 2000, 2000), 100) == 8


@pytest.mark.parametrize("mode,channels", [("CMYK", 3), ("L", 3), ("P", 3), ("P", 1), ("RGBA", 1), ("LA", 3),
                                           ("I;16", 1), ("I;16", 3), ("1", 3)])
def test_any_mode_becomes_the_configured_channels(tmp_path, mode, channels, recwarn):
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    expected = None
    if mode == "I;16":
        high = rng.integers(0, 256, (30, 40))
        img = Image.fromarray((high * 256 + 77).astype(np.uint16))
        expected = high if channels == 1 else np.repeat(high[..., None], 3, -1)
    else:
        img = rgb.convert(mode)
        if mode == "P":
            img.info["transparency"] = 0
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    img.save(path)
    out = decode(path, str(path), channels)
    assert out.mode == ("L" if channels == 1 else "RGB") and out.size == (40, 30)
    if expected is not None:
        assert np.array_equal(np.asarray(out), expected)
    if mode in ("L", "1", "LA"):
        arr = np.asarray(out).astype(int)
        assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()
    view = FileCrops(16, channels)(path, str(path), 0)
    assert view.shape == (channels, 16, 16)
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)], [str(w.message) for w in recwarn]


@pytest.mark.parametrize("content,cause", [
    (b"", "empty file"),
    (b"just some text, not an image", "not an image"),
    ("truncated", "truncated"),
    ("corrupt", "cannot decode")])
def test_bad_files_raise_one_error_naming_the_file_and_cause(tmp_path, content, cause):
    good = jpeg(synthetic_photo(64, 48, np.random.default_rng(1)))
    if content == "truncated":
        content = good[:len(good) // 2]
    elif content == "corrupt":  # a flipped byte in a PNG's compressed pixels (libjpeg decodes corrupt scans anyway)
        corrupt = bytearray(png_bytes(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)))
        corrupt[corrupt.find(b"IDAT") + 200] ^= 0xFF
        content = bytes(corrupt)
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    for source in (path, content):
        with pytest.raises(BadImageError, match=cause) as info:
            FileCrops(16, 3)(source, str(path), 0)
        assert info.value.name == str(path) and str(path) in str(info.value)


def test_decompression_bomb_is_a_bad_image(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (100, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)
    with pytest.raises(BadImageError, match=r"100x100 = 10000 pixels, past Pillow's decompression-bomb limit"):
        FileCrops(16, 3)(path, str(path), 0)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # past twice the limit Pillow itself refuses
    with pytest.raises(BadImageError, match="decompression-bomb"):
        FileCrops(16, 3)(path, str(path), 0)


def test_a_bad_file_in_a_batch_takes_the_next_good_image_with_its_own_seed(tmp_path):
    rng = np.random.default_rng(2)
    files = []
    for i in range(4):
        path = tmp_path / f"{i}.png"
        path.write_bytes(png_bytes(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)) if i != 1 else b"")
        files.append((path, str(path)))
    crops = FileCrops(16, 3)
    images, taken, bad = crops.batch(files, [10, 11, 12, 13])
    assert taken == [0, 2, 2, 3] and bad == [(str(files[1][0]), "empty file (0 bytes)")]
    assert torch.equal(images[1], crops(files[2][0], "", 11)) and torch.equal(images[2], crops(files[2][0], "", 12))
    assert not torch.equal(images[1], images[2])
    images, taken, bad = crops.batch([files[1], files[1]], [0, 1])
    assert images is None and len(bad) == 2
