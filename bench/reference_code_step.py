"""The training step the way the public I-JEPA reference code runs it, on this project's model and data.

``bench/throughput.py --reference`` times it so the table shows what the project's path
gains.  Written from reading the reference (facebookresearch/ijepa), not copied.  Same
math as ``Trainer.train_step``; what differs is how it is computed:

* masks: one ``torch.gather`` per mask with an index materialised over the feature dim, then ``cat``;
* predictor positions: the table repeated over the batch before gathering, per-mask ``cat`` again;
* targets: ``layer_norm`` of the whole ``[B, N, D]`` target, then gathered;
* attention: explicit ``softmax(q kᵀ · scale) v`` with ``q, k, v = qkv[0], qkv[1], qkv[2]``;
* the token layout of the reference patch embedding (``[B, D, N]`` transposed, not made contiguous);
* optimizer: ``torch.optim.AdamW`` with its default implementation;
* EMA: a Python loop of ``mul_`` / ``add_`` per parameter.

Data loading and mask sampling are the project's (the reference sampler is slower still), so
the gain shown is a lower bound.  Pure I-JEPA only (one level, ``mse`` or ``smooth_l1``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.profiler import record_function


def apply_masks(x: torch.Tensor, masks: list[torch.Tensor]) -> torch.Tensor:
    """Rows of ``x`` ``[B, N, D]`` at each ``[B, K]`` mask, stacked mask-major: ``[len(masks)·B, K, D]``."""
    parts = []
    for m in masks:
        index = m.unsqueeze(-1).repeat(1, 1, x.size(-1))
        parts.append(torch.gather(x, 1, index))
    return torch.cat(parts, dim=0)


def repeat_interleave_batch(x: torch.Tensor, batch: int, repeat: int) -> torch.Tensor:
    """Repeat each consecutive chunk of ``batch`` rows ``repeat`` times (mask-major order kept)."""
    chunks = [x[i * batch:(i + 1) * batch] for i in range(len(x) // batch)]
    return torch.cat([torch.cat([c] * repeat, dim=0) for c in chunks], dim=0)


def ema_update(target_params, online_params, m: float) -> None:
    """The reference EMA: a Python loop of ``mul_`` / ``add_`` per parameter."""
    with torch.no_grad():
        for t, o in zip(target_params, online_params):
            t.mul_(m).add_((1.0 - m) * o)


def attention(attn, x: torch.Tensor) -> torch.Tensor:
    B, N, C = x.shape
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, C // attn.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    scores = (q @ k.transpose(-2, -1)) * (C // attn.num_heads) ** -0.5
    out = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(B, N, C)
    return attn.proj(out)


def block(blk, x: torch.Tensor) -> torch.Tensor:
    x = x + attention(blk.attn, blk.norm1(x))
    return x + blk.mlp.fc2(F.gelu(blk.mlp.fc1(blk.norm2(x))))


def encoder(enc, images: torch.Tensor, masks: list[torch.Tensor] | None = None) -> torch.Tensor:
    x = enc.patch_embed(images).flatten(2).transpose(1, 2)
    x = x + enc.pos_embed
    if masks is not None:
        x = apply_masks(x, masks)
    for blk in enc.blocks:
        x = block(blk, x)
    return enc.norm(x)


def predictor(pred, x: torch.Tensor, masks_x: list[torch.Tensor], masks: list[torch.Tensor]) -> torch.Tensor:
    batch = len(x) // len(masks_x)
    x = pred.embed(x)
    x = x + apply_masks(pred.pos_embed.repeat(batch, 1, 1), masks_x)
    n_ctx = x.shape[1]
    pos = apply_masks(pred.pos_embed.repeat(batch, 1, 1), masks)
    pos = repeat_interleave_batch(pos, batch, repeat=len(masks_x))
    tokens = pred.mask_token.repeat(pos.size(0), pos.size(1), 1) + pos
    x = torch.cat([x.repeat(len(masks), 1, 1), tokens], dim=1)
    for blk in pred.blocks:
        x = block(blk, x)
    x = pred.norm(x)[:, n_ctx:]
    return pred.proj(x)


def forward_loss(model, batch, kind: str = "mse", beta: float = 1.0) -> torch.Tensor:
    """The reference forward of one batch: targets, context, predictor, loss."""
    masks_enc, masks_pred = list(batch.ctx_idx.unbind(0)), list(batch.tgt_idx.unbind(0))
    B = batch.images.shape[0]
    with record_function("target_forward"), torch.no_grad():
        h = encoder(model.target_encoder, batch.images)
        h = F.layer_norm(h, (h.size(-1),))
        h = repeat_interleave_batch(apply_masks(h, masks_pred), B, repeat=len(masks_enc))
    with record_function("context_forward"):
        z = encoder(model.context_encoder, batch.images, masks_enc)
        z = predictor(model.predictor, z, masks_enc, masks_pred)
    with record_function("loss"):
        if kind == "smooth_l1":
            return F.smooth_l1_loss(z, h, beta=beta)
        return F.mse_loss(z, h)


class ReferenceStep:
    """``train_step(micro_batches)`` as in the reference code, updating ``trainer.model`` in place."""

    def __init__(self, trainer):
        cfg = trainer.cfg
        problems = []
        if cfg.model.num_hierarchies != 1:
            problems.append(f"model.num_hierarchies={cfg.model.num_hierarchies} (must be 1)")
        if cfg.loss.type not in ("mse", "smooth_l1") or cfg.loss.normalize_embeddings \
                or not cfg.loss.normalize_targets:
            problems.append(f"loss.type={cfg.loss.type} (must be mse or smooth_l1 with normalize_targets: true, "
                            "normalize_embeddings: false)")
        if cfg.model.predictor_shared_context:
            problems.append("model.predictor_shared_context=true (the reference has one pass per target block)")
        if trainer.dist.enabled:
            problems.append("a distributed run (the reference step is timed on one process)")
        if problems:
            raise ValueError("--reference runs the reference I-JEPA step, which has no equivalent for "
                             + "; ".join(problems))
        self.trainer = trainer
        model = trainer.model
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            if p.requires_grad and not name.startswith("target_encoder."):
                (no_decay if p.ndim == 1 or "bias" in name else decay).append(p)
        o = cfg.optim
        self.optimizer = torch.optim.AdamW([{"params": decay, "apply_wd": True},
                                            {"params": no_decay, "apply_wd": False, "weight_decay": 0.0}],
                                           lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)

    def train_step(self, micro_batches) -> torch.Tensor:
        t = self.trainer
        lr, wd = t.schedules.lr_at(t.step), t.schedules.wd_at(t.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            if group["apply_wd"]:
                group["weight_decay"] = wd
        total = torch.zeros((), device=t.device)
        for batch in micro_batches:
            with torch.autocast(t.device.type, dtype=t.amp_dtype, enabled=t.amp_dtype != torch.float32):
                loss = forward_loss(t.model, batch, t.cfg.loss.type, t.cfg.loss.beta)
            with record_function("backward"):
                t.scaler.scale(loss / len(micro_batches)).backward()
            total += loss.detach().float() / len(micro_batches)
        with record_function("optimizer"):
            t.scaler.step(self.optimizer)
            t.scaler.update()
            self.optimizer.zero_grad()
        t.step += 1
        m = t.schedules.momentum_at(t.step)
        with record_function("ema"):
            ema_update(t.model.target_encoder.parameters(), t.model.context_encoder.parameters(), m)
        return total
