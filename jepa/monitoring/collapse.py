"""The collapse alarm: RankMe of the target embeddings of a fixed held-out batch, against its step-0 value."""
from __future__ import annotations

import logging

import torch

from jepa.data import build_dataset, eval_transform
from jepa.data.datasets.decode import BadImageError
from jepa.data.datasets.folder import decode_square
from jepa.data.shard_reader import SampleStream
from jepa.device import autocast
from jepa.models.vit import DropPath
from jepa.monitoring.rankme import rankme
from jepa.seeds import mix_seed

log = logging.getLogger("jepa")


def held_out_images(cfg, n: int, train_dataset) -> tuple[torch.Tensor, str]:
    """``n`` fixed, normalised images ``[n, C, H, W]``: from the test split of ``data.dataset`` when the run trains
    on that dataset and it has one, else from ``train_dataset``; and which of the two it was."""
    source, where = None, "test split"
    if not cfg.data.mix and getattr(train_dataset, "name", None) == cfg.data.dataset:
        try:
            source = build_dataset(cfg, "test")
        except (FileNotFoundError, ValueError) as e:
            log.info("no test split for the RankMe batch (%s); using fixed training images", str(e).splitlines()[0])
    if source is None:
        source, where = train_dataset, "training images"
    if isinstance(source, SampleStream):
        images, where = first_shard_images(source, n), "first images of the first shard"
    else:
        g = torch.Generator().manual_seed(mix_seed(cfg.training.seed, 4099))
        images = decodable_images(source, torch.randperm(len(source), generator=g), n)
    return eval_transform(cfg)(images), where


def first_shard_images(shards: SampleStream, n: int) -> torch.Tensor:
    """The first ``n`` decodable images of a stream of shards (it has no random access), centre squares."""
    kept = []
    for k, count in enumerate(shards.counts):
        for sample in shards.samples(k, set(range(count))):
            try:
                kept.append(decode_square(sample.data, shards.channels, shards.image_size, sample.name))
            except BadImageError as e:
                log.info("held-out images: passing over %s", e)
            if len(kept) == n:
                return torch.stack(kept)
    if not kept:
        raise BadImageError(shards.where, "no image of the shards can be decoded")
    return torch.stack(kept)


def decodable_images(dataset, order: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` images of ``dataset`` in ``order`` that decode (files that cannot are passed over), in
    index order."""
    idx = order[:n].sort().values
    try:
        return dataset.get_batch(idx)[0]
    except BadImageError:
        pass
    kept = []
    for i in order.tolist():
        try:
            kept.append((i, dataset.get_batch(torch.tensor([i]))[0]))
        except BadImageError as e:
            log.info("held-out images: passing over %s", e)
        if len(kept) == n:
            break
    if not kept:
        raise BadImageError(str(getattr(dataset, "root", "the dataset")), "no image of it can be decoded")
    return torch.cat([img for _, img in sorted(kept, key=lambda t: t[0])])


class CollapseMonitor:
    """RankMe of the centred target embeddings (token means) of a fixed held-out batch: ``train/rankme`` and a
    collapse alarm. Centred, because at initialisation one vector shared by all images dominates a ViT's
    token means (RankMe ~1.6 uncentred, whatever happens next); centred, it is the effective rank of how the
    images spread (docs/monitoring.md).

    The batch (``logging.rankme_batch`` images, default one training batch so a compiled encoder needs no new
    graph) is chosen and measured at construction, when the weights are those of step 0; that value is the
    reference. ``check`` warns once when RankMe falls below ``logging.collapse_warn_fraction`` of it. Runs without
    grad and draws nothing from the global RNG, so the training numbers and an exact resume are unchanged.
    """

    def __init__(self, cfg, encoder, train_dataset, device: torch.device, amp_dtype: torch.dtype):
        n = cfg.data.batch_size if cfg.logging.rankme_batch is None else cfg.logging.rankme_batch
        self.encoder, self.device, self.amp_dtype = encoder, device, amp_dtype
        # online targets are the context encoder, drop path and all: measured in eval mode, else it would draw
        self.stochastic = any(isinstance(m, DropPath) and m.p > 0 for m in encoder.modules())
        self.fraction = cfg.logging.collapse_warn_fraction
        self.images, self.start, self.warned = None, None, False
        if n:
            images, where = held_out_images(cfg, n, train_dataset)
            self.images = images.to(device)
            self.start = float(self.measure()["rankme"])
            log.info("collapse alarm: RankMe of %d held-out %s is %.1f at step 0 (of at most %d)", len(images), where,
                     self.start, min(len(images) - 1, getattr(encoder, "embed_dim", len(images))))

    @torch.no_grad()
    def measure(self) -> dict[str, torch.Tensor]:
        """``{"rankme": 0-d tensor on the device}`` (no host sync), or ``{}`` when turned off."""
        if self.images is None:
            return {}
        was_training = self.encoder.training
        self.encoder.train(was_training and not self.stochastic)
        try:
            with autocast(self.device, self.amp_dtype):
                h = self.encoder(self.images)
        finally:
            self.encoder.train(was_training)
        z = h.float().mean(dim=1)
        return {"rankme": rankme(z - z.mean(dim=0))}

    def collapsing(self, value: float) -> bool:
        return bool(self.fraction) and self.start is not None and value < self.fraction * self.start

    def check(self, step: int, value: float) -> str:
        """The progress-line text for ``value``; the first time it is below the threshold, a warning in the log."""
        if not self.collapsing(value):
            return f"{value:.1f}"
        if not self.warned:
            self.warned = True
            log.warning("possible representation collapse: train/rankme is %.1f at step %d, below %.0f %% of its "
                        "step-0 value %.1f (the target embeddings of different images span ever fewer directions). "
                        "Check train/target_std and the k-NN monitor; see docs/monitoring.md for what to change",
                        value, step, 100 * self.fraction, self.start)
        return f"{value:.1f} (collapse?)"
