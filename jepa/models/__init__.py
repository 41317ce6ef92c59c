"""Model construction: context encoder, target encoder (an EMA copy, or the context encoder itself), predictor
and per-level heads."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from jepa.config.choices import (MODEL_SIZES, CompileMode, EncoderName, ModelSize, Pooling,  # noqa: F401 (re-exported)
                                 TargetEncoder)
from jepa.losses import pool_blocks
from jepa.models.attention import resolve_backend
from jepa.models.vit import DropPath, Predictor, VisionTransformer


class JEPA(nn.Module):
    """The trainable parts (context encoder, predictor, level heads) plus the target encoder.

    With ``targets="ema"`` the target encoder is a copy whose parameters never require grad and are only
    changed by ``ema_update_``; with ``"online"`` no copy is held and ``target_encoder`` is the context encoder.
    ``level_heads`` is empty for one level, so pure I-JEPA has no extra parameters.
    """

    def __init__(self, encoder: VisionTransformer, predictor: Predictor, num_hierarchies: int = 1,
                 targets: TargetEncoder = "ema"):
        super().__init__()
        self.has_ema = targets == "ema"
        self.context_encoder = encoder
        self.predictor = predictor
        dim = encoder.embed_dim
        self.level_heads = nn.ModuleList(nn.Linear(dim, dim) for _ in range(num_hierarchies - 1))
        for head in self.level_heads:
            nn.init.trunc_normal_(head.weight, std=0.02)
            nn.init.zeros_(head.bias)
        if self.has_ema:  # registered under "target_encoder" (nn.Module's assignment bypasses the property)
            self.target_encoder = copy.deepcopy(encoder)
            for p in self.target_encoder.parameters():
                p.requires_grad_(False)
            for m in self.target_encoder.modules():  # its features are the regression targets: never drop paths
                if isinstance(m, DropPath):
                    m.p = 0.0

    @property
    def target_encoder(self) -> VisionTransformer:
        """The encoder the targets come from: the EMA copy, or with online targets the context encoder itself."""
        return self._modules["target_encoder"] if self.has_ema else self.context_encoder

    def forward(self, images, ctx_idx, tgt_idx, block_hw):
        """Context branch and predictions per level: ``(z [E·B, Kc, D], [pred level 0, level 1, ...])``."""
        z = self.context_encoder(images, ctx_idx)
        pred = self.predictor(z, ctx_idx, tgt_idx)
        preds = [pred] + [head(pool_blocks(pred, block_hw, 2 ** (level + 1)))
                          for level, head in enumerate(self.level_heads)]
        return z, preds

    def online_parameters(self):
        """Parameters the optimizer updates (everything except the target encoder)."""
        return [p for n, p in self.named_parameters() if not n.startswith("target_encoder.")]


def encoder_spec(cfg) -> dict:
    """Constructor arguments of the encoder ``cfg`` describes (what an export stores to rebuild it)."""
    m, d = cfg.model, cfg.data
    spec = {"img_size": d.image_size, "patch_size": m.patch_size, "in_chans": d.channels,
            "embed_dim": m.embed_dim, "depth": m.depth, "num_heads": m.num_heads, "mlp_ratio": m.mlp_ratio}
    if m.layer_scale is not None:  # adds parameters; drop path and checkpointing only change training
        spec["layer_scale"] = m.layer_scale
    return spec


def build_encoder(cfg, attention_backend: str = "sdpa") -> VisionTransformer:
    m = cfg.model
    return VisionTransformer(**encoder_spec(cfg), attention=attention_backend, drop_path=m.drop_path,
                             grad_checkpointing=m.grad_checkpointing)


def build_model(cfg, device: torch.device | str = "cpu") -> JEPA:
    """Build the full JEPA model for ``cfg`` with the attention backend resolved for ``device``."""
    backend = resolve_backend(cfg.model.attention, device)
    m = cfg.model
    encoder = build_encoder(cfg, backend)
    predictor = Predictor(encoder.grid, m.embed_dim, m.pred_dim, m.pred_depth, m.pred_heads, m.mlp_ratio,
                          backend, shared_context=m.predictor_shared_context, drop_path=m.drop_path,
                          layer_scale=m.layer_scale, grad_checkpointing=m.grad_checkpointing)
    return JEPA(encoder, predictor, m.num_hierarchies, m.target_encoder).to(device)


def pool_tokens(encoder, x: torch.Tensor, features: Pooling = "mean") -> torch.Tensor:
    """``[B, D]`` token-mean of the encoder output, or ``[B, k·D]`` for the last ``k = min(4, depth)`` blocks."""
    if features == "mean":
        return encoder(x).mean(dim=1)
    if features == "last4":
        n = min(4, len(encoder.blocks))
        _, blocks = encoder(x, return_block_outputs=n)
        return torch.cat([encoder.norm(b).mean(dim=1) for b in blocks], dim=1)
    raise ValueError(f"features must be one of {', '.join(Pooling.__args__)}, got {features!r}")


def compile_model(model: JEPA, mode: bool | str = True):
    """``torch.compile`` in place: the online forward as one graph (symbolic token counts), the target encoder apart.

    ``mode`` is ``training.compile``: true or ``max-autotune``.
    """
    mode = "max-autotune" if mode == "max-autotune" else None
    model.compile(mode=mode)
    model.target_encoder.compile(mode=mode)


def mark_token_counts_dynamic(batch):
    """Compile the context/target token counts as symbolic sizes: they change every batch.

    Static shapes would need one fixed token count per config (every context mask cut to the smallest
    count the config allows) and measured only 2-4 % faster per step (bench_fmnist_tiny, inductor, CPU),
    so the sizes stay dynamic: one graph, no recompiles. H-JEPA pooling specialises on the block shape.
    """
    for idx in (batch.ctx_idx, batch.tgt_idx):  # torch's documented dynamic-shape hint (no public alias yet)
        torch._dynamo.maybe_mark_dynamic(idx, idx.dim() - 1)
