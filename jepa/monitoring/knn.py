"""The k-NN monitor: top-1 of the training encoder on fixed labelled subsets, after some epochs."""
from __future__ import annotations

import logging
import time

import torch

from jepa.data import eval_transform
from jepa.data.datasets import load_dataset, load_options
from jepa.eval import extract_features, knn_accuracy
from jepa.seeds import mix_seed

log = logging.getLogger("jepa")


def monitor_data(cfg, seed: int):
    """Fixed labelled subsets (``eval.max_train`` train, ``eval.max_test`` test images) for the k-NN monitor."""
    d = cfg.data
    if d.mix:
        raise ValueError("the k-NN monitor needs one labelled dataset; data.mix is set")
    load = load_options(d)
    train = load_dataset(d.dataset, "train", d.root, **load)
    test = load_dataset(d.dataset, "test", d.root, **load)
    g = torch.Generator().manual_seed(mix_seed(seed, 1729))
    picks = []
    for ds, n in ((train, cfg.eval.max_train), (test, cfg.eval.max_test)):
        labelled = (ds.labels >= 0).nonzero().squeeze(1)
        if labelled.numel() == 0:
            raise ValueError(f"dataset '{d.dataset}' split '{ds.split}' has no labels")
        picks.append(labelled[torch.randperm(labelled.numel(), generator=g)[:n]].sort().values)
    return train, test, picks


class KnnMonitor:
    """k-NN top-1 (``eval`` config) of the encoder ``eval.encoder`` names; None where it cannot run.

    Runs without grad and with its own generator: the training RNG, weights and data stream are
    untouched, so resumed runs stay exact. The subsets are loaded at the first call and kept.
    """

    def __init__(self, cfg, device: torch.device, amp_dtype: torch.dtype):
        self.cfg, self.device, self.amp_dtype = cfg, device, amp_dtype
        self.data = None  # (train, test, (train_idx, test_idx)) once loaded; False if unavailable

    def due(self, epoch: int) -> bool:
        """Whether the monitor runs after ``epoch`` (every ``eval.every_epochs``; 0 never)."""
        every = self.cfg.eval.every_epochs
        return bool(every) and epoch % every == 0

    def __call__(self, model, epoch: int) -> float | None:
        cfg = self.cfg
        if self.data is None:
            try:
                self.data = monitor_data(cfg, cfg.training.seed)
            except (FileNotFoundError, ValueError) as e:
                log.warning("k-NN monitor disabled: %s", e)
                self.data = False
        if self.data is False:
            return None
        train, test, (train_idx, test_idx) = self.data
        t0 = time.time()
        transform = eval_transform(cfg)
        encoder = model.target_encoder if cfg.eval.encoder == "target" else model.context_encoder
        feats = [extract_features(encoder, ds, transform, cfg.eval.features, cfg.data.batch_size, self.device, idx,
                                  amp_dtype=self.amp_dtype) for ds, idx in ((train, train_idx), (test, test_idx))]
        acc = knn_accuracy(feats[0][0], feats[0][1], feats[1][0], feats[1][1], train.num_classes, cfg.eval.knn_k,
                           cfg.eval.knn_temperature)
        log.info("k-NN monitor after epoch %d: top-1 %.2f %% (%d train / %d test images, %.1fs)", epoch, 100 * acc,
                 len(train_idx), len(test_idx), time.time() - t0)
        return acc
