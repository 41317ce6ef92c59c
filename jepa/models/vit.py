"""Pre-norm ViT encoder and the narrow JEPA predictor (SPEC §1, §3)."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import kernels
from jepa.models.attention import attention
from jepa.models.pos_embed import sincos_2d


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, backend: str = "sdpa"):
        super().__init__()
        self.num_heads = num_heads
        self.backend = backend
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, attn_mask=None):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        out = attention(qkv[0], qkv[1], qkv[2], self.backend, attn_mask)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """LayerNorm → MHSA → residual, LayerNorm → MLP(GELU) → residual."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, backend: str = "sdpa"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, backend)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x, attn_mask=None):
        x = x + self.attn(self.norm1(x), attn_mask)
        return x + self.mlp(self.norm2(x))


def init_weights(module: nn.Module, blocks: nn.ModuleList):
    """Truncated-normal linears/convs, zero biases, unit LayerNorms, then the depth rescale of SPEC §1."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    with torch.no_grad():
        for layer, block in enumerate(blocks, start=1):
            block.attn.proj.weight.div_(math.sqrt(2.0 * layer))
            block.mlp.fc2.weight.div_(math.sqrt(2.0 * layer))


def set_attention_backend(module: nn.Module, backend: str):
    for m in module.modules():
        if isinstance(m, Attention):
            m.backend = backend


class VisionTransformer(nn.Module):
    """ViT encoder over patches with fixed sin-cos positions and no [cls] token.

    ``forward(x, idx)`` keeps only the tokens in ``idx`` (``[B, K]`` or ``[E, B, K]``,
    mask-major) BEFORE the blocks, so masked tokens cost nothing.
    """

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int, depth: int,
                 num_heads: int, mlp_ratio: float = 4.0, attention: str = "sdpa"):
        super().__init__()
        self.grid = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid[0] * self.grid[1]
        self.embed_dim = embed_dim
        self.patch_embed = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.register_buffer("pos_embed", sincos_2d(embed_dim, *self.grid).unsqueeze(0), persistent=False)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, attention) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        init_weights(self, self.blocks)

    def embed(self, x):
        return self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed

    def forward(self, x, idx=None, return_block_outputs: int = 0):
        x = self.embed(x)
        if idx is not None:
            x = kernels.masked_gather(x, idx)
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if return_block_outputs and i >= len(self.blocks) - return_block_outputs:
                outputs.append(x)
        x = self.norm(x)
        if return_block_outputs:
            return x, outputs
        return x


class Predictor(nn.Module):
    """Narrow ViT that predicts target-block features from the context (SPEC §3.3).

    ``forward(ctx, ctx_idx, tgt_idx)``: ``ctx`` ``[E·B, Kc, D]`` with ``ctx_idx``
    ``[E, B, Kc]``; ``tgt_idx`` ``[M, B, Kt]``. Returns ``[M·E·B, Kt, D]``, ordered
    (target mask, context mask, image), which is the order the loss expects.
    """

    def __init__(self, grid: tuple[int, int], embed_dim: int, pred_dim: int, depth: int, num_heads: int,
                 mlp_ratio: float = 4.0, attention: str = "sdpa", shared_context: bool = False):
        super().__init__()
        self.shared_context = shared_context
        self.embed = nn.Linear(embed_dim, pred_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, pred_dim))
        self.register_buffer("pos_embed", sincos_2d(pred_dim, *grid).unsqueeze(0), persistent=False)
        self.blocks = nn.ModuleList(Block(pred_dim, num_heads, mlp_ratio, attention) for _ in range(depth))
        self.norm = nn.LayerNorm(pred_dim, eps=1e-6)
        self.proj = nn.Linear(pred_dim, embed_dim)
        init_weights(self, self.blocks)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(self, ctx, ctx_idx, tgt_idx):
        M, B, Kt = tgt_idx.shape
        E = ctx_idx.shape[0]
        Kc = ctx.shape[1]
        pos = self.pos_embed.expand(B, -1, -1)
        x = self.embed(ctx) + kernels.masked_gather(pos, ctx_idx)            # [E·B, Kc, P]
        tgt_pos = kernels.masked_gather(pos, tgt_idx)                          # [M·B, Kt, P]
        queries = self.mask_token + tgt_pos
        if self.shared_context:
            return self._forward_shared(x, queries, M, E, B, Kc, Kt)
        x = x.repeat(M, 1, 1)                                                  # [M·E·B, Kc, P]
        queries = queries.view(M, 1, B, Kt, -1).expand(M, E, B, Kt, -1).reshape(M * E * B, Kt, -1)
        x = torch.cat([x, queries], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.proj(self.norm(x[:, Kc:]))

    def _forward_shared(self, x, queries, M, E, B, Kc, Kt):
        """One pass over ``[context ; all M blocks' queries]`` with a block-diagonal mask (opt-in)."""
        P = x.shape[-1]
        queries = queries.view(M, B, Kt, P).permute(1, 0, 2, 3).reshape(B, M * Kt, P)
        queries = queries.repeat(E, 1, 1)                                      # [E·B, M·Kt, P]
        x = torch.cat([x, queries], dim=1)
        group = torch.cat([torch.full((Kc,), -1, device=x.device),
                           torch.arange(M, device=x.device).repeat_interleave(Kt)])
        is_ctx_key = (group == -1).unsqueeze(0)
        mask = is_ctx_key | (group.unsqueeze(1) == group.unsqueeze(0))
        mask[:Kc] = is_ctx_key                                                 # context sees only context
        for block in self.blocks:
            x = block(x, mask)
        out = self.proj(self.norm(x[:, Kc:]))                                  # [E·B, M·Kt, D]
        D = out.shape[-1]
        return out.view(E, B, M, Kt, D).permute(2, 0, 1, 3, 4).reshape(M * E * B, Kt, D)
