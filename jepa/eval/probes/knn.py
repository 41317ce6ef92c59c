"""k-NN on cached features: temperature-weighted votes of the most cosine-similar train items."""
from __future__ import annotations

import torch
import torch.nn.functional as F

KNN = {"k": 20, "also_k": [10, 100], "temperature": 0.07, "similarity": "cosine"}


def knn_predict_many(train_x, train_y, test_x, num_classes: int, ks=(KNN["k"],),
                     temperature: float = KNN["temperature"], chunk: int = 1024) -> dict[int, torch.Tensor]:
    """Class predictions ``[T]`` for every k in ``ks`` from one neighbour search: votes of the ``k`` most
    cosine-similar train items, weighted ``exp(sim / t)``."""
    train_n = F.normalize(train_x.float(), dim=1)
    preds: dict[int, list] = {k: [] for k in ks}
    for start in range(0, test_x.shape[0], chunk):
        q = F.normalize(test_x[start:start + chunk].float(), dim=1)
        sims, nn_idx = (q @ train_n.T).topk(min(max(ks), train_n.shape[0]), dim=1)  # sorted, most similar first
        weights, labels = (sims.double() / temperature).exp(), train_y[nn_idx]
        for k in ks:
            votes = torch.zeros(q.shape[0], num_classes, dtype=torch.float64)
            votes.scatter_add_(1, labels[:, :k], weights[:, :k])
            preds[k].append(votes.argmax(1))
    return {k: torch.cat(p) for k, p in preds.items()}


def knn_predict(train_x, train_y, test_x, num_classes: int, k: int = KNN["k"],
                temperature: float = KNN["temperature"], chunk: int = 1024) -> torch.Tensor:
    """Class predictions ``[T]``: votes of the ``k`` most cosine-similar train items, weighted ``exp(sim / t)``."""
    return knn_predict_many(train_x, train_y, test_x, num_classes, (k,), temperature, chunk)[k]


def knn_accuracy(train_x, train_y, test_x, test_y, num_classes: int, k: int = KNN["k"],
                 temperature: float = KNN["temperature"]) -> float:
    """Top-1 of ``knn_predict`` on the test split."""
    return knn_predict(train_x, train_y, test_x, num_classes, k, temperature).eq(test_y).float().mean().item()
