"""The kernel part of ``bench/gpu_check.sh``: float64 checks with poisoned outputs, bandwidth against the copy.

    python3 bench/gpu_kernels.py --out kernels.json [--smoke]

Standalone (no pytest, no pytest-benchmark): what a bare GPU machine with torch and Triton has is enough.
Correctness: each kernel against float64 math on random inputs, outputs filled with NaN before every call,
in fp32 and bf16 on CUDA (fp32 and fp16 under the interpreter, where bf16 arithmetic is wrong).
Bandwidth: each op at the size of ViT-H/16 at 256 px, batch 2048 (B·N·D = 2048·256·1280), in the dtypes the
model produces under bf16 autocast (fp32 context tokens, bf16 predictions against fp32 targets, fp32
parameters; bf16 tokens too, for the other residual choice), Triton against the PyTorch path, each call
timed alone after a 512 MiB write that flushes the L2 cache, as a fraction of the measured copy bandwidth.
``--smoke`` runs the same on CPU with shrunken sizes (Triton's interpreter for the kernels).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import jepa_kernels  # noqa: E402
from jepa_kernels import dispatch  # noqa: E402
from jepa_kernels.ema import ema_update_now  # noqa: E402
from jepa_kernels.gather import masked_gather_backward_op  # noqa: E402
from jepa_kernels.target_loss import masked_target_loss_op  # noqa: E402
from bench import harness  # noqa: E402

VIT = {"vit_b": (12, 768), "vit_h": (32, 1280)}


# ------------------------------------------------------------------ helpers

def vit_param_shapes(depth: int, dim: int) -> list[tuple]:
    block = [(dim,), (dim,), (3 * dim, dim), (3 * dim,), (dim, dim), (dim,),
             (dim,), (dim,), (4 * dim, dim), (4 * dim,), (dim, 4 * dim), (dim,)]
    return block * depth


def distinct(m: int, b: int, k: int, n: int, device) -> torch.Tensor:
    """Sorted distinct indices per (mask, image), as the mask sampler yields them."""
    return torch.rand(m, b, n, device=device).argsort(-1)[..., :k].sort(-1).values


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.detach().double().cpu(), ref.detach().double().cpu()
    if not torch.isfinite(got).all():
        return float("inf")
    return ((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


class Poisoned:
    """Every kernel output starts as NaN while inside: an element the kernel does not write cannot pass."""

    def __enter__(self):
        self.real = dispatch.empty
        dispatch.empty = lambda shape, dtype, device: torch.empty(shape, dtype=dtype, device=device).fill_(float("nan"))

    def __exit__(self, *exc):
        dispatch.empty = self.real


class Deterministic:
    def __enter__(self):
        self.before = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True, warn_only=True)

    def __exit__(self, *exc):
        torch.use_deterministic_algorithms(self.before)


# ------------------------------------------------------------------ correctness

def ref_gather(x, idx):
    x, idx = x.double().cpu(), idx.cpu()
    m, b, k = idx.shape
    return torch.stack([x[bb, idx[mm, bb]] for mm in range(m) for bb in range(b)])


def ref_scatter(grad, idx, n):
    grad, idx = grad.double().cpu(), idx.cpu()
    m, b, k = idx.shape
    out = torch.zeros(b, n, grad.shape[-1], dtype=torch.float64)
    for mm in range(m):
        out.index_put_((torch.arange(b)[:, None].expand(b, k), idx[mm]), grad[mm * b:(mm + 1) * b], accumulate=True)
    return out


def ref_loss(pred, target, idx, kind, beta):
    pred = pred.detach().double().cpu().requires_grad_()
    t = torch.nn.functional.layer_norm(target.double().cpu(), target.shape[-1:], eps=1e-6)
    tg = ref_gather(t, idx)
    loss = (torch.nn.functional.mse_loss(pred, tg) if kind == "mse"
            else torch.nn.functional.smooth_l1_loss(pred, tg, beta=beta))
    loss.backward()
    return loss.detach(), pred.grad


def correctness(device, dtypes, sizes) -> list[dict]:
    """One record per (check, dtype): max relative error against float64 and the tolerance it must meet."""
    b, n, d, k = sizes
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
    rows = []

    def record(name, dtype, err, limit):
        rows.append({"check": name, "dtype": str(dtype).replace("torch.", ""), "rel_err": err, "tol": limit,
                     "ok": bool(err <= limit)})

    jepa_kernels.set_backend("triton")
    try:
        for dtype in dtypes:
            with Poisoned():
                x = torch.randn(b, n, d, device=device, dtype=dtype, requires_grad=True)
                idx = distinct(1, b, k, n, device)
                out = jepa_kernels.masked_gather(x, idx)
                record("gather fwd, one mask", dtype, rel_err(out, ref_gather(x, idx)), 0.0)
                grad = torch.randn_like(out)
                out.backward(grad)
                record("gather bwd, one mask of distinct indices (row pass)", dtype,
                       rel_err(x.grad, ref_scatter(grad, idx, n)), 0.0)
                idx4 = torch.randint(0, n, (4, b, k), device=device)
                for det in (False, True):
                    x.grad = None
                    out = jepa_kernels.masked_gather(x, idx4)
                    grad = torch.randn_like(out)
                    if det:
                        with Deterministic():
                            out.backward(grad)
                    else:
                        out.backward(grad)
                    name = "row pass, deterministic" if det else "atomics"
                    record(f"gather bwd, 4 masks, repeated indices ({name})", dtype,
                           rel_err(x.grad, ref_scatter(grad, idx4, n)), tol[dtype])
                target = (torch.randn(b, n, d, device=device) * 2 + 0.5)
                pred = torch.randn(4 * b, k, d, device=device, dtype=dtype, requires_grad=True)
                tidx = torch.randint(0, n, (4, b, k), device=device)
                for kind, beta in (("mse", 1.0), ("smooth_l1", 0.5)):
                    pred.grad = None
                    loss = jepa_kernels.masked_target_loss(pred, target, tidx, kind=kind, beta=beta)
                    rl, rg = ref_loss(pred, target, tidx, kind, beta)
                    record(f"target loss {kind}, fp32 target: loss", dtype, abs(loss.item() - rl.item()) / rl.item(), 1e-4)
                    (loss * 3.0).backward()
                    record(f"target loss {kind}, fp32 target: grad (x3)", dtype, rel_err(pred.grad, 3 * rg), tol[dtype])
            ts = [torch.randn(s, device=device) for s in [(61,), (8193,), (300, 7)]]
            ts = [t.to(dtype) if i % 2 else t for i, t in enumerate(ts)]
            base = torch.randn(9000, device=device)
            ts.append(base[1:8194])  # not 16-byte aligned
            os_ = [t + 3.0 for t in ts]
            before = [t.double().cpu() for t in ts]
            m = torch.tensor(0.9, dtype=torch.float64, device=device)
            ema_update_now(ts, os_, m)
            err = max(rel_err(t, 0.9 * t0 + 0.1 * o.double().cpu()) for t, t0, o in zip(ts, before, os_))
            record("EMA, mixed dtypes, one unaligned view, tensor momentum", dtype, err, tol[dtype])
    finally:
        jepa_kernels.set_backend("auto")
    return rows


# ------------------------------------------------------------------ timing

class Timer:
    """Seconds per call: on CUDA each call timed alone with events after a 512 MiB write (L2 flushed),
    median of ``reps``; on CPU the best of ``reps`` wall-clock calls."""

    def __init__(self, device, reps: int):
        self.device, self.reps = device, reps

    def __call__(self, fn) -> float:
        timing = harness.time_calls(fn, self.reps, device=self.device, flush_l2=True)
        return timing.median if self.device.type == "cuda" else timing.best


def with_backend(name, fn):
    def run():
        jepa_kernels.set_backend(name)
        try:
            return fn()
        finally:
            jepa_kernels.set_backend("auto")
    return run


def bandwidth(device, sizes, reps) -> dict:
    """GB/s of each op (bytes: the minimum it must move) for Triton and the PyTorch path, and the copy's."""
    b, n, d, kc, m, kt = sizes
    timer = Timer(device, reps)
    src = torch.empty(sizes_copy(device), dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    copy_s = timer(lambda: dst.copy_(src))
    copy_gbs = 2 * src.numel() * 4 / copy_s / 1e9
    copy_mib = src.numel() * 4 / 2 ** 20
    del src, dst
    rows = []

    def add(op, impl, seconds, nbytes, **info):
        rows.append({"op": op, "impl": impl, "us": seconds * 1e6, "GB/s": nbytes / seconds / 1e9,
                     "of_copy": nbytes / seconds / 1e9 / copy_gbs, "bytes": nbytes, **info})

    impls = ["triton", "torch"] if jepa_kernels.HAS_TRITON else ["torch"]
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(b, n, d, device=device, dtype=dtype)
        idx = distinct(1, b, kc, n, device)
        es = x.element_size()
        tag = "fp32 tokens (the model's)" if dtype == torch.float32 else "bf16 tokens"
        for impl in impls:
            fwd = timer(with_backend(impl, lambda: jepa_kernels.masked_gather(x, idx)))
            add(f"gather fwd, context, {tag}", impl, fwd, 2 * b * kc * d * es + idx.numel() * 8, dtype=str(dtype))
        grad = torch.randn(b, kc, d, device=device, dtype=dtype)
        for impl in impls:
            s = timer(with_backend(impl, lambda: masked_gather_backward_op(grad, idx, n)))
            add(f"gather bwd, context (distinct indices), {tag}", impl, s,
                grad.numel() * es + b * n * d * es + idx.numel() * 8, dtype=str(dtype))
        del x, grad
    x2 = torch.randn(b, n, d, device=device)
    idx2 = torch.cat([distinct(1, b, kc, n, device), distinct(1, b, kc, n, device)])  # 2 context masks: repeats
    grad2 = torch.randn(2 * b, kc, d, device=device)
    nbytes = grad2.numel() * 4 + x2.numel() * 4 + idx2.numel() * 8
    for impl in impls:
        add("gather bwd, 2 context masks, fp32", impl, timer(with_backend(impl, lambda: masked_gather_backward_op(
            grad2, idx2, n))), nbytes)
    if "triton" in impls:
        with Deterministic():
            add("gather bwd, 2 context masks, fp32 (deterministic: row pass)", "triton",
                timer(with_backend("triton", lambda: masked_gather_backward_op(grad2, idx2, n))), nbytes)
    del x2, grad2

    target = torch.randn(b, n, d, device=device)
    pred = torch.randn(m * b, kt, d, device=device, dtype=torch.bfloat16)
    tidx = distinct(m, b, kt, n, device)
    nbytes = pred.numel() * 2 * 2 + pred.numel() * 4 + tidx.numel() * 8  # read pred, write grad (bf16); target rows fp32
    for impl in impls:
        add("target loss fused pass (bf16 pred, fp32 target)", impl, timer(with_backend(
            impl, lambda: masked_target_loss_op(pred, target, tidx, "mse", 1.0, True, 1e-6, True))), nbytes)
    pred_g = pred.clone().requires_grad_()

    def fwd_bwd():
        pred_g.grad = None
        jepa_kernels.masked_target_loss(pred_g, target, tidx).backward()

    for impl in impls:
        add("target loss fwd+bwd (grad_output 1)", impl, timer(with_backend(impl, fwd_bwd)), nbytes)
    del target, pred, pred_g

    for name, (depth, dim) in (VIT.items() if device.type == "cuda" else [("vit (1 block, width 64)", (1, 64))]):
        shapes = vit_param_shapes(depth, dim)
        ts = [torch.randn(s, device=device) for s in shapes]
        os_ = [torch.randn(s, device=device) for s in shapes]
        numel = sum(t.numel() for t in ts)
        mom = torch.tensor(0.996, dtype=torch.float64, device=device)
        for impl in impls:
            add(f"EMA {name} parameters, fp32", impl, timer(with_backend(impl, lambda: ema_update_now(ts, os_, mom))),
                3 * numel * 4, params=numel, tensors=len(ts))
        del ts, os_
    return {"copy_GB/s": copy_gbs, "copy_MiB": copy_mib, "rows": rows}


def sizes_copy(device) -> int:
    return (1 << 28) if device.type == "cuda" else (1 << 21)


# ------------------------------------------------------------------ GPU-side overheads

def ema_host_us(device, calls: int) -> float:
    """Host time of one ema_update_ call on a ViT-B list (144 tensors), the launch included (CUDA: the GPU runs
    behind); under the interpreter the kernel runs on the host, so there the list is 1/12 of it, as a smoke test."""
    shapes = vit_param_shapes(*VIT["vit_b"]) if device.type == "cuda" else vit_param_shapes(1, 64)
    ts = [torch.randn(s, device=device) for s in shapes]
    os_ = [torch.randn(s, device=device) for s in shapes]
    mom = torch.tensor(0.996, dtype=torch.float64, device=device)
    jepa_kernels.ema_update_(ts, os_, mom)
    harness.synchronize(device)
    host = harness.time_calls(lambda: jepa_kernels.ema_update_(ts, os_, mom), 1, warmup=0, calls=calls).best
    harness.synchronize(device)  # device=None above: the GPU runs behind, only the host is timed
    return host * 1e6


def pageable_copies(device) -> int | None:
    """Host-to-device copies from pageable memory in EMA calls after the first (float and tensor momentum)."""
    if device.type != "cuda":
        return None
    ts = [torch.randn(1000, device=device) for _ in range(4)]
    os_ = [torch.randn(1000, device=device) for _ in range(4)]
    mom = torch.tensor(0.99, dtype=torch.float64, device=device)
    jepa_kernels.ema_update_(ts, os_, 0.99)
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                torch.profiler.ProfilerActivity.CUDA]) as prof:
            for m in (0.99, mom, 0.995, mom):
                jepa_kernels.ema_update_(ts, os_, m)
            torch.cuda.synchronize()
    except Exception as e:  # noqa: BLE001 - no CUPTI: report it, keep the other results
        print(f"pageable-copy check skipped: {e}", flush=True)
        return None
    return sum(1 for e in prof.events() if "HtoD" in e.name and "Pageable" in e.name)


def token_count_variants(device) -> int | None:
    """Kernels compiled for the gather when only the token count changes (K = 16, 17, 31, 1): 1 at most."""
    if device.type != "cuda" or not jepa_kernels.HAS_TRITON:
        return None
    from jepa_kernels import gather
    fn = gather._gather_fwd_kernel

    def count():
        caches = getattr(fn, "device_caches", None) or getattr(fn, "cache", None)
        return sum(len(v[0]) if isinstance(v, tuple) else len(v) for v in caches.values())

    x = torch.randn(2, 40, 768, device=device)
    jepa_kernels.set_backend("triton")
    try:
        before = count()
        for k in (16, 17, 31, 1):
            jepa_kernels.masked_gather(x, distinct(1, 2, k, 40, device))
        return count() - before
    except Exception:
        return None
    finally:
        jepa_kernels.set_backend("auto")


# ------------------------------------------------------------------ main

def main(argv=None) -> int:
    p = harness.parser(__doc__)
    harness.add_out(p, "JSON file to write (bench/gpu_check.py summary turns it into tables)", required=True)
    p.add_argument("--smoke", action="store_true", help="CPU, shrunken sizes, Triton interpreter")
    args = harness.parse(p, argv)
    cuda = torch.cuda.is_available() and not args.smoke
    if args.smoke and not dispatch.interpreting():
        print("--smoke needs TRITON_INTERPRET=1 in the environment (bench/gpu_check.sh --smoke sets it)")
        return 2
    device = torch.device("cuda" if cuda else "cpu")
    torch.manual_seed(0)
    result = {"device": harness.device_name(device) if cuda else "cpu (Triton interpreter)", "smoke": args.smoke,
              "machine": harness.machine(device)}
    t0 = time.time()
    dtypes = [torch.float32, torch.bfloat16] if cuda else [torch.float32, torch.float16]
    result["correctness"] = correctness(device, dtypes, (4, 256, 1280, 100) if cuda else (2, 24, 768, 9))
    print(f"correctness: {sum(r['ok'] for r in result['correctness'])}/{len(result['correctness'])} ok "
          f"({time.time() - t0:.0f} s)", flush=True)
    sizes = (2048, 256, 1280, 128, 4, 48) if cuda else (2, 32, 256, 16, 2, 6)
    result["sizes"] = dict(zip(("B", "N", "D", "K_context", "M_targets", "K_target"), sizes))
    result["bandwidth"] = bandwidth(device, sizes, reps=10 if cuda else 1)
    print(f"bandwidth: copy {result['bandwidth']['copy_GB/s']:.0f} GB/s, {len(result['bandwidth']['rows'])} rows "
          f"({time.time() - t0:.0f} s)", flush=True)
    result["ema_host_us_per_call_vit_b"] = ema_host_us(device, 200 if cuda else 3)
    result["pageable_htod_copies_after_first_call"] = pageable_copies(device)
    result["gather_variants_compiled_for_4_token_counts"] = token_count_variants(device)
    result["seconds"] = time.time() - t0
    harness.write_json(args.out, result)
    return 0 if all(r["ok"] for r in result["correctness"]) else 1


if __name__ == "__main__":
    sys.exit(main())
