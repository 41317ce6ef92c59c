"""Time of SIGReg forward+backward (jepa/sigreg.py) beside a ViT encoder forward+backward of the same batch.

    python bench/bench_sigreg.py [--n 256] [--dim 192] [--slices 256] [--device cuda] [--out FILE]

SIGReg is timed on ``[n, dim]`` embeddings with ``slices`` fresh directions each call (drawing them is
part of the cost).  The yardstick is one training step's order of size: a ViT encoder of width ``dim``
(12 blocks, ``dim/64`` heads: ViT-Tiny at 192) forward+backward on ``--ref-batch`` images of
``--image-size`` px (patch 16), scaled linearly to ``n`` images; bf16 autocast on CUDA, fp32 on CPU.
A real I-JEPA step also runs the target encoder and the predictor, so the share printed is an upper
bound.  ``--ref-batch 0`` skips the encoder.  Timings are the best of ``--reps`` rounds.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench import harness  # noqa: E402
from jepa.models.vit import VisionTransformer  # noqa: E402
from jepa.sigreg import sigreg, sigreg_directions  # noqa: E402


def sigreg_call(n: int, dim: int, slices: int, num_points: int, device: torch.device):
    """One SIGReg forward+backward on fixed embeddings, with the next step's directions each call."""
    z = torch.randn(n, dim, device=device, requires_grad=True)
    step = [0]

    def call():
        step[0] += 1
        sigreg(z, sigreg_directions(dim, slices, step[0], seed=0, device=device), num_points=num_points).backward()
    return call


def encoder_call(batch: int, dim: int, image_size: int, device: torch.device):
    """One ViT encoder forward+backward (mean of the output as the loss) on ``batch`` random images."""
    model = VisionTransformer(image_size, 16, 3, dim, depth=12, num_heads=max(1, dim // 64)).to(device)
    images = torch.randn(batch, 3, image_size, image_size, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def call():
        with autocast:
            out = model(images)
        out.float().mean().backward()
    return call


def main(argv=None) -> int:
    p = harness.parser(__doc__)
    p.add_argument("--n", type=int, default=256, help="embeddings per batch (default 256)")
    p.add_argument("--dim", type=int, default=192, help="embedding width (default 192)")
    p.add_argument("--slices", type=int, default=256, help="random directions (default 256)")
    p.add_argument("--num-points", type=int, default=17, help="quadrature nodes (default 17)")
    p.add_argument("--ref-batch", type=int, default=None,
                   help="images in the timed encoder pass, 0 to skip (default: --n on CUDA, 2 on CPU)")
    p.add_argument("--image-size", type=int, default=224, help="the encoder's image size (default 224)")
    harness.add_timing(p, reps=5, warmup=2, help="timed rounds, the best kept")
    harness.add_device(p)
    harness.add_threads(p)
    harness.add_out(p)
    args = harness.parse(p, argv)
    device = torch.device(args.device)
    ref_batch = args.ref_batch if args.ref_batch is not None else (args.n if device.type == "cuda" else 2)
    if min(args.n, args.dim, args.slices) < 1 or args.num_points < 2 or ref_batch < 0 or args.image_size < 16:
        p.error("--n, --dim, --slices must be >= 1, --num-points >= 2, --ref-batch >= 0 and --image-size >= 16")

    sig_s = harness.time_calls(sigreg_call(args.n, args.dim, args.slices, args.num_points, device), args.reps,
                               warmup=args.warmup, device=device).best
    record = {"n": args.n, "dim": args.dim, "slices": args.slices, "num_points": args.num_points,
              "device": harness.device_name(device), "sigreg_ms": 1e3 * sig_s}
    lines = [f"SIGReg forward+backward, N={args.n}, D={args.dim}, M={args.slices}, {args.num_points} nodes", "",
             "| what | ms |", "|---|---:|", f"| SIGReg (directions drawn each call) | {1e3 * sig_s:.3f} |"]
    if ref_batch:
        enc_s = harness.time_calls(encoder_call(ref_batch, args.dim, args.image_size, device), args.reps,
                                   warmup=args.warmup, device=device).best * args.n / ref_batch
        record.update(encoder_ms=1e3 * enc_s, ref_batch=ref_batch, image_size=args.image_size,
                      sigreg_share=sig_s / (sig_s + enc_s))
        lines += [f"| ViT encoder fwd+bwd, {args.n} images of {args.image_size} px (measured on {ref_batch}) "
                  f"| {1e3 * enc_s:.1f} |", "", f"SIGReg share (upper bound): {100 * record['sigreg_share']:.2f} %"]
    harness.write_record(args.out, record, "\n".join(lines), device=device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
