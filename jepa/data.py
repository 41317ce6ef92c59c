"""Training batches: data order, augmentation and mask sampling, reproducible from (seed, rank, epoch, batch).

Each batch is built by one call that gathers its images, augments them and draws
its masks with a generator seeded from its coordinates, so the stream is the same
with any number of DataLoader workers and a resumed run can start mid-epoch by
skipping batches without loading them.
"""
from __future__ import annotations

import hashlib
import signal
from dataclasses import dataclass

import torch
from torch.profiler import record_function
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from jepa.errors import ConfigError
from jepa.datasets import MixtureDataset, dataset_stats, load_dataset
from jepa.masks import MaskSampler
from jepa.transforms import BatchAugment


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers, stable across processes and Python versions."""
    digest = hashlib.blake2b(",".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


@dataclass
class Batch:
    images: torch.Tensor        # [B, C, H, W] float, normalised
    labels: torch.Tensor        # [B]
    ctx_idx: torch.Tensor       # [E, B, Kc] sorted patch ids
    tgt_idx: torch.Tensor       # [M, B, Kt]
    block_hw: tuple[int, int]   # shape of every target block of this batch
    mask_info: dict | None = None  # the sampler's last_info for this batch (for the trainer's mask statistics)

    def to(self, device, non_blocking: bool = True) -> "Batch":
        return Batch(self.images.to(device, non_blocking=non_blocking), self.labels.to(device, non_blocking=non_blocking),
                     self.ctx_idx.to(device, non_blocking=non_blocking), self.tgt_idx.to(device, non_blocking=non_blocking),
                     self.block_hw, self.mask_info)

    def pin_memory(self) -> "Batch":
        return Batch(self.images.pin_memory(), self.labels.pin_memory(), self.ctx_idx.pin_memory(),
                     self.tgt_idx.pin_memory(), self.block_hw, self.mask_info)


def block_shape(tgt_idx: torch.Tensor, grid_w: int) -> tuple[int, int]:
    """Height and width of the rectangular target block whose sorted ids are ``tgt_idx[0, 0]``."""
    first = tgt_idx[0, 0]
    rows = first // grid_w
    bh = int(rows.max() - rows.min()) + 1
    return bh, first.numel() // bh


def build_dataset(cfg, split: str = "train"):
    """The dataset (or weighted mixture) named by ``cfg.data``, at the configured size and channels."""
    d = cfg.data
    common = dict(channels=d.channels, image_size=d.image_size, download=d.download, base_url=d.download_url,
                  synthetic_size=d.synthetic_size, seed=cfg.training.seed, subset=d.subset)
    if d.mix:
        parts = [load_dataset(p.name, split, p.root, **common) for p in d.mix]
        return MixtureDataset(parts, [p.weight for p in d.mix])
    return load_dataset(d.dataset, split, d.root, **common)


def normalisation(cfg) -> tuple[list[float], list[float]]:
    d = cfg.data
    name = d.mix[0].name if d.mix else d.dataset
    mean, std = dataset_stats(name, d.channels)
    return (list(mean) if d.mean is None else d.mean), (list(std) if d.std is None else d.std)


def build_augment(cfg) -> BatchAugment:
    d = cfg.data
    mean, std = normalisation(cfg)
    return BatchAugment(d.image_size, mean, std, crop_scale=tuple(d.crop_scale), crop_ratio=tuple(d.crop_ratio),
                        hflip=d.hflip, random_crop=d.random_crop)


def build_mask_sampler(cfg) -> MaskSampler:
    k = cfg.masks
    g = cfg.data.image_size // cfg.model.patch_size
    return MaskSampler(grid=(g, g), enc_scale=tuple(k.enc_scale), pred_scale=tuple(k.pred_scale),
                       aspect_ratio=tuple(k.aspect_ratio), nenc=k.nenc, npred=k.npred, min_keep=k.min_keep,
                       allow_overlap=k.allow_overlap)


class EpochBatches(Dataset):
    """Batch ``i`` of one epoch on one rank: images, augmentation and masks, all seeded by position."""

    def __init__(self, dataset, order: torch.Tensor, batch_size: int, augment, sampler: MaskSampler,
                 seed: int, rank: int, epoch: int):
        self.dataset, self.order, self.batch_size = dataset, order, batch_size
        self.augment, self.sampler = augment, sampler
        self.seed, self.rank, self.epoch = seed, rank, epoch

    def __len__(self):
        return len(self.order) // self.batch_size

    def __getitem__(self, i: int) -> Batch:
        g = torch.Generator().manual_seed(mix_seed(self.seed, self.rank, self.epoch, i))
        idx = self.order[i * self.batch_size:(i + 1) * self.batch_size]
        images, labels = self.dataset.get_batch(idx)
        images = self.augment(images, g)
        with record_function("masks"):
            ctx, tgt = self.sampler.sample(len(idx), generator=g)
        ctx_idx, tgt_idx = torch.stack(ctx), torch.stack(tgt)
        return Batch(images, labels, ctx_idx, tgt_idx, block_shape(tgt_idx, self.sampler.grid[1]),
                     dict(self.sampler.last_info))


def _ignore_sigint(_worker_id: int):
    """Ctrl-C is for the main process, which finishes its step and saves; workers must not die first."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class TrainBatches:
    """The training stream: ``epoch(e, start=k)`` yields the batches of epoch ``e`` from batch ``k`` on."""

    def __init__(self, cfg, dataset=None, rank: int = 0, world_size: int = 1, pin_memory: bool = False):
        self.cfg = cfg
        self.dataset = dataset if dataset is not None else build_dataset(cfg, "train")
        self.rank, self.world_size = rank, world_size
        self.augment = build_augment(cfg)
        self.sampler = build_mask_sampler(cfg)
        self.batch_size = cfg.data.batch_size
        self.pin_memory = pin_memory
        per_rank = len(self.dataset) // world_size
        self.batches_per_epoch = per_rank // self.batch_size
        if self.batches_per_epoch < 1:
            raise ConfigError(f"data.batch_size={self.batch_size} is larger than the {per_rank} images per process "
                             f"of dataset '{cfg.data.dataset}'; lower data.batch_size or raise data.subset")

    def order(self, epoch: int) -> torch.Tensor:
        """This rank's sample order for ``epoch``: a ``DistributedSampler`` after ``set_epoch`` (one global
        shuffle strided over ranks, the uneven tail dropped); a mixture's weighted draw is strided the same way."""
        n = len(self.dataset)
        if isinstance(self.dataset, MixtureDataset):
            g = torch.Generator().manual_seed(mix_seed(self.cfg.training.seed, epoch, 7))
            order = torch.multinomial(self.dataset.sample_weights(), n, replacement=True, generator=g)
            usable = (n // self.world_size) * self.world_size
            return order[:usable][self.rank::self.world_size]
        sampler = DistributedSampler(self.dataset, num_replicas=self.world_size, rank=self.rank, shuffle=True,
                                     seed=mix_seed(self.cfg.training.seed, 7), drop_last=True)
        sampler.set_epoch(epoch)
        return torch.tensor(list(sampler), dtype=torch.long)

    def epoch(self, epoch: int, start: int = 0):
        batches = EpochBatches(self.dataset, self.order(epoch), self.batch_size, self.augment, self.sampler,
                               self.cfg.training.seed, self.rank, epoch)
        workers = self.cfg.data.num_workers
        loader = DataLoader(batches, batch_size=None, sampler=range(start, len(batches)), num_workers=workers,
                            pin_memory=self.pin_memory, persistent_workers=False,
                            prefetch_factor=4 if workers else None, worker_init_fn=_ignore_sigint,
                            generator=torch.Generator().manual_seed(mix_seed(self.cfg.training.seed, epoch)))
        return iter(loader)
