"""Which dtype the residual stream has under bf16 autocast, and what keeping it in fp32 is worth in accuracy.

    python bench/residual_dtype.py [--depth 12] [--dim 192] [--out FILE]

Under autocast the patch embedding (a conv) yields bf16, but the fixed sin-cos ``pos_embed`` is an fp32
buffer: their sum is fp32, and so is every residual add after it (fp32 + bf16 branch = fp32).  The
alternative, ``bf16 residual``, casts ``pos_embed`` to the compute dtype first (what the GPU check times
as its speed counterpart).  Both are compared with the same model in float64 without autocast: the
relative error of the encoder's features and of the parameter gradients (deterministic, so any machine
gives the same numbers), and the dtypes that reach the fused kernels in a real step.
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench import harness  # noqa: E402
from jepa.models.vit import Block, VisionTransformer  # noqa: E402


def residual_in_compute_dtype(model: torch.nn.Module, dtype: torch.dtype = torch.bfloat16) -> None:
    """The alternative: position tables in ``dtype``, so the sum with the patch embedding stays in it."""
    for m in model.modules():
        if isinstance(getattr(m, "pos_embed", None), torch.Tensor):
            m.pos_embed = m.pos_embed.to(dtype)


def stream_dtypes(model, x, idx) -> list[str]:
    """The dtype each block receives (the residual stream)."""
    seen = []
    hooks = [b.register_forward_pre_hook(lambda _m, args: seen.append(str(args[0].dtype))) for b in model.modules()
             if isinstance(b, Block)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x, idx)
    for h in hooks:
        h.remove()
    return sorted(set(seen))


def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a.double() - ref).norm() / ref.norm()).item()


def compare(depth: int, dim: int, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = VisionTransformer(64, 8, 3, dim, depth, max(1, dim // 64))
    x = torch.randn(8, 3, 64, 64)
    idx = torch.rand(8, 64).argsort(-1)[:, :48].sort(-1).values  # a context of 48 of the 64 tokens
    w = torch.randn(8, 48, dim)

    ref_model = copy.deepcopy(model).double()
    out_ref = ref_model(x.double(), idx)
    (out_ref * w.double()).sum().backward()
    grad_ref = torch.cat([p.grad.flatten() for p in ref_model.parameters()])

    result = {}
    for name in ("fp32 residual (default)", "bf16 residual"):
        m = copy.deepcopy(model)
        if name == "bf16 residual":
            residual_in_compute_dtype(m)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(x, idx)
        (out.float() * w).sum().backward()
        grad = torch.cat([p.grad.flatten() for p in m.parameters()])
        result[name] = {"stream": stream_dtypes(m, x, idx), "features_rel_err": rel(out.detach(), out_ref.detach()),
                        "grad_rel_err": rel(grad, grad_ref)}
    return result


def kernel_dtypes() -> dict:
    """What the fused kernels receive in one bf16-autocast step of a small JEPA model."""
    from jepa.config import load_config
    from jepa.models import build_model
    cfg = load_config(ROOT / "configs" / "quick_validation.yaml", {"training.device": "cpu"})
    model = build_model(cfg)
    seen = {}
    import jepa_kernels
    real_gather, real_loss = jepa_kernels.masked_gather, jepa_kernels.masked_target_loss

    def gather(x, idx):
        seen.setdefault("masked_gather input (context tokens)", str(x.dtype))
        return real_gather(x, idx)

    def loss(pred, target, idx, **kw):
        seen["masked_target_loss pred"], seen["masked_target_loss target"] = str(pred.dtype), str(target.dtype)
        return real_loss(pred, target, idx, **kw)

    import jepa.losses
    import jepa.models.vit
    jepa.models.vit.jepa_kernels.masked_gather = gather
    jepa.losses.jepa_kernels.masked_target_loss = loss
    try:
        images = torch.randn(4, 1, 28, 28)
        ctx = torch.rand(4, 49).argsort(-1)[:, :20].sort(-1).values.unsqueeze(0)
        tgt = torch.rand(4, 4, 49).argsort(-1)[..., :6].transpose(0, 1).contiguous()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            with torch.no_grad():
                h = model.target_encoder(images)
            _, preds = model(images, ctx, tgt, None)
            jepa_kernels.masked_target_loss(preds[0], h, tgt)
    finally:
        jepa.models.vit.jepa_kernels.masked_gather = real_gather
        jepa.losses.jepa_kernels.masked_target_loss = real_loss
    seen["EMA parameters"] = str(next(model.parameters()).dtype)
    return seen


def markdown(record: dict) -> str:
    lines = [f"ViT depth {record['depth']}, width {record['dim']}, 64 tokens (48 kept), bf16 autocast vs float64", "",
             "| variant | residual stream | features rel. err | gradients rel. err |", "|---|---|---:|---:|"]
    lines += [f"| {name} | {','.join(r['stream'])} | {r['features_rel_err']:.2e} | {r['grad_rel_err']:.2e} |"
              for name, r in record["variants"].items()]
    lines += ["", "| reaching the kernels | dtype |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in record["kernel_inputs_under_bf16_autocast"].items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = harness.parser(__doc__)
    p.add_argument("--depth", type=int, default=12)
    p.add_argument("--dim", type=int, default=192)
    harness.add_out(p)
    args = harness.parse(p, argv)
    torch.set_num_threads(1)  # fixed reduction order: the same numbers on every run
    record = {"depth": args.depth, "dim": args.dim, "variants": compare(args.depth, args.dim),
              "kernel_inputs_under_bf16_autocast": kernel_dtypes()}
    harness.write_record(args.out, record, markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
