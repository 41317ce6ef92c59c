"""Loader throughput: images/s of the reference pipeline and of ours (image folder, shards), per worker and more.

    python bench/loader.py                      # 2560 JPEGs, 224 px crops, batch 64, 1 and 2 workers
    python bench/loader.py --workers 1,2,4 --images 5120 --out FILE.json
    python bench/loader.py --quick              # a smoke run on a few small images (seconds)

The images are synthetic photographs (1/f colour noise, sharp-edged shapes, grain), sides uniform in
``--min-side..--max-side`` (ImageNet-like 300-600 px), JPEG quality 90, in 10 class folders, generated
once and cached (``--cache``, default ``~/.cache/jepa/loader-bench``) with their shards. Each pipeline
runs in a DataLoader with ``w`` worker processes; images/s is measured over the second half of
``--batches`` batches (worker start-up excluded) while the main process only receives the batches.

- ``reference``: the reference code's way, per image in the worker: PIL open, ``convert("RGB")``,
  random resized crop (torch RNG, crop then antialiased bilinear resize), flip, to a float tensor,
  normalise; the default collate stacks the float batch.
- ``ours, folder``: ``TrainBatches`` on the image folder: per-image crops at full resolution with
  reduced JPEG decoding where the crop shrinks by 4x or more, uint8 batches (normalised on the device),
  plus the masks of each batch, which the reference pipeline does not sample.
- ``ours, folder, full decode``: the same without reduced decoding, to show what it gains.
- ``ours, shards``: ``TrainBatches`` streaming the same images from tar shards.

All pipelines crop with scale 0.3-1.0 and ratio 3/4-4/3, flip with p = 0.5, at ``--image-size``.
"""
from __future__ import annotations

import math
import os
import random
import statistics
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import Image, ImageDraw, features
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import harness  # noqa: E402
from jepa.config import load_config  # noqa: E402
from jepa.data import TrainBatches  # noqa: E402
from jepa.data.datasets.folder import load_imagefolder  # noqa: E402
from jepa.data.shard_writer import write_shards  # noqa: E402

SCALE, RATIO = (0.3, 1.0), (3 / 4, 4 / 3)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLASSES = 10
SHARDS = 8  # enough for 8 loader workers
# Published ViT-B/16 training throughput: timm's benchmark, mixed precision, RTX 3090, batch 192, 224 px.
VITB16_IMAGES_PER_S = 390.86
VITB16_SOURCE = ("timm results/benchmark-train-amp-nchw-pt112-cu113-rtx3090.csv, vit_base_patch16_224 "
                 "(github.com/huggingface/pytorch-image-models)")


# ------------------------------------------------------------------ synthetic photographs


def synthetic_photo(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """A photograph-like RGB image: 1/f colour noise, a few sharp-edged shapes and fine grain."""
    fy, fx = np.fft.fftfreq(height)[:, None], np.fft.rfftfreq(width)[None, :]
    f = np.sqrt(fx ** 2 + fy ** 2)
    f[0, 0] = 1.0
    channels = []
    for _ in range(3):
        spectrum = (rng.standard_normal(f.shape) + 1j * rng.standard_normal(f.shape)) / f ** 1.1
        spectrum[0, 0] = 0
        channels.append(np.fft.irfft2(spectrum, s=(height, width)))
    x = np.stack(channels, -1) @ (rng.normal(size=(3, 3)) * 0.4 + np.eye(3))
    x = (x - x.mean()) / (x.std() + 1e-9) * 50 + 120
    img = Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 8))):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1, y1 = x0 + int(rng.integers(10, width // 2 + 11)), y0 + int(rng.integers(10, height // 2 + 11))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=fill)
    grain = np.asarray(img, dtype=np.float32) + rng.normal(0, 4, (height, width, 3))
    return Image.fromarray(np.clip(grain, 0, 255).astype(np.uint8))


def _write_photo(job):
    path, seed, lo, hi, quality = job
    rng = np.random.default_rng(seed)
    w, h = (int(v) for v in rng.integers(lo, hi + 1, 2))
    synthetic_photo(w, h, rng).save(path, "JPEG", quality=quality)


def make_dataset(cache: Path, n: int, lo: int, hi: int, quality: int = 90, seed: int = 0) -> Path:
    """``cache/<spec>/`` with ``folder/train/<class>/*.jpg`` and ``shards/``, made once (``complete.json`` last)."""
    spec = cache / f"{n}img_{lo}-{hi}px_q{quality}_seed{seed}"
    marker = spec / "complete.json"
    if marker.is_file():
        return spec
    jobs = []
    for i in range(n):
        folder = spec / "folder" / "train" / f"class{i % CLASSES:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        jobs.append((folder / f"{i:06d}.jpg", seed * 1_000_003 + i, lo, hi, quality))
    print(f"writing {n} synthetic JPEGs into {spec} (once) ...", flush=True)
    with Pool(os.cpu_count()) as pool:
        pool.map(_write_photo, jobs, chunksize=16)
    write_shards(spec / "folder" / "train", spec / "shards", num_shards=SHARDS,
                 force=True)  # this cache folder is the bench's own; an interrupted earlier write is replaced
    harness.write_json(marker, {"images": n, "sides": [lo, hi], "quality": quality, "seed": seed})
    return spec


# ------------------------------------------------------------------ the reference pipeline


def reference_box(width: int, height: int) -> tuple[int, int, int, int]:
    """``(left, top, w, h)`` of a random resized crop drawn as torchvision's ``RandomResizedCrop`` does (torch RNG)."""
    area = width * height
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(10):
        target = area * torch.empty(1).uniform_(*SCALE).item()
        aspect = math.exp(torch.empty(1).uniform_(*log_ratio).item())
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = torch.randint(0, height - h + 1, size=(1,)).item()
            left = torch.randint(0, width - w + 1, size=(1,)).item()
            return left, top, w, h
    aspect = width / height
    w, h = width, height
    if aspect < RATIO[0]:
        h = round(width / RATIO[0])
    elif aspect > RATIO[1]:
        w = round(height * RATIO[1])
    return (width - w) // 2, (height - h) // 2, w, h


def reference_crop(img: Image.Image, size: int) -> Image.Image:
    """The reference's random resized crop: crop the box, then resize it (antialiased bilinear)."""
    left, top, w, h = reference_box(*img.size)
    return img.crop((left, top, left + w, top + h)).resize((size, size), Image.BILINEAR)


class ReferenceFolder(Dataset):
    """An image-folder dataset with the reference's per-image transform: crop, flip, to tensor, normalise."""

    def __init__(self, samples, size: int):
        self.samples, self.size = samples, size
        self.mean, self.std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        with open(path, "rb") as f:
            img = Image.open(f).convert("RGB")
        img = reference_crop(img, self.size)
        if torch.rand(1).item() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        x = torch.from_numpy(np.array(img, copy=True)).view(self.size, self.size, 3).permute(2, 0, 1).contiguous()
        x = x.float().div(255)
        return x.sub_(self.mean).div_(self.std), label


# ------------------------------------------------------------------ measuring


def ours_config(spec: Path, args, dataset: str):
    over = {"data.image_size": str(args.image_size), "data.channels": "3", "data.batch_size": str(args.batch_size),
            "data.crop_scale": f"[{SCALE[0]}, {SCALE[1]}]", "data.crop_ratio": f"[{RATIO[0]}, {RATIO[1]}]",
            "data.hflip": "true", "model.patch_size": str(args.patch_size), "masks.min_keep": "4"}
    if dataset == "shards":
        over.update({"data.dataset": "shards", "data.shards": str(spec / "shards" / f"shard-{{000000..{SHARDS - 1:06d}}}.tar")})
    else:
        over.update({"data.dataset": "imagefolder", "data.root": str(spec / "folder")})
    return load_config(None, over)


def loader_for(name: str, spec: Path, args, workers: int):
    """``(iterator over one epoch of pipeline name with workers loader processes, its number of batches)``."""
    if name == "reference":
        samples = load_imagefolder(spec / "folder", "train", 3, args.image_size, None).samples
        loader = DataLoader(ReferenceFolder(samples, args.image_size), batch_size=args.batch_size, shuffle=True,
                            num_workers=workers, drop_last=True, prefetch_factor=4 if workers else None)
        return iter(loader), len(loader)
    cfg = ours_config(spec, args, "shards" if name == "ours, shards" else "imagefolder")
    cfg.data.num_workers = workers
    batches = TrainBatches(cfg)
    if name == "ours, folder, full decode":
        batches.crops.fast_decode = False
    return batches.epoch(0), batches.batches_per_epoch


def measure(name: str, spec: Path, args, workers: int) -> dict:
    """images/s over the second half of ``args.batches`` batches (start-up and the first half excluded)."""
    it, available = loader_for(name, spec, args, workers)
    stamps = []
    for _ in range(min(args.batches, available)):
        next(it)
        stamps.append(time.perf_counter())
    del it
    half = len(stamps) // 2
    seconds = stamps[-1] - stamps[half - 1]
    ips = (len(stamps) - half) * args.batch_size / seconds
    return {"pipeline": name, "workers": workers, "images_per_s": ips, "images_per_s_per_worker": ips / workers,
            "batches_timed": len(stamps) - half}


def reduced_decode_fraction(spec: Path, args, draws: int = 2000) -> float:
    """The share of crops that decode at a reduced JPEG scale on this dataset and image size."""
    from jepa.data.crops import FileCrops, draft_scale
    crops = FileCrops(args.image_size, 3, SCALE, RATIO)
    files = sorted((spec / "folder" / "train").rglob("*.jpg"))
    rng = random.Random(0)
    reduced = 0
    for k in range(draws):
        with Image.open(files[k % len(files)]) as img:
            box, _ = crops.draw(img.width, img.height, rng)
        reduced += draft_scale(box, args.image_size) > 1
    return reduced / draws


def table(rows: list[dict]) -> str:
    ref = {r["workers"]: r["images_per_s"] for r in rows if r["pipeline"] == "reference"}
    lines = ["| pipeline | workers | images/s | images/s per worker | vs reference |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        base = ref.get(r["workers"])
        vs = f"{r['images_per_s'] / base:.2f}x" if base else "-"
        lines.append(f"| {r['pipeline']} | {r['workers']} | {r['images_per_s']:.0f} | "
                     f"{r['images_per_s_per_worker']:.0f} | {vs} |")
    return "\n".join(lines)


def run(args) -> dict:
    spec = make_dataset(Path(args.cache).expanduser(), args.images, args.min_side, args.max_side)
    rows = []
    for workers in args.workers:
        for name in ("reference", "ours, folder", "ours, folder, full decode", "ours, shards"):
            row = measure(name, spec, args, workers)
            rows.append(row)
            print(f"{name:<28} workers {workers}: {row['images_per_s']:7.1f} images/s", flush=True)
    ours = [r["images_per_s_per_worker"] for r in rows if r["pipeline"] == "ours, folder" and r["workers"] == 1]
    per_worker = ours[0] if ours else statistics.mean(r["images_per_s_per_worker"] for r in rows
                                                       if r["pipeline"] == "ours, folder")
    return {
        "device": harness.device_name("cpu"), "torch": torch.__version__,
        "cpu_features": harness.cpu_features(("sse4_2", "avx2", "avx512f", "avx512_bf16", "amx_tile")),
        "pillow": PIL.__version__, "libjpeg_turbo": features.version("libjpeg_turbo"),
        "settings": {"images": args.images, "sides": [args.min_side, args.max_side], "jpeg_quality": 90,
                     "image_size": args.image_size, "batch_size": args.batch_size, "batches": args.batches,
                     "crop_scale": list(SCALE), "crop_ratio": list(RATIO), "hflip": 0.5},
        "reduced_decode_fraction": reduced_decode_fraction(spec, args),
        "rows": rows,
        "vitb16_images_per_s": VITB16_IMAGES_PER_S, "vitb16_source": VITB16_SOURCE,
        "workers_to_feed_vitb16": math.ceil(VITB16_IMAGES_PER_S / per_worker),
        "table": table(rows),
    }


def markdown(record: dict) -> str:
    s = record["settings"]
    return (f"### Loader throughput on {record['device']} ({record['cpu_features']}), torch {record['torch']}, "
            f"Pillow {record['pillow']} (libjpeg-turbo {record['libjpeg_turbo']})\n\n"
            f"{s['images']} synthetic JPEGs, sides {s['sides'][0]}-{s['sides'][1]} px, quality {s['jpeg_quality']}; "
            f"crops to {s['image_size']} px, batch {s['batch_size']}; {100 * record['reduced_decode_fraction']:.0f} % "
            f"of the crops decode at a reduced JPEG scale.\n\n{record['table']}\n\n"
            f"Worker processes to feed a ViT-B/16 at {record['vitb16_images_per_s']:.0f} images/s "
            f"({record['vitb16_source']}): {record['workers_to_feed_vitb16']}.\n")


def parse(argv):
    p = harness.parser(__doc__, prog="python bench/loader.py")
    p.add_argument("--images", type=int, default=2560, help="synthetic JPEGs (default 2560)")
    p.add_argument("--min-side", type=int, default=300)
    p.add_argument("--max-side", type=int, default=600)
    p.add_argument("--image-size", type=int, default=224, help="crop size (default 224)")
    p.add_argument("--patch-size", type=int, default=16, help="mask grid of our batches (default 16)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--batches", type=int, default=40, help="batches per measurement (the second half is timed)")
    p.add_argument("--workers", default="1,2", help="loader worker counts, comma-separated (default 1,2)")
    p.add_argument("--cache", default=os.environ.get("JEPA_BENCH_CACHE", "~/.cache/jepa/loader-bench"),
                   help="where the synthetic images are kept between runs")
    harness.add_out(p, "JSON output (default bench/results/<cpu>/loader.json); markdown beside it")
    p.add_argument("--quick", action="store_true", help="smoke run: 48 small images, 32 px crops, 1 worker")
    args = harness.parse(p, argv)
    if args.quick:
        args.images, args.min_side, args.max_side, args.image_size, args.patch_size = 48, 48, 96, 32, 4
        args.batch_size, args.batches = 8, 4
        if args.workers == p.get_default("workers"):
            args.workers = "1"
    try:
        args.workers = [int(w) for w in args.workers.split(",")]
    except ValueError:
        p.error(f"--workers takes comma-separated integers, got {args.workers!r}")
    if any(w < 1 for w in args.workers) or args.batches < 2 or args.images < args.batch_size * args.batches:
        p.error("--workers must be >= 1, --batches >= 2, and --images at least --batch-size x --batches")
    return args


def main(argv=None) -> int:
    args = parse(argv)
    record = run(args)
    harness.write_record(args.out or harness.results_dir("cpu") / "loader.json", record, markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
