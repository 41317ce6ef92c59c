"""Multi-block mask sampler for I-JEPA (docs/algorithm.md#multi-block-masks), vectorised over the batch.

Design (each point differs from, or pins down, the reference sampler):

* Block size: one uniform ``u`` per batch and per kind (one for the targets,
  one for the context) sets both ``scale = lo + u·(hi − lo)`` and the aspect
  ratio ``ar = lo + u·(hi − lo)`` (linear, same ``u``: the reference's
  correlation, so small targets are wide and large ones tall).  Then
  ``keep = int(N·scale)``, ``bh = round(√(keep·ar))``, ``bw = round(√(keep/ar))``.
  The context block has aspect ratio 1.
* Bounds: blocks are clamped to ``1 ≤ bh ≤ h``, ``1 ≤ bw ≤ w`` (a block may
  span the whole grid) and the top-left corner is drawn uniformly from
  ``[0, h − bh] × [0, w − bw]`` with an INCLUSIVE upper bound, so every patch
  is reachable by both kinds of block.  The reference shrinks blocks to
  ``h − 1`` only so that its exclusive bound stays non-empty; that bound left
  the last row/column uncovered and pinned the context block to (0, 0).
* Targets first; each context block is a block position intersected with the
  complement of the image's target union (unless ``allow_overlap``), so
  context ∩ targets = ∅ always.  A context mask needs ``≥ max(min_keep, 1)``
  patches (the reference uses ``> min_keep``).  Its position is drawn uniformly
  among the positions that satisfy this, computed exactly with an integral
  image: the limit of redrawing until success, with a bounded cost.
* Relaxation: if no position works for an image, its target positions are
  redrawn (at most ``max_target_redraws`` rounds, only failing images, counted
  as ``target_redraws``); if that still fails, its context is the whole
  complement of its targets (still disjoint from them, no longer a block,
  counted as ``relaxations``).  ``min_keep`` does not apply to targets: their
  size is fixed for the batch, so moving them could not help.
* Cut: context masks are cut to the batch's shortest context mask by keeping
  a uniformly random subset (re-sorted); the reference keeps the first ``k``
  ids, biasing towards the top of the block.  Target blocks share one size.
"""
from __future__ import annotations

import math
import operator
import os

import torch

from jepa.errors import ConfigError

__all__ = ["MaskSampler", "block_size", "expected_tokens"]


def block_size(u: float, grid: tuple[int, int], scale: tuple[float, float],
               aspect_ratio: tuple[float, float]) -> tuple[int, int]:
    """Block ``(bh, bw)`` for one uniform draw ``u`` in [0, 1): the reference's rule, clamped to the grid."""
    h, w = grid
    s = scale[0] + u * (scale[1] - scale[0])
    ar = aspect_ratio[0] + u * (aspect_ratio[1] - aspect_ratio[0])
    keep = int(h * w * s)
    bh = min(max(round(math.sqrt(keep * ar)), 1), h)
    bw = min(max(round(math.sqrt(keep / ar)), 1), w)
    return bh, bw


def _check_grid(grid) -> tuple[int, int]:
    if isinstance(grid, int) and not isinstance(grid, bool):
        grid = (grid, grid)
    try:
        h, w = grid
        if isinstance(h, bool) or isinstance(w, bool):
            raise TypeError
        h, w = operator.index(h), operator.index(w)
    except (TypeError, ValueError):
        raise ValueError(f"grid must be (h, w) with positive ints, got {grid!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"grid must be (h, w) with positive ints, got {grid!r}")
    return h, w


def _check_pair(name: str, value, upper: float | None) -> tuple[float, float]:
    rng = f"0 < low <= high <= {upper:g}" if upper is not None else "0 < low <= high"
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (low, high) with {rng}, got {value!r}") from None
    if not (0.0 < lo <= hi and (upper is None or hi <= upper)) or not math.isfinite(hi):
        raise ValueError(f"{name} must satisfy {rng}, got {value!r}")
    return lo, hi


def _check_int(name: str, value, minimum: int) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        v = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}") from None
    if v < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return v


class MaskStats:
    """Running means and counts over batches' ``MaskSampler.last_info`` dicts.

    The sampler keeps one for the batches it drew; the trainer keeps its own from the ``last_info`` shipped
    with each batch, because under DataLoader workers the sampler that draws is in another process.
    """

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self._batches = self._sum_kc = self._sum_kt = self._sum_ctx_uncut = self._ctx_masks = 0
        self._relaxations = self._redraws = self._below_min_keep = 0

    def add(self, info: dict) -> None:
        self._batches += 1
        self._sum_kc += info["context_tokens"]
        self._sum_kt += info["target_tokens"]
        self._sum_ctx_uncut += info["context_tokens_uncut_total"]
        self._ctx_masks += info["context_masks"]
        self._relaxations += info["relaxations"]
        self._redraws += info["target_redraws"]
        self._below_min_keep += info["below_min_keep"]

    def summary(self, reset: bool = False) -> dict:
        """Means and counts since the last reset: tokens per context/target mask and relaxations."""
        n = max(self._batches, 1)
        out = {
            "batches": self._batches,
            "context_tokens": self._sum_kc / n,
            "target_tokens": self._sum_kt / n,
            "context_tokens_uncut": self._sum_ctx_uncut / max(self._ctx_masks, 1),
            "relaxations": self._relaxations,
            "relaxations_per_batch": self._relaxations / n,
            "target_redraws": self._redraws,
            "below_min_keep": self._below_min_keep,
        }
        if reset:
            self.reset()
        return out


class MaskSampler:
    """Samples I-JEPA context and target masks for a whole batch (see module docstring).

    ``sample`` uses only the generator it is given (or a private one), never the
    global RNG, so a per-batch seeded generator makes it reproducible in
    DataLoader workers.  Counters (``stats``) live in the process that calls
    ``sample``: under DataLoader workers, ship ``last_info`` with the batch (``MaskStats``).
    """

    def __init__(self, grid, enc_scale=(0.85, 1.0), pred_scale=(0.15, 0.2),
                 aspect_ratio=(0.75, 1.5), nenc=1, npred=4, min_keep=10,
                 allow_overlap=False, max_target_redraws=10):
        self.grid = _check_grid(grid)
        self.enc_scale = _check_pair("enc_scale", enc_scale, 1.0)
        self.pred_scale = _check_pair("pred_scale", pred_scale, 1.0)
        self.aspect_ratio = _check_pair("aspect_ratio", aspect_ratio, None)
        self.nenc = _check_int("nenc", nenc, 1)
        self.npred = _check_int("npred", npred, 0)
        self.min_keep = _check_int("min_keep", min_keep, 0)
        self.max_target_redraws = _check_int("max_target_redraws", max_target_redraws, 0)
        if not isinstance(allow_overlap, bool):
            raise ValueError(f"allow_overlap must be a bool, got {allow_overlap!r}")
        self.allow_overlap = allow_overlap
        # Context size is non-decreasing in u (aspect 1), so u = 0 gives the smallest block.
        ch, cw = block_size(0.0, self.grid, self.enc_scale, (1.0, 1.0))
        if ch * cw < self.min_keep:
            raise ValueError(
                f"min_keep={self.min_keep} exceeds the smallest context block ({ch}x{cw}={ch * cw} "
                f"patches) for grid={self.grid}, enc_scale={self.enc_scale}; lower min_keep or raise "
                f"enc_scale")
        h, w = self.grid
        self._rows = torch.arange(h)
        self._cols = torch.arange(w)
        self._gen: torch.Generator | None = None
        self._gen_pid = -1
        self.last_info: dict = {}
        self._stats = MaskStats()

    # ------------------------------------------------------------------ stats
    def reset_stats(self) -> None:
        """Zero the counters reported by ``stats``."""
        self._stats.reset()

    def stats(self, reset: bool = False) -> dict:
        """Means and counts since the last reset: tokens per context/target mask and relaxations."""
        return self._stats.summary(reset)

    # --------------------------------------------------------------- sampling
    def _private_generator(self) -> torch.Generator:
        """A generator of this process, freshly seeded after a fork so workers differ."""
        pid = os.getpid()
        if self._gen is None or self._gen_pid != pid:
            self._gen = torch.Generator()
            self._gen.seed()
            self._gen_pid = pid
        return self._gen

    def _rect(self, top, left, bh, bw):
        """Boolean rectangles ``[..., h, w]`` for corners ``top``/``left`` of shape ``[...]``."""
        r = (self._rows >= top[..., None]) & (self._rows < top[..., None] + bh)
        c = (self._cols >= left[..., None]) & (self._cols < left[..., None] + bw)
        return r[..., :, None] & c[..., None, :]

    def _free(self, top, left, th, tw):
        """Patches ``[b, h, w]`` outside every target block of each image."""
        b = top.shape[0]
        if self.allow_overlap or self.npred == 0:
            return torch.ones(b, *self.grid, dtype=torch.bool)
        return ~self._rect(top, left, th, tw).any(1)

    def _place(self, free, ch, cw, g):
        """Context corners ``[b, nenc]`` uniform over positions keeping enough free patches."""
        h, w = self.grid
        b = free.shape[0]
        T, L = h - ch + 1, w - cw + 1
        S = torch.zeros(b, h + 1, w + 1, dtype=torch.int64)
        S[:, 1:, 1:] = free.to(torch.int64).cumsum(1).cumsum(2)
        counts = S[:, ch:, cw:] - S[:, :T, cw:] - S[:, ch:, :L] + S[:, :T, :L]
        valid = (counts >= max(self.min_keep, 1)).view(b, 1, T * L)
        scores = torch.rand(b, self.nenc, T * L, generator=g).masked_fill_(~valid, -1.0)
        pos = scores.argmax(-1)
        return pos // L, pos % L, valid.view(b, -1).any(-1)

    def sample(self, batch_size: int, generator: torch.Generator | None = None):
        """Masks for one batch: ``(context, targets)``, lists of ``nenc`` / ``npred`` long tensors ``[B, K]``."""
        B = _check_int("batch_size", batch_size, 1)
        g = generator if generator is not None else self._private_generator()
        h, w = self.grid
        N, M, E = h * w, self.npred, self.nenc
        u_pred, u_enc = torch.rand(2, generator=g, dtype=torch.float64).tolist()
        th, tw = block_size(u_pred, self.grid, self.pred_scale, self.aspect_ratio)
        ch, cw = block_size(u_enc, self.grid, self.enc_scale, (1.0, 1.0))

        t_top = torch.randint(0, h - th + 1, (B, M), generator=g)
        t_left = torch.randint(0, w - tw + 1, (B, M), generator=g)
        free = self._free(t_top, t_left, th, tw)
        c_top, c_left, ok = self._place(free, ch, cw, g)

        redraws = 0
        fail = ~ok
        for _ in range(self.max_target_redraws):
            if not bool(fail.any()):
                break
            bad = fail.nonzero().squeeze(1)
            nb = bad.numel()
            redraws += nb
            t_top[bad] = torch.randint(0, h - th + 1, (nb, M), generator=g)
            t_left[bad] = torch.randint(0, w - tw + 1, (nb, M), generator=g)
            free_b = self._free(t_top[bad], t_left[bad], th, tw)
            top_b, left_b, ok_b = self._place(free_b, ch, cw, g)
            free[bad], c_top[bad], c_left[bad], fail[bad] = free_b, top_b, left_b, ~ok_b

        ctx = self._rect(c_top, c_left, ch, cw) & free[:, None]
        relaxed = int(fail.sum())
        if relaxed:
            ctx[fail] = free[fail][:, None].expand(-1, E, h, w)
        ctx = ctx.view(B, E, N)
        counts = ctx.sum(-1)
        kc = int(counts.min())
        if kc == 0:
            raise ConfigError(
                f"masks.npred: target blocks ({M} of {th}x{tw}) cover the whole {h}x{w} grid of an image, leaving "
                f"no context; lower masks.npred or masks.pred_scale")
        scores = torch.rand(B, E, N, generator=g).masked_fill_(~ctx, 2.0)
        keep = scores.topk(kc, dim=-1, largest=False, sorted=False).indices.sort(-1).values
        context = list(keep.transpose(0, 1).contiguous().unbind(0))

        ti = ((t_top[..., None, None] + torch.arange(th)[:, None]) * w
              + t_left[..., None, None] + torch.arange(tw))
        targets = list(ti.view(B, M, th * tw).transpose(0, 1).contiguous().unbind(0))

        self.last_info = {
            "target_size": (th, tw), "context_size": (ch, cw),
            "context_tokens": kc, "target_tokens": th * tw if M else 0,
            "relaxations": relaxed * E, "target_redraws": redraws,
            "below_min_keep": int((counts < self.min_keep).sum()),
            "context_tokens_uncut_total": int(counts.sum()), "context_masks": B * E,
        }
        self._stats.add(self.last_info)
        return context, targets

    __call__ = sample

    def __repr__(self) -> str:
        return (f"MaskSampler(grid={self.grid}, enc_scale={self.enc_scale}, "
                f"pred_scale={self.pred_scale}, aspect_ratio={self.aspect_ratio}, nenc={self.nenc}, "
                f"npred={self.npred}, min_keep={self.min_keep}, allow_overlap={self.allow_overlap})")


def expected_tokens(grid, batch_size: int = 128, batches: int = 200, seed: int = 0, **kwargs) -> dict:
    """Sampler ``stats`` over ``batches`` seeded batches: what a config gives before training on it."""
    sampler = MaskSampler(grid, **kwargs)
    g = torch.Generator().manual_seed(seed)
    for _ in range(batches):
        sampler.sample(batch_size, generator=g)
    return sampler.stats()
