"""The Python side of ``bench/gpu_check.sh``: environment, one training-step measurement, the summary.

    python3 bench/gpu_check.py env --out env.txt
    python3 bench/gpu_check.py step --variant eager|compiled|residual-bf16 --jsonl steps.jsonl [--smoke]
    python3 bench/gpu_check.py summary DIR

``step`` measures the ViT-B/16, 224 px, batch 128, bf16 training step of ``configs/bench_vitb16_224.yaml``
with ``bench/throughput.py``'s ``measure`` (images/s, MFU against the bf16 matmul peak measured in the same
run, peak memory, warm-up time with compilation) and appends one JSON line.  ``residual-bf16`` is the same
eager step with the encoders' residual streams in bf16 instead of fp32 (position tables cast to bf16; the
predictor's stream stays fp32 through its fp32 mask token; docs/performance.md).  ``--smoke``: a tiny
ViT on CPU with the same code path.  Needs only torch (and Triton for the kernels): no pytest.
"""
from __future__ import annotations

import json
from importlib import metadata
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench import harness  # noqa: E402

STEP_CONFIG = ROOT / "configs" / "bench_vitb16_224.yaml"
SMOKE_OVERRIDES = {
    "model.size": "custom", "model.embed_dim": "32", "model.depth": "2", "model.num_heads": "2",
    "model.patch_size": "8", "model.pred_dim": "16", "model.pred_depth": "1", "model.pred_heads": "2",
    "data.image_size": "64", "data.batch_size": "4", "data.num_workers": "0", "data.synthetic_size": "64",
    "masks.min_keep": "4", "training.device": "cpu",
}


# ------------------------------------------------------------------ env

def env_text() -> str:
    lines = [f"date (UTC): {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())}",
             f"python: {sys.version.split()[0]} ({sys.executable})", f"platform: {platform.platform()}",
             f"torch: {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"]
    try:
        import triton
        lines.append(f"triton: {triton.__version__}")
    except Exception as e:  # noqa: BLE001 - report whatever broke the import
        lines.append(f"triton: not importable ({e})")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            lines.append(f"gpu {i}: {p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2 ** 30:.1f} GiB, "
                         f"{p.multi_processor_count} SMs")
    else:
        lines.append("gpu: none visible to torch")
    lines.append(f"machine: {harness.machine()}")
    lines.append("C compiler (Triton builds its launcher with one): "
                 + (", ".join(f"{c}={shutil.which(c)}" for c in ("cc", "gcc", "clang") if shutil.which(c)) or "NONE"))
    for dist in ("pytest", "numpy", "PyYAML", "timm", "transformers", "xformers"):
        try:
            lines.append(f"{dist}: {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            lines.append(f"{dist}: not installed")
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        lines.append(f"repository: {rev.stdout.strip() or 'no git metadata'}")
    except (OSError, subprocess.SubprocessError):
        lines.append("repository: no git")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ step

def step(variant: str, smoke: bool) -> dict:
    from bench import throughput
    from bench.residual_dtype import residual_in_compute_dtype
    from jepa.config import load_config

    overrides = dict(throughput.BENCH_OVERRIDES)
    if smoke:
        overrides.update(SMOKE_OVERRIDES)
    overrides["training.compile"] = "true" if variant == "compiled" else "false"
    if smoke and variant == "compiled":  # dynamo + AOTAutograd as on the GPU, without minutes of C++ codegen
        compile_module = torch.nn.Module.compile
        torch.nn.Module.compile = lambda self, mode=None, **kw: compile_module(self, backend="aot_eager")
    cfg = load_config(STEP_CONFIG, overrides)
    # smoke: 256² matmuls stand in for the peak (a tiny CPU needs no minute for it)
    args = SimpleNamespace(warmup=1 if smoke else 3, reps=2 if smoke else 10, phase_steps=0, reference=False,
                           peak_size=256 if smoke else None)
    needed = args.warmup + args.reps + throughput.PROFILED_STEPS
    with tempfile.TemporaryDirectory(prefix="jepa-gpu-check-") as tmp:
        trainer = throughput.build_trainer(cfg, needed, Path(tmp), reference=False)
        if variant == "residual-bf16":
            residual_in_compute_dtype(trainer.model)
        r = throughput.measure(trainer, cfg, args)
    keys = ("device", "config", "batch_size", "images_per_s", "step_s_median", "step_s_min", "warmup_s", "mfu",
            "flops_per_step", "peak_flops_per_s", "peak_mem_bytes", "peak_mem_source", "settings",
            "context_tokens_mean", "target_tokens_mean", "aten_ops_per_step")
    return {"variant": variant, "smoke": smoke, **{k: r[k] for k in keys}}


# ------------------------------------------------------------------ summary

def _pct(x: float) -> str:
    return f"{100 * x:.0f} %"


def kernel_tables(k: dict) -> list[str]:
    bw = k["bandwidth"]
    out = [f"### Kernels on {k['device']} (sizes {k['sizes']})", "",
           f"Copy bandwidth measured: **{bw['copy_GB/s']:.0f} GB/s** ({bw['copy_MiB']:.0f} MiB fp32 `copy_`)."
           + (" Smoke run: interpreter timings, meaningless as speeds." if k["smoke"] else ""), "",
           "| check vs float64 (outputs NaN-poisoned) | dtype | rel. error | tolerance | |",
           "|---|---|---:|---:|---|"]
    for c in k["correctness"]:
        out.append(f"| {c['check']} | {c['dtype']} | {c['rel_err']:.2e} | {c['tol']:.0e} | {'ok' if c['ok'] else 'FAIL'} |")
    out += ["", "| op (minimum bytes) | impl | time | GB/s | of copy | Triton vs torch |", "|---|---|---:|---:|---:|---:|"]
    by_op: dict = {}
    for r in bw["rows"]:
        by_op.setdefault(r["op"], {})[r["impl"]] = r
    for op, impls in by_op.items():
        for impl, r in impls.items():
            speed = ""
            if impl == "triton" and "torch" in impls:
                speed = f"{impls['torch']['us'] / r['us']:.2f}x"
            out.append(f"| {op} | {impl} | {r['us']:.0f} us | {r['GB/s']:.0f} | {_pct(r['of_copy'])} | {speed} |")
    out += ["", f"EMA host time per call, ViT-B list (launch included): {k['ema_host_us_per_call_vit_b']:.1f} us",
            f"Pageable host-to-device copies in EMA calls after the first: {k['pageable_htod_copies_after_first_call']}",
            f"Gather kernels compiled for 4 token counts (K = 16, 17, 31, 1; at most 1 expected): "
            f"{k['gather_variants_compiled_for_4_token_counts']}", ""]
    return out


def targets(k: dict) -> list[str]:
    """The issue's GPU targets, read off the bandwidth rows (triton rows at the large sizes)."""
    rows = {(r["op"], r["impl"]): r for r in k["bandwidth"]["rows"]}
    out = ["### Targets", ""]
    if k["smoke"]:
        return out + ["Smoke run (interpreter on CPU): the speed targets are for a GPU run.", ""]

    def of_copy(op):
        r = rows.get((op, "triton"))
        return r["of_copy"] if r else None

    for op in ("gather fwd, context, fp32 tokens (the model's)", "target loss fused pass (bf16 pred, fp32 target)",
               "EMA vit_h parameters, fp32"):
        v = of_copy(op)
        out.append(f"- {op}: {'n/a' if v is None else _pct(v)} of copy bandwidth (target >= 80 %)"
                   + ("" if v is None else (" — met" if v >= 0.8 else " — NOT met")))
    t, p = rows.get(("gather bwd, context (distinct indices), fp32 tokens (the model's)", "triton")), \
        rows.get(("gather bwd, context (distinct indices), fp32 tokens (the model's)", "torch"))
    if t and p:
        x = p["us"] / t["us"]
        out.append(f"- gather backward: {x:.2f}x the torch index_add path (target >= 2x) — {'met' if x >= 2 else 'NOT met'}")
    return out + [""]


def step_table(steps: list[dict]) -> list[str]:
    smoke = any(s.get("smoke") for s in steps)
    out = ["### " + ("Tiny ViT training step on CPU, bf16 (smoke: the code path, not the speed)" if smoke
                     else "ViT-B/16 224 px training step, bf16"), "",
           "| variant | images/s | step ms | MFU (vs measured bf16 matmul peak) | peak TFLOP/s | peak memory | warm-up s |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for s in steps:
        out.append(f"| {s['variant']} | {s['images_per_s']:.0f} | {1e3 * s['step_s_median']:.1f} | {_pct(s['mfu'])} | "
                   f"{s['peak_flops_per_s'] / 1e12:.1f} | {s['peak_mem_bytes'] / 2 ** 30:.2f} GiB | {s['warmup_s']:.0f} |")
    if steps:
        s = steps[0]
        out += ["", f"{s['config']} on {s['device']}, batch {s['batch_size']}, {s['settings']}, "
                    f"{s['context_tokens_mean']:.0f} context / {s['target_tokens_mean']:.0f} target tokens on average"]
    return out + [""]


def summary(folder: Path) -> str:
    out = ["# GPU check", ""]
    env = folder / "env.txt"
    if env.is_file():
        out += ["```", env.read_text().strip(), "```", ""]
    log = folder / "log.txt"
    if log.is_file():
        out += ["### Steps", ""] + [f"- {m}" for m in re.findall(r"^== (.*) ==$", log.read_text(), re.M)] + [""]
    tests = folder / "tests.txt"
    if tests.is_file():
        tail = [line for line in tests.read_text().strip().splitlines() if line.strip()]
        what = "a subset, Triton interpreter (smoke)" if "deselected" in "".join(tail[-1:]) else "compiled Triton"
        out += [f"### Kernel tests ({what})", "", f"`{tail[-1] if tail else 'no output'}`", ""]
    kjson = folder / "kernels.json"
    if kjson.is_file():
        k = json.loads(kjson.read_text())
        out += kernel_tables(k) + targets(k)
    sfile = folder / "steps.jsonl"
    if sfile.is_file():
        out += step_table([json.loads(line) for line in sfile.read_text().splitlines() if line.strip()])
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------ main

def main(argv=None) -> int:
    p = harness.parser(__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("env")
    harness.add_out(e, "the text file to write", required=True)
    s = sub.add_parser("step")
    s.add_argument("--variant", choices=("eager", "compiled", "residual-bf16"), required=True)
    s.add_argument("--jsonl", required=True, help="append the record here")
    s.add_argument("--smoke", action="store_true")
    m = sub.add_parser("summary")
    m.add_argument("folder")
    args = harness.parse(p, argv)
    if args.cmd == "env":
        harness.write_text(args.out, env_text())
    elif args.cmd == "step":
        record = step(args.variant, args.smoke)
        print(json.dumps(record))
        with open(args.jsonl, "a") as f:  # one line per step process, appended in order
            f.write(json.dumps(record) + "\n")
    else:
        text = summary(Path(args.folder))
        harness.write_text(Path(args.folder) / "summary.md", text)
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
