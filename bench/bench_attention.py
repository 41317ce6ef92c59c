"""Attention kernels on this device: time of forward + backward, of forward alone, and error against float64.

Usage: ``python bench/bench_attention.py [--dtype bfloat16] [--reps 20] [--threads N] [--device cpu] [--out FILE]``

Kernels: SDPA's fused kernel (``flash``), SDPA's math kernel (``sdpa-math``, what ``model.attention: sdpa``
runs on CPU where ``jepa.models.attention.cpu_sdpa_math_kernel`` says so), and the explicit
``softmax(q kᵀ/√d) v`` of ``model.attention: math`` (scores in the input dtype).  Shapes ``[B, H, N, d]``
are those of ``configs/bench_fmnist_tiny.yaml`` (encoder, context, predictor) and of a ViT-B/16 at 224 px;
q, k, v come from one ``[B, N, 3, H, d]`` projection, as in the model.  Error: max |out − fp64 out| for
inputs of standard deviation 2 (the gradients are compared in tests/test_attention.py).  A kernel that
cannot run here (e.g. SDPA's flash kernel for fp32 on CUDA) shows "n/a".
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import harness  # noqa: E402
from jepa.models.attention import CPU_BF16_MATH_MAX_KEYS, math_attention  # noqa: E402

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
    """Median ms of forward + backward, median ms of forward alone (no grad), max abs error against float64."""
    B, H, N, d = shape
    g = torch.Generator(device=device).manual_seed(0)
    qkv = (2 * torch.randn(B, N, 3, H, d, generator=g, device=device)).to(dtype).requires_grad_(True)

    def train_step():
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        fn(q, k, v).float().sum().backward()

    def forward():
        with torch.no_grad():
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            fn(q, k, v)

    def median_ms(step):
        return 1e3 * harness.time_calls(step, reps, warmup=3, device=device).median

    try:
        both, fwd = median_ms(train_step), median_ms(forward)
    except RuntimeError:  # no kernel of this kind for this dtype/device
        return None
    with torch.no_grad():
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        ref = math_attention(q.double(), k.double(), v.double())
        err = (fn(q, k, v).double() - ref).abs().max().item()
    return {"fwd_bwd_ms": both, "fwd_ms": fwd, "max_abs_err": err}


def table(rows: list[dict]) -> str:
    """One line per shape: each kernel's fwd+bwd ms, fwd ms and error, then flash / sdpa-math ratios."""
    lines = ["| B, H, N, d | " + " | ".join(f"{k} fwd+bwd ms | {k} fwd ms | {k} err" for k in KERNELS)
             + " | fwd+bwd: flash / sdpa-math | fwd: flash / sdpa-math |",
             "|---|" + "---:|---:|---:|" * len(KERNELS) + "---:|---:|"]
    for row in rows:
        res = row["kernels"]
        cells = " | ".join("n/a | n/a | n/a" if r is None else
                           f"{r['fwd_bwd_ms']:.2f} | {r['fwd_ms']:.2f} | {r['max_abs_err']:.3f}" for r in res.values())
        f, m = res["flash"], res["sdpa-math"]
        ratios = ("n/a | n/a" if f is None or m is None else
                  f"{f['fwd_bwd_ms'] / m['fwd_bwd_ms']:.2f} | {f['fwd_ms'] / m['fwd_ms']:.2f}")
        lines.append(f"| {', '.join(map(str, row['shape']))} | {cells} | {ratios} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = harness.parser(__doc__)
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    harness.add_timing(p, reps=20, help="timed calls per kernel and shape, the median kept")
    harness.add_threads(p)
    harness.add_device(p)
    harness.add_out(p)
    args = harness.parse(p, argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    rows = []
    for shape in SHAPES:
        print(f"{', '.join(map(str, shape))} ...", flush=True)
        rows.append({"shape": shape, "kernels": {name: measure(fn, shape, dtype, device, args.reps)
                                                 for name, fn in KERNELS.items()}})
    record = {"dtype": args.dtype, "device": str(device), "cpu_bf16_math_max_keys": CPU_BF16_MATH_MAX_KEYS,
              "reps": args.reps, "rows": rows}
    harness.write_record(args.out, record, f"{args.dtype} on {device}; CPU_BF16_MATH_MAX_KEYS = "
                                           f"{CPU_BF16_MATH_MAX_KEYS}\n\n{table(rows)}", device=device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
