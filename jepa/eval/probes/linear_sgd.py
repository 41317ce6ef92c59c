"""The streamed linear probe (``--protocol linear-sgd``): mini-batch SGD on features computed batch by batch.

Unlike the L-BFGS probe it never holds the features of a split, only those of the current batch, so it
scales to datasets whose features do not fit in memory; with ``probe.sgd_augment`` every epoch sees newly
augmented training images. Protocol (``ProbeConfig``): one pass for the train features' mean and std, then
``sgd_epochs`` epochs of SGD (momentum ``sgd_momentum``, peak ``sgd_lr`` cosine-decayed to 0 over all steps,
weight decay ``sgd_weight_decay`` on the weights only) of a zero-initialised linear softmax classifier on the
standardised features, batch ``batch_size`` in a seeded order; top-1 on the test split.
"""
from __future__ import annotations

import torch

from jepa.eval.probes.data import batches, labelled_indices, steps_per_epoch, train_head
from jepa.schedules import Schedules


@torch.no_grad()
def feature_moments(feature_fn, data) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std (float32) of ``feature_fn`` over the batches of ``data``; a constant feature gets std 1."""
    s1 = s2 = None
    n = 0
    for x, _ in data:
        f = feature_fn(x).double()
        s1 = f.sum(0) if s1 is None else s1 + f.sum(0)
        s2 = (f * f).sum(0) if s2 is None else s2 + (f * f).sum(0)
        n += f.shape[0]
    mean = s1 / n
    std = ((s2 / n - mean * mean).clamp_min(0) * n / max(n - 1, 1)).sqrt()
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return mean.float(), std.float()


def accuracy(predict, data) -> float:
    """Top-1 of ``predict(x) -> logits`` over the batches of ``data``."""
    correct = total = 0
    with torch.no_grad():
        for x, y in data:
            correct += int(predict(x).argmax(1).eq(y).sum())
            total += y.numel()
    return correct / max(total, 1)


def linear_sgd_probe(feature_fn, train, test, transform, num_classes: int, settings, device="cpu", augment=None,
                     progress: bool = False) -> float:
    """Top-1 on ``test`` of the SGD linear probe on ``feature_fn(x) -> [B, F]`` features (see the module doc).

    ``augment``: the training ``BatchAugment``, used when ``settings.sgd_augment`` is true.
    """
    s, bs = settings, settings.batch_size
    train_idx, test_idx = labelled_indices(train), labelled_indices(test)
    mean, std = feature_moments(feature_fn, batches(train, transform, bs, train_idx, device))
    mean, std = mean.to(device), std.to(device)
    head = torch.nn.Linear(mean.numel(), num_classes).to(device)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    groups = [{"params": [head.weight], "apply_wd": True, "weight_decay": s.sgd_weight_decay},
              {"params": [head.bias], "apply_wd": False, "weight_decay": 0.0}]
    opt = torch.optim.SGD(groups, lr=s.sgd_lr, momentum=s.sgd_momentum)
    total = s.sgd_epochs * steps_per_epoch(len(train_idx), bs)
    sched = Schedules(total, 0, s.sgd_lr, s.sgd_lr, 0.0, s.sgd_weight_decay, s.sgd_weight_decay)
    train_head(head, lambda x: (feature_fn(x).float() - mean) / std,
               lambda epoch: batches(train, transform, bs, train_idx, device, s.seed, epoch,
                                     augment if s.sgd_augment else None), s.sgd_epochs, opt, sched, progress)
    return accuracy(lambda x: head((feature_fn(x).float() - mean) / std),
                    batches(test, transform, bs, test_idx, device))
