"""Two numbers that fall when the representation collapses: RankMe and the batch std of the target embeddings."""
from __future__ import annotations

import torch


def target_std(h: torch.Tensor) -> torch.Tensor:
    """Mean over dimensions of the batch std of the token-mean target embeddings: falls towards 0 on collapse."""
    return h.detach().float().mean(dim=1).std(dim=0).mean()


def rankme(z: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Effective rank of embeddings ``z [n, d]`` (RankMe, Garrido et al. 2023): the exponential of the entropy of
    the singular values normalised to sum 1; from 1 (one direction) to min(n, d) (all directions equally)."""
    s = torch.linalg.svdvals(z.detach().float())
    p = s / s.sum().clamp_min(1e-30) + eps
    return torch.exp(-(p * p.log()).sum())
