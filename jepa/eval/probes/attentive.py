"""The attentive probe (``--protocol attentive``): learned queries pool the frozen patch tokens, then a linear head.

The V-JEPA evaluation style: the encoder stays frozen and its tokens are computed batch by batch; only the
pooling and the head learn. Protocol (``ProbeConfig``): the encoder's output tokens are standardised per
channel with the mean and std over all train tokens (one streamed pass: JEPA features carry a large
component shared by all images, which would otherwise swamp what tells them apart, as for the linear
probes); ``attentive_queries`` learned queries attend over them in one cross-attention block (LayerNorm on
the tokens, multi-head attention with ``attentive_heads`` heads, residual; LayerNorm, GELU MLP of width 4·D,
residual); the queries' outputs are averaged, layer-normed and fed to a linear classifier. AdamW (betas
0.9/0.999, weight decay ``attentive_weight_decay`` on weights only), linear warm-up from 0 over
``attentive_warmup_epochs`` to ``attentive_lr``, cosine to 0, ``attentive_epochs`` epochs of batch
``batch_size`` in a seeded order, no augmentation; top-1 on the test split after the last epoch.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from jepa.eval.probes.data import batches, labelled_indices, steps_per_epoch, train_head
from jepa.eval.probes.linear_sgd import accuracy, feature_moments
from jepa.schedules import Schedules


class AttentivePooler(nn.Module):
    """``queries`` learned vectors that attend over tokens ``[B, N, D]``; returns ``[B, queries, D]``."""

    def __init__(self, dim: int, heads: int, queries: int = 1, mlp_ratio: float = 4.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attentive probe: {heads} heads do not divide the token width {dim}")
        self.heads = heads
        self.query = nn.Parameter(torch.zeros(1, queries, dim))
        self.norm_tokens = nn.LayerNorm(dim, eps=1e-6)
        self.q, self.kv, self.proj = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)
        self.norm_mlp = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(), nn.Linear(int(dim * mlp_ratio), dim))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.query, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, n, d = tokens.shape
        h = self.heads
        kv = self.kv(self.norm_tokens(tokens)).view(b, n, 2, h, d // h).permute(2, 0, 3, 1, 4)
        q = self.q(self.query).expand(b, -1, -1)
        q_heads = q.view(b, -1, h, d // h).transpose(1, 2)
        out = F.scaled_dot_product_attention(q_heads, kv[0], kv[1]).transpose(1, 2).reshape(b, -1, d)
        x = self.query + self.proj(out)
        return x + self.mlp(self.norm_mlp(x))


class AttentiveClassifier(nn.Module):
    """Pooler, mean over the queries, LayerNorm, linear head: tokens ``[B, N, D]`` to logits ``[B, classes]``."""

    def __init__(self, dim: int, num_classes: int, heads: int, queries: int = 1):
        super().__init__()
        self.pooler = AttentivePooler(dim, heads, queries)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.pooler(tokens).mean(dim=1)))


def attentive_probe(token_fn, dim: int, heads: int, train, test, transform, num_classes: int, settings,
                    device="cpu", progress: bool = False) -> float:
    """Top-1 on ``test`` of an attentive probe trained on ``token_fn(x) -> [B, N, dim]`` (see the module doc)."""
    s, bs = settings, settings.batch_size
    train_idx, test_idx = labelled_indices(train), labelled_indices(test)
    mean, std = feature_moments(lambda x: token_fn(x).flatten(0, 1), batches(train, transform, bs, train_idx, device))
    mean, std = mean.to(device), std.to(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s.seed)
        probe = AttentiveClassifier(dim, num_classes, heads, s.attentive_queries).to(device)
    decay = [p for p in probe.parameters() if p.ndim > 1]
    no_decay = [p for p in probe.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "apply_wd": True, "weight_decay": s.attentive_weight_decay},
                             {"params": no_decay, "apply_wd": False, "weight_decay": 0.0}], lr=s.attentive_lr)
    per_epoch = steps_per_epoch(len(train_idx), bs)
    total = s.attentive_epochs * per_epoch
    sched = Schedules(total, int(round(s.attentive_warmup_epochs * per_epoch)), s.attentive_lr, 0.0, 0.0,
                      s.attentive_weight_decay, s.attentive_weight_decay)
    train_head(probe, lambda x: (token_fn(x).float() - mean) / std,
               lambda epoch: batches(train, transform, bs, train_idx, device, s.seed, epoch), s.attentive_epochs, opt,
               sched, progress)
    probe.eval()
    return accuracy(lambda x: probe((token_fn(x).float() - mean) / std), batches(test, transform, bs, test_idx, device))
