"""The training objective: feature prediction per hierarchy level, plus optional VICReg and SIGReg terms.

The step (``jepa.train.Trainer.train_step``) computes level 0 itself with the fused kernel
``jepa_kernels.masked_target_loss``; ``level_losses`` adds the coarser H-JEPA levels, ``vicreg_loss``
the VICReg term of ``loss.type: combined`` and ``sigreg_loss`` the SIGReg term of ``loss.sigreg_weight``
(docs/algorithm.md, "Loss" and "SIGReg").
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import jepa_kernels
from jepa.sigreg import null_value, sigreg

LN_EPS = 1e-6  # the fused loss kernel's layer-norm eps; every target path uses it so levels agree


def prediction_kind(cfg) -> str:
    """The prediction loss of the ``loss`` section: ``mse`` or ``smooth_l1`` (``combined`` names it in ``base``)."""
    return cfg.base if cfg.type == "combined" else cfg.type


def level_losses(level0, preds, h, tgt_idx, block_hw, cfg) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted sum of the prediction losses of every level, and each level's loss when there are several.

    ``level0`` is the fused kernel's level-0 loss (None with ``normalize_embeddings``: computed here). Coarser
    levels gather the layer-normed target rows once and average-pool them over 2^l x 2^l windows of each block.
    """
    parts, loss, targets = {}, None, None
    for level, (pred, weight) in enumerate(zip(preds, cfg.level_weights)):
        if level == 0 and level0 is not None:
            term = level0
        else:
            if targets is None:
                targets = gather_targets(h, tgt_idx, cfg.normalize_targets)
            term = elementwise_loss(pred, pool_blocks(targets, block_hw, 2 ** level), prediction_kind(cfg),
                                    cfg.beta, normalize=cfg.normalize_embeddings)
        if len(preds) > 1:
            parts[f"loss/level{level}"] = term.detach()
        loss = weight * term if loss is None else loss + weight * term
    return loss, parts


def normalize_targets(h: torch.Tensor) -> torch.Tensor:
    """The target normalisation: layer norm over the feature dimension, no affine (what the fused kernel applies)."""
    return F.layer_norm(h, h.shape[-1:], eps=LN_EPS)


def expand_targets(tgt_idx: torch.Tensor, n_context_masks: int) -> torch.Tensor:
    """Repeat each target mask once per context mask, matching the predictor's (m, e, b) row order."""
    return tgt_idx if n_context_masks == 1 else tgt_idx.repeat_interleave(n_context_masks, dim=0)


def gather_targets(target, tgt_idx, normalize: bool = True):
    """Target features ``[R, K, D]`` at ``tgt_idx``, layer-normed without affine (rows only, never all of ``target``)."""
    tgt = jepa_kernels.masked_gather(target, tgt_idx).float()
    return normalize_targets(tgt) if normalize else tgt


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
    """Weighted VICReg terms on the context encoder's mean-pooled embeddings ``z`` ``[E·B, Kc, D]``.

    The invariance term compares each pooled embedding with the mean layer-normed target features ``[B, N, D]``
    of the same image; ``inv_weight = 0`` drops it.
    """
    pooled = z.float().mean(dim=1)
    variance, covariance = vicreg_terms(pooled)
    reg = var_weight * variance + cov_weight * covariance
    if inv_weight:
        ref = normalize_targets(target.detach().float()).mean(dim=1)
        reg = reg + inv_weight * F.mse_loss(pooled, ref.repeat(n_context_masks, 1))
    return reg


def _sigreg_inputs(z: torch.Tensor, target: torch.Tensor, where: str) -> list[torch.Tensor]:
    """The embeddings ``loss.sigreg_on`` names: the context ``z``, the ``target``, or both."""
    return [x for name, x in (("context", z), ("target", target)) if where in (name, "both")]


def sigreg_loss(z: torch.Tensor, target: torch.Tensor, directions: torch.Tensor, where: str) -> torch.Tensor:
    """SIGReg of the per-image mean embeddings: of the context ``z`` ``[E·B, Kc, D]`` (the VICReg term's), of the
    target ``[B, N, D]``, or (``both``) the mean of the two terms."""
    terms = [sigreg(x.float().mean(dim=1), directions) for x in _sigreg_inputs(z, target, where)]
    return sum(terms) / len(terms)


def sigreg_floor(z: torch.Tensor, target: torch.Tensor, where: str, world_size: int = 1) -> float:
    """What ``sigreg_loss`` averages to on Gaussian embeddings of the global batch (``null_value``): its floor."""
    floors = [null_value(x.shape[0] * world_size) for x in _sigreg_inputs(z, target, where)]
    return sum(floors) / len(floors)
