"""Attention kernels on this device: time of forward + backward and error against float64, per kernel.

Usage: ``python bench/bench_attention.py [--dtype bfloat16] [--reps 20] [--threads N]``

Kernels: SDPA's fused kernel (``flash``), SDPA's math kernel (``sdpa-math``, what ``model.attention: sdpa``
runs on CPU for bf16/fp16 up to ``CPU_LOW_PRECISION_MATH_MAX_KEYS`` keys), and the explicit
``softmax(q kᵀ/√d) v`` of ``model.attention: math`` (scores in the input dtype).  Shapes ``[B, H, N, d]``
are those of ``configs/bench_fmnist_tiny.yaml`` (encoder, context, predictor) and of a ViT-B/16 at 224 px;
q, k, v come from one ``[B, N, 3, H, d]`` projection, as in the model.  Error: max |out − fp64 out|.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from jepa.models.attention import CPU_LOW_PRECISION_MATH_MAX_KEYS, math_attention  # noqa: E402

SHAPES = [(128, 3, 49, 64), (128, 3, 14, 64), (512, 3, 23, 32), (64, 3, 96, 64), (39, 3, 160, 64),
          (64, 12, 197, 64)]


def sdpa_with(backend):
    def run(q, k, v):
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q, k, v)
    return run


KERNELS = {"flash": sdpa_with(SDPBackend.FLASH_ATTENTION), "sdpa-math": sdpa_with(SDPBackend.MATH),
           "math": math_attention}


def measure(fn, shape, dtype, device, reps):
    """Median ms of forward + backward, and the max abs error of the output against float64."""
    B, H, N, d = shape
    g = torch.Generator(device=device).manual_seed(0)
    qkv = (2 * torch.randn(B, N, 3, H, d, generator=g, device=device)).to(dtype).requires_grad_(True)

    def step():
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        fn(q, k, v).float().sum().backward()

    for _ in range(3):
        step()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    with torch.no_grad():
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        ref = math_attention(q.double(), k.double(), v.double())
        err = (fn(q, k, v).double() - ref).abs().max().item()
    return 1e3 * sorted(times)[len(times) // 2], err


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    print(f"{args.dtype} on {device}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"CPU_LOW_PRECISION_MATH_MAX_KEYS = {CPU_LOW_PRECISION_MATH_MAX_KEYS}\n")
    print("| B, H, N, d | " + " | ".join(f"{k} ms | {k} err" for k in KERNELS) + " | flash / sdpa-math |")
    print("|---|" + "---:|---:|" * len(KERNELS) + "---:|")
    for shape in SHAPES:
        res = {name: measure(fn, shape, dtype, device, args.reps) for name, fn in KERNELS.items()}
        cells = " | ".join(f"{t:.2f} | {e:.3f}" for t, e in res.values())
        print(f"| {', '.join(map(str, shape))} | {cells} | {res['flash'][0] / res['sdpa-math'][0]:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
