"""The training objective: feature prediction per hierarchy level, plus an optional VICReg term.

``JEPALoss`` is the whole objective of one step, built from the ``loss`` config section; the
functions below it are its named pieces (docs/algorithm.md, "Loss").
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import jepa_kernels
from jepa.config.choices import LossType, PredictionLoss

LN_EPS = 1e-6  # the fused loss kernel's layer-norm eps; every target path uses it so levels agree


class JEPALoss:
    """Loss of one micro-batch from the target features, the predictions per level and the context embeddings.

    Level 0 compares the predictions with the target blocks of ``normalize_targets(h)`` in one fused
    kernel (gather, layer norm and loss, nothing materialised); coarser levels gather those rows once
    and average-pool them over 2^l x 2^l windows of each block. ``loss.type: combined`` adds VICReg on
    the context embeddings. Reads ``cfg`` at each call, so it follows changes to the section.
    """

    def __init__(self, cfg):
        self.cfg = cfg  # the ``loss`` section of the run's config

    def __call__(self, h, preds, z, ctx_idx, tgt_idx, block_hw) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(loss, parts)``: ``h`` [B, N, D] target features, ``preds`` [E·M·B, K, D] per level, ``z`` [E·B, Kc, D]."""
        cfg = self.cfg
        kind = cfg.base if cfg.type == "combined" else cfg.type
        tgt_idx = expand_targets(tgt_idx, ctx_idx.shape[0])
        parts = {}
        loss, targets = None, None
        for level, (pred, weight) in enumerate(zip(preds, cfg.level_weights)):
            if level == 0 and not cfg.normalize_embeddings:
                term = prediction_loss(pred, h, tgt_idx, kind, cfg.beta, cfg.normalize_targets)
            else:
                if targets is None:
                    targets = gather_targets(h, tgt_idx, cfg.normalize_targets)
                term = elementwise_loss(pred, pool_blocks(targets, block_hw, 2 ** level), kind, cfg.beta,
                                        normalize=cfg.normalize_embeddings)
            if len(preds) > 1:
                parts[f"loss/level{level}"] = term.detach()
            loss = weight * term if loss is None else loss + weight * term
        if cfg.type == "combined":
            reg = vicreg_loss(z, h, ctx_idx.shape[0], cfg.vicreg_var_weight, cfg.vicreg_cov_weight,
                              cfg.vicreg_inv_weight)
            parts.update({"loss/prediction": loss.detach(), "loss/vicreg": reg.detach()})
            loss = loss + cfg.vicreg_weight * reg
        return loss, parts


def normalize_targets(h: torch.Tensor) -> torch.Tensor:
    """The target normalisation: layer norm over the feature dimension, no affine (what the fused kernel applies)."""
    return F.layer_norm(h, h.shape[-1:], eps=LN_EPS)


def expand_targets(tgt_idx: torch.Tensor, n_context_masks: int) -> torch.Tensor:
    """Repeat each target mask once per context mask, matching the predictor's (m, e, b) row order."""
    return tgt_idx if n_context_masks == 1 else tgt_idx.repeat_interleave(n_context_masks, dim=0)


def prediction_loss(pred, target, tgt_idx, kind: str = "mse", beta: float = 1.0, normalize_targets: bool = True):
    """Mean loss between predictions ``[R, K, D]`` and ``normalize_targets(target)`` at ``tgt_idx``, fused."""
    return jepa_kernels.masked_target_loss(pred, target, tgt_idx, kind=kind, beta=beta, normalize=normalize_targets,
                                      eps=LN_EPS)


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
