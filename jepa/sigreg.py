"""SIGReg: Sketched Isotropic Gaussian Regularization (Balestriero & LeCun 2025, "LeJEPA", arXiv 2511.08544).

A penalty that is small when a batch of embeddings ``z`` (``[N, D]``) looks like a sample of the standard
isotropic Gaussian ``N(0, I_D)``, and large when it has collapsed (to a point, a line, a low-rank subspace)
or has the wrong scale.  It is a sliced (sketched) goodness-of-fit test: project ``z`` on ``M`` unit
directions ``a_m`` (columns of ``directions``, ``[D, M]``) and, on each 1-D sample ``x = z·a_m``, take the
Epps-Pulley statistic against the standard normal; the loss is the mean over the ``M`` directions:

    φ̂(t) = (1/N) Σ_i exp(i·t·x_i)                  empirical characteristic function (ECF)
    T(x) = ∫ |φ̂(t) − exp(−t²/2)|² · w(t) dt,        w(t) = exp(−t²/2)   (Gaussian weight)
    sigreg(z) = (1/M) Σ_m T(z·a_m)

with ``|φ̂(t) − φ(t)|² = (C(t) − φ(t))² + S(t)²``, ``C``/``S`` the sample means of ``cos(t·x)``/``sin(t·x)``.

Quadrature: the integrand is even in ``t`` (the ECF at ``−t`` is the conjugate of the ECF at ``t``), so
the integral over ``[−t_max, t_max]`` is twice the one over ``[0, t_max]``.  That half is taken by the
trapezoid rule on ``num_points`` evenly spaced nodes ``t_k = k·t_max/(num_points − 1)``, ``k = 0 … num_points−1``
(default 17 nodes on ``[0, 5]``, spacing 0.3125), node weights ``Δ/2`` at both ends and ``Δ`` inside, all
doubled; this equals the trapezoid rule on the symmetric grid of ``2·num_points − 1`` nodes.  The Gaussian
weight is ``3.7e-6`` at ``t = 5``, so truncating there is negligible.  The grid samples ``cos(t·x)`` every
``Δ``, so values of ``x`` that differ by ``2π/Δ`` (about 20 with the defaults) look alike: projections that
far from 0 are penalised, just not in proportion to their distance.

Scale: the paper's test statistic is ``N·T`` (its null distribution does not depend on ``N``).  The loss
here is ``T`` itself (``scale_by_n=False``, the default): a distance between distributions whose value
and gradients, like a mean-reduced loss, do not grow with the batch or the number of processes, so one
loss weight suits every batch size.  Its expected value on ``N`` standard-normal samples is
``null_value(N)``, a constant over ``N`` (``E|φ̂(t) − φ(t)|² = (1 − exp(−t²))/N``).  ``scale_by_n=True``
returns ``N·T`` with the global ``N``, the paper's form.

Distributed: when a process group is initialised with more than one process, the sums of ``cos``/``sin``
and the sample count are all-reduced, so every process gets the statistic of the global batch (exact for
unequal local batches too).  The backward pass all-reduces the gradient of those sums: each process's
gradient on its own rows is ``world_size`` times the gradient of the global statistic, which is what makes
DDP's averaging of parameter gradients over processes give exactly the single-process gradient.  Every
process must call ``sigreg`` the same number of times (it is a collective).

The directions are redrawn every step from a generator seeded by ``(seed, step)``: the same on every
process and device without communication, and the same after a resume.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.distributed as dist

from jepa.errors import ConfigError
from jepa.seeds import mix_seed

DEFAULT_POINTS = 17
DEFAULT_T_MAX = 5.0


def _check_grid(num_points: int, t_max: float) -> None:
    """Refuse a quadrature grid that cannot integrate anything."""
    if isinstance(num_points, bool) or not isinstance(num_points, int) or num_points < 2:
        raise ConfigError(f"sigreg num_points must be an integer >= 2, got {num_points!r}")
    if not (isinstance(t_max, (int, float)) and math.isfinite(t_max) and t_max > 0):
        raise ConfigError(f"sigreg t_max must be a finite number > 0, got {t_max!r}")


def quadrature(num_points: int = DEFAULT_POINTS, t_max: float = DEFAULT_T_MAX, *, device=None,
               dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nodes ``t`` on ``[0, t_max]``, their weights (doubled trapezoid times ``w(t)``) and ``φ(t) = exp(−t²/2)``."""
    _check_grid(num_points, t_max)
    t = torch.linspace(0.0, float(t_max), num_points, dtype=torch.float64)
    step = float(t_max) / (num_points - 1)
    trapezoid = torch.full((num_points,), 2 * step, dtype=torch.float64)
    trapezoid[[0, -1]] = step
    phi = torch.exp(-0.5 * t * t)
    return tuple(v.to(device=device, dtype=dtype) for v in (t, trapezoid * phi, phi))


def null_value(n: int, num_points: int = DEFAULT_POINTS, t_max: float = DEFAULT_T_MAX) -> float:
    """Expected ``sigreg`` (unscaled) of ``n`` i.i.d. standard-normal samples: the loss floor at batch ``n``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"sigreg sample count must be an integer >= 1, got {n!r}")
    return _null_numerator(num_points, t_max) / n


@functools.lru_cache(maxsize=None, typed=True)
def _null_numerator(num_points: int, t_max: float) -> float:
    """``null_value`` times ``n``: a constant of the grid, computed once (the trainer logs the floor every step)."""
    t, weights, _ = quadrature(num_points, t_max, dtype=torch.float64)
    return float((weights * (1 - torch.exp(-t * t))).sum())


def sigreg_directions(dim: int, slices: int, step: int, seed: int, device=None,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[dim, slices]`` unit columns, uniform on the sphere, drawn on the CPU from a generator seeded by (seed, step).

    Drawn on the CPU so every device gets the same directions; on CUDA they travel through pinned memory
    without a host synchronisation.
    """
    for name, value in (("dim", dim), ("slices", slices)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"sigreg {name} must be an integer >= 1, got {value!r}")
    generator = torch.Generator().manual_seed(mix_seed(seed, "sigreg", step))
    a = torch.randn(dim, slices, generator=generator, dtype=torch.float64)
    a = (a / a.norm(dim=0, keepdim=True)).to(dtype)
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        return a.pin_memory().to(device, non_blocking=True)
    return a.to(device)


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose backward all-reduces the gradient: each process's loss counts as one term of a sum."""

    @staticmethod
    def forward(ctx, tensor, group):
        ctx.group = group
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


def world_size(process_group=None) -> int:
    """Processes ``sigreg`` reduces over: the group's size when torch.distributed is initialised, else 1."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(process_group)


def _check_inputs(z: torch.Tensor, directions: torch.Tensor) -> None:
    if z.dim() != 2:
        raise ValueError(f"sigreg needs embeddings of shape [N, D], got {tuple(z.shape)}")
    if directions.dim() != 2 or directions.shape[0] != z.shape[1]:
        raise ValueError(f"sigreg directions must be [D, M] with D = {z.shape[1]} (the embeddings' width), "
                         f"got {tuple(directions.shape)}")
    if not (z.is_floating_point() and directions.is_floating_point()):
        raise ValueError(f"sigreg needs floating-point tensors, got {z.dtype} and {directions.dtype}")


def sigreg(z: torch.Tensor, directions: torch.Tensor, *, num_points: int = DEFAULT_POINTS,
           t_max: float = DEFAULT_T_MAX, scale_by_n: bool = False, process_group=None) -> torch.Tensor:
    """Mean over ``directions`` of the Epps-Pulley distance of the projected ``z`` to N(0, 1) (module docstring).

    Computed in fp32 (fp64 for fp64 inputs) whatever the autocast precision; over the global batch under
    torch.distributed (``process_group``, default the world).
    """
    _check_inputs(z, directions)
    _check_grid(num_points, t_max)
    world = world_size(process_group)
    if world == 1 and z.shape[0] == 0:
        raise ValueError("sigreg got an empty batch (N = 0)")
    dtype = torch.promote_types(torch.promote_types(z.dtype, directions.dtype), torch.float32)
    with torch.autocast(z.device.type, enabled=False):
        x = z.to(dtype) @ directions.to(device=z.device, dtype=dtype)  # [N, M]
        t, weights, phi = quadrature(num_points, t_max, device=z.device, dtype=dtype)
        tx = x.unsqueeze(-1) * t  # [N, M, T]
        count = torch.full((1,), float(z.shape[0]), device=z.device, dtype=dtype)
        sums = torch.cat([tx.cos().sum(0).flatten(), tx.sin().sum(0).flatten(), count])
        if world > 1:
            sums = _SumOverRanks.apply(sums, process_group)
        n = sums[-1].detach()
        cos_mean, sin_mean = (sums[:-1] / n).view(2, *tx.shape[1:])  # [M, T] each
        distance = ((cos_mean - phi).square() + sin_mean.square()) @ weights  # [M]
        statistic = distance.mean()
        return statistic * n if scale_by_n else statistic
