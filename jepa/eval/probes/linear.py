"""The linear probe on cached features: a softmax classifier on standardised features, fitted by full-batch L-BFGS."""
from __future__ import annotations

import torch
import torch.nn.functional as F

LINEAR_PROBE = {"optimizer": "L-BFGS (full batch, strong Wolfe line search, history 20)", "max_iter": 300,
                "l2": 1e-4, "standardize": True}


def standardize(train_x: torch.Tensor, test_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale every feature to zero mean, unit std on the train split (constant features are only centred)."""
    mean = train_x.mean(0)
    std = train_x.std(0)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return (train_x - mean) / std, (test_x - mean) / std


def linear_probe(train_x, train_y, test_x, test_y, num_classes: int, max_iter: int = LINEAR_PROBE["max_iter"],
                 l2: float = LINEAR_PROBE["l2"]) -> float:
    """Top-1 on the test split of a softmax classifier on standardised features (see ``LINEAR_PROBE``).

    Minimises mean cross-entropy + ``l2 · ||W||²`` (bias not decayed) with full-batch
    L-BFGS from zero weights: deterministic, no learning rate or epochs to choose.
    """
    xs, xt = standardize(train_x.float(), test_x.float())
    w = torch.zeros(xs.shape[1], num_classes, requires_grad=True)
    b = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-6, tolerance_change=1e-9)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(xs @ w + b, train_y) + l2 * w.pow(2).sum()
        loss.backward()
        return loss
    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return (xt @ w + b).argmax(1).eq(test_y).float().mean().item()
