"""Training batches: data order, augmentation and mask sampling, reproducible from (seed, rank, epoch, batch).

Each batch is built by one call that gathers its images, augments them and draws
its masks with a generator seeded from its coordinates, so the stream is the same
with any number of DataLoader workers and a resumed run can start mid-epoch by
skipping batches without loading them. In-memory datasets are augmented a whole
batch at once in torch; image files are cropped one by one at full resolution
(jepa.data.crops) with a seed per image; shards stream in the order jepa.data.shard_plan plans.
"""
from __future__ import annotations

import functools
import signal
from dataclasses import dataclass

import torch
from torch.profiler import record_function
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, get_worker_info

from jepa.config.grid import patch_grid
from jepa.data.bad_images import BadImages
from jepa.data.crops import FileCrops
from jepa.data.datasets import (DatasetFormatError, DatasetNotFoundError, EncodedImages, MixtureDataset,
                                hf_options, load_dataset, load_options)
from jepa.data.datasets.decode import BadImageError
from jepa.data.hf_stream import load_hf_stream
from jepa.data.shard_plan import ShardPlan, read_in_order
from jepa.data.shard_reader import SampleStream, load_shards
from jepa.data.transforms import BatchAugment, normalisation, normalize
from jepa.errors import ConfigError
from jepa.masks import MaskSampler, block_size
from jepa.seeds import mix_seed

__all__ = ["Batch", "TrainBatches", "build_dataset", "build_augment", "build_crops", "build_mask_sampler"]

# tags the sample order's seed, apart from the loader's mix_seed(seed, epoch); any value would do, 7 keeps past orders
ORDER_SALT = 7


@dataclass
class Batch:
    images: torch.Tensor        # [B, C, H, W] float, normalised; or uint8 with ``norm`` set
    labels: torch.Tensor        # [B]
    ctx_idx: torch.Tensor       # [E, B, Kc] sorted patch ids
    tgt_idx: torch.Tensor       # [M, B, Kt]
    block_hw: tuple[int, int]   # shape of every target block of this batch
    mask_info: dict | None = None  # the sampler's last_info for this batch (for the trainer's mask statistics)
    # (mean, std) when ``images`` are uint8 still to be normalised: 4x less to pass between processes and to copy
    # to the device, where ``to`` normalises them
    norm: tuple[torch.Tensor, torch.Tensor] | None = None
    bad_images: tuple[tuple[str, str], ...] = ()  # (file, cause) of each slot whose file was replaced

    def to(self, device, non_blocking: bool = True) -> "Batch":
        images = self.images.to(device, non_blocking=non_blocking)
        if self.norm is not None:
            images = normalize(images.float(), *self.norm)
        return Batch(images, self.labels.to(device, non_blocking=non_blocking),
                     self.ctx_idx.to(device, non_blocking=non_blocking), self.tgt_idx.to(device, non_blocking=non_blocking),
                     self.block_hw, self.mask_info, None, self.bad_images)

    def pin_memory(self) -> "Batch":
        return Batch(self.images.pin_memory(), self.labels.pin_memory(), self.ctx_idx.pin_memory(),
                     self.tgt_idx.pin_memory(), self.block_hw, self.mask_info, self.norm, self.bad_images)


@dataclass
class LoaderFailure:
    """A dataset error caught in a loader worker, re-raised by the main process without the worker's traceback."""

    error: Exception


def block_shape(tgt_idx: torch.Tensor, grid_w: int) -> tuple[int, int]:
    """Height and width of the rectangular target block whose sorted ids are ``tgt_idx[0, 0]``."""
    first = tgt_idx[0, 0]
    rows = first // grid_w
    bh = int(rows.max() - rows.min()) + 1
    return bh, first.numel() // bh


def build_dataset(cfg, split: str = "train"):
    """The dataset (or weighted mixture, or shard or parquet stream) named by ``cfg.data``, at the configured size and
    channels."""
    d = cfg.data
    if d.dataset == "shards" and not d.mix:
        return load_shards(d.shards, d.root, d.channels, d.image_size)
    if d.dataset == "hf" and d.hf_streaming and not d.mix:
        return load_hf_stream(hf_options(d), split, d.channels, d.image_size)
    common = dict(load_options(d), download=d.download, base_url=d.download_url, synthetic_size=d.synthetic_size,
                  seed=cfg.training.seed, subset=d.subset)
    if d.mix:
        parts = [load_dataset(p.name, split, p.root, **common) for p in d.mix]
        return MixtureDataset(parts, [p.weight for p in d.mix])
    return load_dataset(d.dataset, split, d.root, **common)


def build_augment(cfg) -> BatchAugment:
    d = cfg.data
    mean, std = normalisation(cfg)
    return BatchAugment(d.image_size, mean, std, crop_scale=tuple(d.crop_scale), crop_ratio=tuple(d.crop_ratio),
                        hflip=d.hflip, random_crop=d.random_crop)


def build_crops(cfg) -> FileCrops:
    """The per-file augmentation of image folders and shards (the same crop settings as ``build_augment``)."""
    d = cfg.data
    return FileCrops(d.image_size, d.channels, crop_scale=tuple(d.crop_scale), crop_ratio=tuple(d.crop_ratio),
                     hflip=d.hflip, random_crop=d.random_crop)


def build_mask_sampler(cfg) -> MaskSampler:
    """The multi-block sampler of ``cfg.masks`` on the patch grid, once its geometry is known to work there."""
    k = cfg.masks
    grid = patch_grid(cfg.data.image_size, cfg.model.patch_size)
    check_mask_geometry(k, grid[0])
    return MaskSampler(grid=grid, enc_scale=tuple(k.enc_scale), pred_scale=tuple(k.pred_scale),
                       aspect_ratio=tuple(k.aspect_ratio), nenc=k.nenc, npred=k.npred, min_keep=k.min_keep,
                       allow_overlap=k.allow_overlap)


def check_mask_geometry(k, side: int):
    """The mask settings ``k`` (``cfg.masks``) against the ``side`` x ``side`` patch grid, decided from the
    block-size rule and a seeded trial of the sampler: a ConfigError naming the key, not a failure mid-run."""
    ch, cw = block_size(0.0, (side, side), k.enc_scale, (1.0, 1.0))
    if k.min_keep > ch * cw:
        raise ConfigError(f"masks.min_keep: must be <= {ch * cw}, the smallest context block masks.enc_scale="
                          f"{list(k.enc_scale)} gives on the {side}x{side} grid ({ch}x{cw}), got {k.min_keep}")
    if k.allow_overlap:
        return
    failed = batches_without_context((side, side), tuple(k.enc_scale), tuple(k.pred_scale), tuple(k.aspect_ratio),
                                     k.nenc, k.npred, k.min_keep)
    if failed:
        raise ConfigError(f"masks.npred: {k.npred} target blocks (masks.pred_scale={list(k.pred_scale)}) covered the "
                          f"whole {side}x{side} grid of some image, leaving it no context, in {failed} of "
                          f"{TRIAL_BATCHES} trial batches; lower masks.npred or masks.pred_scale, or set "
                          "masks.allow_overlap")


TRIAL_BATCHES = 16


@functools.lru_cache(maxsize=64)
def batches_without_context(grid, enc_scale, pred_scale, aspect_ratio, nenc, npred, min_keep) -> int:
    """In how many of ``TRIAL_BATCHES`` seeded batches of 64 the sampler (after its target redraws) is left
    with an image whose targets cover the whole grid. Cached: a run builds its sampler more than once."""
    sampler = MaskSampler(grid, enc_scale, pred_scale, aspect_ratio, nenc, npred, min_keep)
    failed = 0
    for seed in range(TRIAL_BATCHES):
        try:
            sampler.sample(64, torch.Generator().manual_seed(seed))
        except ConfigError:
            failed += 1
    return failed


def sample_masks(sampler: MaskSampler, n: int, g: torch.Generator):
    """The masks of a batch of ``n`` images: ``(ctx_idx, tgt_idx, block_hw, sampler info)``."""
    with record_function("masks"):
        ctx, tgt = sampler.sample(n, generator=g)
    ctx_idx, tgt_idx = torch.stack(ctx), torch.stack(tgt)
    return ctx_idx, tgt_idx, block_shape(tgt_idx, sampler.grid[1]), dict(sampler.last_info)


def crop_files(crops: FileCrops, sources: list, labels: torch.Tensor, seeds: list[int]):
    """Crop the files ``sources`` (``(source, name)`` pairs); a failed file takes another's image and label.

    Returns ``(uint8 images, labels, bad)``; raises when every file failed (there is nothing to train on).
    """
    images, taken, bad = crops.batch(sources, seeds)
    if images is None:
        name, cause = bad[0]
        raise BadImageError(name, f"{cause}\n... and every other image of its batch failed too "
                                  f"({', '.join(sorted({n for n, _ in bad[1:]})) or 'no others'}); check the dataset")
    return images, labels[torch.tensor(taken, dtype=torch.long)], bad


def has_files(dataset) -> bool:
    """Whether (part of) ``dataset`` is encoded images (files, bytes), cropped one by one instead of as a batch."""
    if isinstance(dataset, MixtureDataset):
        return any(isinstance(p, EncodedImages) for p in dataset.parts)
    return isinstance(dataset, EncodedImages)


class EpochBatches(Dataset):
    """Batch ``i`` of one epoch on one rank: images, augmentation and masks, all seeded by position.

    Image files get a view each, seeded by (seed, rank, epoch, i, slot), and travel as uint8 (``Batch.norm``).
    """

    def __init__(self, dataset, order: torch.Tensor, batch_size: int, augment, sampler: MaskSampler,
                 seed: int, rank: int, epoch: int, crops: FileCrops | None = None, norm=None):
        self.dataset, self.order, self.batch_size = dataset, order, batch_size
        self.augment, self.sampler, self.crops, self.norm = augment, sampler, crops, norm
        self.seed, self.rank, self.epoch = seed, rank, epoch

    def __len__(self):
        return len(self.order) // self.batch_size

    def __getitem__(self, i: int) -> Batch | LoaderFailure:
        g = torch.Generator().manual_seed(mix_seed(self.seed, self.rank, self.epoch, i))
        idx = self.order[i * self.batch_size:(i + 1) * self.batch_size]
        try:
            images, labels, norm, bad = self.images(idx, g, i)
        except DatasetFormatError as exc:
            return LoaderFailure(exc)
        return Batch(images, labels, *sample_masks(self.sampler, len(idx), g), norm, tuple(bad))

    def images(self, idx: torch.Tensor, g: torch.Generator, i: int):
        """``(images, labels, norm, bad)`` of the items ``idx`` of batch ``i``."""
        ds = self.dataset
        if not has_files(ds):
            images, labels = ds.get_batch(idx)
            return self.augment(images, g), labels, None, []
        seeds = [mix_seed(self.seed, "crop", self.rank, self.epoch, i, j) for j in range(len(idx))]
        if isinstance(ds, EncodedImages):
            images, labels, bad = crop_files(self.crops, [ds.source(k) for k in idx.tolist()], ds.labels[idx], seeds)
            return images, labels, self.norm, bad
        return self.mixed(idx, g, seeds)

    def mixed(self, idx: torch.Tensor, g: torch.Generator, seeds: list[int]):
        """A mixture's batch: file parts cropped per image, in-memory parts augmented together; all normalised."""
        ds, s = self.dataset, self.crops.image_size
        part_of = torch.bucketize(idx, torch.tensor(ds.offsets[1:], dtype=torch.long), right=True)
        images = torch.empty(len(idx), ds.channels, s, s)
        labels = torch.empty(len(idx), dtype=torch.long)
        bad = []
        for p in part_of.unique().tolist():
            slots = (part_of == p).nonzero().squeeze(1)
            part, local = ds.parts[p], idx[slots] - ds.offsets[p]
            if isinstance(part, EncodedImages):
                sources = [part.source(k) for k in local.tolist()]
                raw, part_labels, part_bad = crop_files(self.crops, sources, part.labels[local],
                                                        [seeds[k] for k in slots.tolist()])
                part_images, bad = normalize(raw.float(), *self.norm), bad + part_bad
            else:
                raw, part_labels = part.get_batch(local)
                part_images = self.augment(raw, g)
            images[slots], labels[slots] = part_images, ds.mixture_labels(p, part_labels)
        return images, labels, None, bad


class ShardBatches(IterableDataset):
    """One loader worker's share of an epoch of shards: the batches its reader owns, from batch ``start`` on.

    Loader worker ``j`` plays reader ``(start + j) % workers``, so the loader's round robin over its workers
    yields batches ``start, start + 1, ...`` in order. Views are seeded by (seed, epoch, global sample id).
    """

    def __init__(self, shards: SampleStream, plan: ShardPlan, crops: FileCrops, norm, sampler: MaskSampler,
                 seed: int, rank: int, epoch: int, start: int):
        self.shards, self.plan, self.crops, self.norm, self.sampler = shards, plan, crops, norm, sampler
        self.seed, self.rank, self.epoch, self.start = seed, rank, epoch, start

    def __iter__(self):
        info = get_worker_info()
        reader = (self.start + (info.id if info is not None else 0)) % self.plan.workers
        try:
            yield from self.reader_batches(reader)
        except (DatasetFormatError, DatasetNotFoundError) as exc:  # a bad or missing shard, a failed pipe: command
            yield LoaderFailure(exc)

    def reader_batches(self, reader: int):
        batches = self.plan.reader_batches(self.rank, reader, self.epoch, self.start)
        if not batches:
            return
        size = self.plan.batch_size
        shards, positions = self.plan.epoch_order(self.rank, reader, self.epoch)
        samples = read_in_order(self.shards, shards, positions[batches[0] // self.plan.workers * size:])
        for i in batches:
            chunk = [next(samples) for _ in range(size)]
            seeds = [mix_seed(self.seed, "crop", self.epoch, self.shards.offsets[s.shard] + s.member) for s in chunk]
            labels = torch.tensor([s.label for s in chunk], dtype=torch.long)
            images, labels, bad = crop_files(self.crops, [(s.data, s.name) for s in chunk], labels, seeds)
            g = torch.Generator().manual_seed(mix_seed(self.seed, self.rank, self.epoch, i))
            yield Batch(images, labels, *sample_masks(self.sampler, size, g), self.norm, tuple(bad))


def _ignore_sigint(_worker_id: int):
    """Ctrl-C is for the main process, which finishes its step and saves; workers must not die first."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class TrainBatches:
    """The training stream: ``epoch(e, start=k)`` yields the batches of epoch ``e`` from batch ``k`` on.

    Bad image files reported by the batches go through the ``data.on_bad_image`` policy here, in the main
    process, so it sees them all whatever the number of workers.
    """

    def __init__(self, cfg, dataset=None, rank: int = 0, world_size: int = 1, pin_memory: bool = False):
        self.cfg = cfg
        self.sampler = build_mask_sampler(cfg)  # first: a mask geometry that cannot work fails before data loads
        self.dataset = dataset if dataset is not None else build_dataset(cfg, "train")
        self.rank, self.world_size = rank, world_size
        self.augment = build_augment(cfg)
        self.crops = build_crops(cfg)
        self.norm = tuple(torch.tensor(v, dtype=torch.float32) for v in normalisation(cfg))
        self.bad_images = BadImages(cfg.data.on_bad_image, cfg.data.max_bad_images)
        self.batch_size = cfg.data.batch_size
        self.pin_memory = pin_memory
        if isinstance(self.dataset, SampleStream):
            d = cfg.data
            self.plan = ShardPlan(self.dataset.counts, world_size, d.num_workers, self.batch_size, d.shuffle_buffer,
                                  cfg.training.seed, self.dataset.key, self.dataset.more_parts)
            self.batches_per_epoch = self.plan.batches_per_epoch
            return
        per_rank = len(self.dataset) // world_size
        self.batches_per_epoch = per_rank // self.batch_size
        if self.batches_per_epoch < 1:
            raise ConfigError(f"data.batch_size={self.batch_size} is larger than the {per_rank} images per process "
                             f"of dataset '{cfg.data.dataset}'; lower data.batch_size or raise data.subset")

    def stream_info(self) -> dict:
        """What else fixes the batch sequence: for shards, the readers and the shuffle buffer."""
        if not isinstance(self.dataset, SampleStream):
            return {}
        return {"shards": len(self.dataset.urls), "shard_readers": self.plan.workers * self.world_size,
                "shuffle_buffer": self.plan.shuffle_buffer}

    def order(self, epoch: int) -> torch.Tensor:
        """This rank's sample order for ``epoch``: a ``DistributedSampler`` after ``set_epoch`` (one global
        shuffle strided over ranks, the uneven tail dropped); a mixture's weighted draw is strided the same way."""
        n = len(self.dataset)
        if isinstance(self.dataset, MixtureDataset):
            g = torch.Generator().manual_seed(mix_seed(self.cfg.training.seed, epoch, ORDER_SALT))
            order = torch.multinomial(self.dataset.sample_weights(), n, replacement=True, generator=g)
            usable = (n // self.world_size) * self.world_size
            return order[:usable][self.rank::self.world_size]
        sampler = DistributedSampler(self.dataset, num_replicas=self.world_size, rank=self.rank, shuffle=True,
                                     seed=mix_seed(self.cfg.training.seed, ORDER_SALT), drop_last=True)
        sampler.set_epoch(epoch)
        return torch.tensor(list(sampler), dtype=torch.long)

    def batches(self, epoch: int, start: int = 0) -> EpochBatches | ShardBatches:
        """The loader's dataset of ``epoch``'s batches: indexed by batch, or for shards streamed from ``start`` on."""
        seed = self.cfg.training.seed
        if isinstance(self.dataset, SampleStream):
            return ShardBatches(self.dataset, self.plan, self.crops, self.norm, self.sampler, seed, self.rank, epoch,
                                start)
        return EpochBatches(self.dataset, self.order(epoch), self.batch_size, self.augment, self.sampler, seed,
                            self.rank, epoch, self.crops, self.norm)

    def epoch(self, epoch: int, start: int = 0):
        seed, workers = self.cfg.training.seed, self.cfg.data.num_workers
        batches = self.batches(epoch, start)
        order = None if isinstance(batches, ShardBatches) else range(start, len(batches))
        loader = DataLoader(batches, batch_size=None, sampler=order, num_workers=workers,
                            pin_memory=self.pin_memory, persistent_workers=False,
                            prefetch_factor=4 if workers else None, worker_init_fn=_ignore_sigint,
                            generator=torch.Generator().manual_seed(mix_seed(seed, epoch)))
        return self.checked(iter(loader))

    def first_batch(self, epoch: int) -> Batch:
        """Batch 0 of ``epoch`` as training draws it, normalised, on the CPU (for pictures: no loader workers, and
        files it replaces are not counted against ``data.max_bad_images``)."""
        batches = self.batches(epoch)
        batch = next(iter(batches)) if isinstance(batches, ShardBatches) else batches[0]
        if isinstance(batch, LoaderFailure):
            raise batch.error
        return batch.to(torch.device("cpu"))

    def checked(self, batches):
        """Re-raise a worker's dataset error as itself; apply the bad-image policy to every batch."""
        for batch in batches:
            if isinstance(batch, LoaderFailure):
                raise batch.error
            self.bad_images.check(batch.bad_images)
            yield batch
