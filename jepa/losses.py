"""Losses of SPEC §3.4, §5 and §6: feature prediction, hierarchical pooling levels, VICReg."""
from __future__ import annotations

import torch
import torch.nn.functional as F

import kernels

LN_EPS = 1e-6  # the fused loss kernel's layer-norm eps; every target path uses it so levels agree


def expand_targets(tgt_idx: torch.Tensor, n_context_masks: int) -> torch.Tensor:
    """Repeat each target mask once per context mask, matching the predictor's (m, e, b) row order."""
    return tgt_idx if n_context_masks == 1 else tgt_idx.repeat_interleave(n_context_masks, dim=0)


def prediction_loss(pred, target, tgt_idx, kind: str = "mse", beta: float = 1.0,
                    normalize_targets: bool = True, normalize_embeddings: bool = False):
    """Mean loss between predictions ``[R, K, D]`` and the target features at ``tgt_idx``.

    The default path is the fused kernel: target rows are gathered and layer-normed on the fly.
    """
    if not normalize_embeddings:
        return kernels.masked_target_loss(pred, target, tgt_idx, kind=kind, beta=beta, normalize=normalize_targets,
                                          eps=LN_EPS)
    return elementwise_loss(pred, gather_targets(target, tgt_idx, normalize_targets), kind, beta, normalize=True)


def gather_targets(target, tgt_idx, normalize: bool = True):
    """Target features ``[R, K, D]`` at ``tgt_idx``, layer-normed without affine (rows only, never all of ``target``)."""
    tgt = kernels.masked_gather(target, tgt_idx).float()
    return F.layer_norm(tgt, tgt.shape[-1:], eps=LN_EPS) if normalize else tgt


def elementwise_loss(pred, tgt, kind: str, beta: float = 1.0, normalize: bool = False):
    """Mean loss between ``pred`` and ``tgt``; ``normalize`` compares their L2-normalised features instead."""
    if normalize:
        pred, tgt = F.normalize(pred.float(), dim=-1), F.normalize(tgt, dim=-1)
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred.float(), tgt, beta=beta)
    return F.mse_loss(pred.float(), tgt)


def pool_blocks(x: torch.Tensor, block_hw: tuple[int, int], factor: int) -> torch.Tensor:
    """Average-pool ``[R, bh·bw, D]`` tokens of row-major rectangular blocks over ``factor×factor`` windows.

    Ceil mode: partial windows at the right and bottom edges average the tokens they hold.
    """
    if factor == 1:
        return x
    bh, bw = block_hw
    R, K, D = x.shape
    if K != bh * bw:
        raise ValueError(f"a block of {K} tokens is not {bh}x{bw}")
    grid = x.transpose(1, 2).reshape(R, D, bh, bw)
    pooled = F.avg_pool2d(grid, factor, stride=factor, ceil_mode=True, count_include_pad=False)
    return pooled.flatten(2).transpose(1, 2)


def vicreg_terms(z: torch.Tensor, eps: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """Variance hinge (std ≥ 1 per dim) and off-diagonal covariance penalty of ``z`` ``[B, D]``."""
    z = z.float()
    z = z - z.mean(dim=0)
    std = torch.sqrt(z.var(dim=0) + eps)
    variance = F.relu(1.0 - std).mean()
    B, D = z.shape
    cov = (z.T @ z) / max(1, B - 1)
    off = cov - torch.diag(torch.diag(cov))
    covariance = off.pow(2).sum() / D
    return variance, covariance


def vicreg_loss(z: torch.Tensor, target: torch.Tensor, n_context_masks: int = 1, var_weight: float = 25.0,
                cov_weight: float = 25.0, inv_weight: float = 1.0) -> torch.Tensor:
    """Weighted VICReg terms on the context encoder's mean-pooled embeddings ``z`` ``[E·B, Kc, D]`` (SPEC §6).

    The invariance term compares each pooled embedding with the mean layer-normed target features ``[B, N, D]``
    of the same image; ``inv_weight = 0`` drops it.
    """
    pooled = z.float().mean(dim=1)
    variance, covariance = vicreg_terms(pooled)
    reg = var_weight * variance + cov_weight * covariance
    if inv_weight:
        ref = F.layer_norm(target.detach().float(), target.shape[-1:], eps=LN_EPS).mean(dim=1)
        reg = reg + inv_weight * F.mse_loss(pooled, ref.repeat(n_context_masks, 1))
    return reg
