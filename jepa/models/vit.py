"""Pre-norm ViT encoder and the narrow JEPA predictor (docs/algorithm.md#images-to-patches, #predictor)."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.profiler import record_function
from torch.utils.checkpoint import checkpoint

import jepa_kernels
from jepa.config.grid import patch_grid
from jepa.models.attention import attention, prepare_backend
from jepa.models.pos_embed import sincos_2d


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, backend: str = "sdpa"):
        super().__init__()
        self.num_heads = num_heads
        self.backend = backend
        prepare_backend(backend, dim // num_heads)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, attn_mask=None, queries_from: int = 0):
        """Attention output for tokens ``queries_from:`` (default all); every token is a key and a value."""
        B, N, C = x.shape
        H, d = self.num_heads, C // self.num_heads
        if queries_from:
            w, b = self.qkv.weight, self.qkv.bias
            q = F.linear(x[:, queries_from:], w[:C], b[:C]).view(B, N - queries_from, H, d).transpose(1, 2)
            k, v = F.linear(x, w[C:], b[C:]).view(B, N, 2, H, d).permute(2, 0, 3, 1, 4).unbind(0)
            if attn_mask is not None:
                attn_mask = attn_mask[..., queries_from:, :]
        else:
            # unbind, not qkv[0..2]: its backward is one stack, where three selects each zero-fill a qkv-sized grad
            q, k, v = self.qkv(x).reshape(B, N, 3, H, d).permute(2, 0, 3, 1, 4).unbind(0)
        out = attention(q, k, v, self.backend, attn_mask)
        return self.proj(out.transpose(1, 2).reshape(B, N - queries_from, C))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth: in training each sample's branch output is dropped with probability ``p`` and the
    kept ones scaled by ``1/(1-p)``; identity in eval."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p:g}"


class LayerScale(nn.Module):
    """A learned per-channel scale of a residual branch, starting at ``init`` (a small value: the block starts
    close to the identity, which steadies deep models)."""

    def __init__(self, dim: int, init: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x):
        return x * self.gamma


class Block(nn.Module):
    """LayerNorm → MHSA → residual, LayerNorm → MLP(GELU) → residual; optional drop path and layer scale
    on both branches (off by default: then the block is exactly the plain one)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, backend: str = "sdpa",
                 drop_path: float = 0.0, layer_scale: float | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, backend)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLP(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.ls1 = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()
        self.ls2 = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()

    def forward(self, x, attn_mask=None, queries_from: int = 0):
        """``queries_from=s`` returns only tokens ``s:`` (the rest still act as keys and values): a last block
        whose earlier outputs are discarded skips their projection and MLP."""
        if queries_from:
            x = x[:, queries_from:] + self.drop_path(self.ls1(self.attn(self.norm1(x), attn_mask, queries_from)))
        else:
            x = x + self.drop_path(self.ls1(self.attn(self.norm1(x), attn_mask)))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


def drop_path_rates(rate: float, depth: int) -> list[float]:
    """Stochastic depth linear over depth: 0 for the first block up to ``rate`` for the last."""
    return [rate * i / max(1, depth - 1) for i in range(depth)]


def run_block(block: Block, x, *args, checkpointed: bool = False):
    """``block(x, *args)``; with ``checkpointed`` (and gradients on), its activations are recomputed in backward
    instead of kept: only the block's input stays in memory."""
    if checkpointed and torch.is_grad_enabled():
        return checkpoint(block, x, *args, use_reentrant=False)
    return block(x, *args)


def use_stored_pos_embed(module: nn.Module, table: torch.Tensor):
    """Replace ``module``'s computed sin-cos table by ``table`` (same shape), e.g. an imported checkpoint's.

    A stored table is part of the state dict from then on, so checkpoints and exports keep it.
    """
    if tuple(table.shape) != tuple(module.pos_embed.shape):
        raise ValueError(f"position table of shape {list(table.shape)} does not fit {list(module.pos_embed.shape)}")
    module.register_buffer("pos_embed", table.detach().to(module.pos_embed).clone(), persistent=True)


def _adopt_stored_pos_embed(module, state_dict, prefix, *args):
    """Load hook: a state dict that holds ``pos_embed`` (a stored table) makes the buffer persistent and loads it."""
    if prefix + "pos_embed" in state_dict:
        module.register_buffer("pos_embed", module.pos_embed, persistent=True)


def init_weights(module: nn.Module, blocks: nn.ModuleList):
    """Truncated-normal linears/convs, zero biases, unit LayerNorms, then the depth rescale.

    See docs/algorithm.md#initialisation.
    """
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


class VisionTransformer(nn.Module):
    """ViT encoder over patches with fixed sin-cos positions and no [cls] token.

    Imported weights may replace the computed position table by their own (``use_stored_pos_embed``).

    ``forward(x, idx)`` keeps only the tokens in ``idx`` (``[B, K]`` or ``[E, B, K]``,
    mask-major) BEFORE the blocks, so masked tokens cost nothing.
    """

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int, depth: int,
                 num_heads: int, mlp_ratio: float = 4.0, attention: str = "sdpa", drop_path: float = 0.0,
                 layer_scale: float | None = None, grad_checkpointing: bool = False):
        super().__init__()
        self.grid = patch_grid(img_size, patch_size)
        self.num_patches = self.grid[0] * self.grid[1]
        self.embed_dim = embed_dim
        self.grad_checkpointing = grad_checkpointing
        self.patch_embed = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.register_buffer("pos_embed", sincos_2d(embed_dim, *self.grid).unsqueeze(0), persistent=False)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, attention, rate, layer_scale)
                                    for rate in drop_path_rates(drop_path, depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        init_weights(self, self.blocks)
        self.register_load_state_dict_pre_hook(_adopt_stored_pos_embed)

    def embed(self, x):
        """Patch tokens plus positions: the residual stream, in the parameters' dtype — fp32 under autocast, where
        the conv yields bf16 and the fp32 ``pos_embed`` promotes the sum (a measured choice: docs/performance.md)."""
        # pos_embed first: the sum takes the layout of the contiguous operand, so the tokens come out
        # contiguous instead of in the conv's [B, D, N] layout (which cost a copy in every layer norm and linear)
        return self.pos_embed + self.patch_embed(x).flatten(2).transpose(1, 2)

    def forward(self, x, idx=None, return_block_outputs: int = 0):
        x = self.embed(x)
        if idx is not None:
            x = jepa_kernels.masked_gather(x, idx)
        outputs = []
        for i, block in enumerate(self.blocks):
            x = run_block(block, x, checkpointed=self.grad_checkpointing)
            if return_block_outputs and i >= len(self.blocks) - return_block_outputs:
                outputs.append(x)
        x = self.norm(x)
        if return_block_outputs:
            return x, outputs
        return x


class Predictor(nn.Module):
    """Narrow ViT that predicts target-block features from the context (docs/algorithm.md#predictor).

    ``forward(ctx, ctx_idx, tgt_idx)``: ``ctx`` ``[E·B, Kc, D]`` with ``ctx_idx``
    ``[E, B, Kc]``; ``tgt_idx`` ``[M, B, Kt]``. Returns ``[M·E·B, Kt, D]``, ordered
    (target mask, context mask, image), which is the order the loss expects.
    """

    def __init__(self, grid: tuple[int, int], embed_dim: int, pred_dim: int, depth: int, num_heads: int,
                 mlp_ratio: float = 4.0, attention: str = "sdpa", shared_context: bool = False,
                 drop_path: float = 0.0, layer_scale: float | None = None, grad_checkpointing: bool = False):
        super().__init__()
        self.shared_context = shared_context
        self.grad_checkpointing = grad_checkpointing
        self.embed = nn.Linear(embed_dim, pred_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, pred_dim))
        self.register_buffer("pos_embed", sincos_2d(pred_dim, *grid).unsqueeze(0), persistent=False)
        self.blocks = nn.ModuleList(Block(pred_dim, num_heads, mlp_ratio, attention, rate, layer_scale)
                                    for rate in drop_path_rates(drop_path, depth))
        self.norm = nn.LayerNorm(pred_dim, eps=1e-6)
        self.proj = nn.Linear(pred_dim, embed_dim)
        init_weights(self, self.blocks)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.register_load_state_dict_pre_hook(_adopt_stored_pos_embed)

    def forward(self, ctx, ctx_idx, tgt_idx):
        if torch.compiler.is_compiling():  # a compiled graph has no Python ranges; dynamo would warn
            return self._forward(ctx, ctx_idx, tgt_idx)
        with record_function("predictor"):
            return self._forward(ctx, ctx_idx, tgt_idx)

    def _forward(self, ctx, ctx_idx, tgt_idx):
        M, B, Kt = tgt_idx.shape
        E, _, Kc = ctx_idx.shape
        table = self.pos_embed[0]                                              # [N, P]
        x = self.embed(ctx) + F.embedding(ctx_idx, table).view(E * B, Kc, -1)  # [E·B, Kc, P]
        queries = self.mask_token + F.embedding(tgt_idx, table)                # [M, B, Kt, P]
        if self.shared_context:
            return self._forward_shared(x, queries, M, E, B, Kc, Kt)
        P = x.shape[-1]
        # one copy into [M, E·B, Kc + Kt, P]: context rows repeated per target mask, queries per context mask
        x = torch.cat([x.unsqueeze(0).expand(M, E * B, Kc, P),
                       queries.unsqueeze(1).expand(M, E, B, Kt, P).reshape(M, E * B, Kt, P)], dim=2)
        x = x.view(M * E * B, Kc + Kt, P)
        ckpt = self.grad_checkpointing
        for block in self.blocks[:-1]:
            x = run_block(block, x, checkpointed=ckpt)
        x = run_block(self.blocks[-1], x, None, Kc, checkpointed=ckpt)  # the context tokens' last outputs are unused
        return self.proj(self.norm(x))

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
        ckpt = self.grad_checkpointing
        for block in self.blocks[:-1]:
            x = run_block(block, x, mask, checkpointed=ckpt)
        x = run_block(self.blocks[-1], x, mask, Kc, checkpointed=ckpt)
        out = self.proj(self.norm(x))                                          # [E·B, M·Kt, D]
        D = out.shape[-1]
        return out.view(E, B, M, Kt, D).permute(2, 0, 1, 3, 4).reshape(M * E * B, Kt, D)
