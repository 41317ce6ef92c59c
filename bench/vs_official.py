"""Our CPU step against the official I-JEPA code's, in one run: images/s, GFLOP/step and MFU side by side.

    IJEPA_SRC=/path/to/ijepa python bench/vs_official.py [--official PATH] [--steps N] [--no-compiled] [--bf16]

The official code's step is timed by its own CPU-step script (``--official``, default
``../shared/official/ijepa_cpu_baseline.py`` beside the repository; ``IJEPA_SRC`` is the extracted official
repository it imports, never part of ours), once before and once after our rows so that drift of the
machine shows. Our rows are ``bench/throughput.py`` on ``configs/bench_fmnist_tiny.yaml`` (the same model,
batch, masks settings and fp32) as a user runs it: eager and ``training.compile: true`` in fp32, and the same
in bf16 where the CPU has bf16 matrix instructions (AVX-512 BF16 or AMX; ``--bf16`` forces those rows).
Every row runs in its own process, one after the other; run it with nothing else on the machine.
Writes ``bench/results/cpu-<name>/vs_official-<matrix instructions>.{json,md}`` (or ``--out``).
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench import harness  # noqa: E402
from bench.throughput import CPU_CONFIG  # noqa: E402
from jepa.cpu import cpu_flags, cpu_has_bf16_matmul  # noqa: E402

DEFAULT_OFFICIAL = ROOT.parent / "shared" / "official" / "ijepa_cpu_baseline.py"


def matrix_tag(flags: list[str]) -> str:
    """The CPU's best matrix instruction set (``amx``, ``avx512bf16``, ``avx512``, ``avx2``): machines sold under
    one model name (``AMD EPYC``) differ in it, so result files carry it."""
    for flag, tag in (("amx_bf16", "amx"), ("avx512_bf16", "avx512bf16"), ("avx512f", "avx512"), ("avx2", "avx2")):
        if flag in flags:
            return tag
    return "generic"


def run_official(script: Path, threads: int) -> dict:
    """The official step's ``--speed`` record (DataLoader in the main process, as our rows)."""
    with tempfile.TemporaryDirectory(prefix="jepa-official-") as tmp:
        out = Path(tmp) / "official.json"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        proc = subprocess.run([sys.executable, str(script), "--speed", "--out", str(out)], capture_output=True,
                              text=True, env=env)
        if proc.returncode != 0 or not out.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            return {"error": " | ".join(tail) or f"exit {proc.returncode}"}
        res = json.loads(out.read_text())
    sp, nw0 = res["speed"], res["speed"]["num_workers_0"]
    return {"images_per_s": nw0["images_per_s"], "step_s_median": nw0["median_s_per_step"],
            "flops_per_step": sp["flops_per_step_mean_timed_batches"], "mfu": nw0["mfu_vs_matmul_peak"],
            "peak_gflops": res["physical"]["matmul_peak_gflops"],
            "context_tokens_mean": sp["mask_tokens_timed_batches"]["context_mean"],
            "ijepa_commit": res["environment"].get("ijepa_commit")}


def run_ours(overrides: dict, steps: int, threads: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="jepa-ours-") as tmp:
        out = Path(tmp) / "row.json"
        cmd = [sys.executable, str(ROOT / "bench" / "throughput.py"), "--config", str(CPU_CONFIG), "--steps",
               str(steps), "--threads", str(threads), "--out", str(out), "--quiet"]
        for k, v in overrides.items():
            cmd += [f"--{k}", v]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not out.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            return {"error": " | ".join(tail) or f"exit {proc.returncode}"}
        r = json.loads(out.read_text())
    return {"images_per_s": r["images_per_s"], "step_s_median": r["step_s_median"],
            "flops_per_step": r["flops_per_step"], "mfu": r["mfu"], "peak_gflops": r["peak_flops_per_s"] / 1e9,
            "context_tokens_mean": r["context_tokens_mean"], "phases": r["phases"]}


def table(rows: list[dict], official_ips: float | None) -> str:
    lines = ["| step | precision | images/s | vs official | step ms | GFLOP/step | context tokens | MFU "
             "(own peak) | peak GFLOP/s |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['label']} | {r['precision']} | failed: {r['error'][:80]} | | | | | | |")
            continue
        ratio = f"{r['images_per_s'] / official_ips:.2f}x" if official_ips else "-"
        lines.append(f"| {r['label']} | {r['precision']} | {r['images_per_s']:.0f} | {ratio} "
                     f"| {1e3 * r['step_s_median']:.0f} | {r['flops_per_step'] / 1e9:.1f} "
                     f"| {r['context_tokens_mean']:.1f} | {100 * r['mfu']:.0f} % | {r['peak_gflops']:.0f} |")
    return "\n".join(lines)


def parse(argv):
    p = harness.parser(__doc__, prog="python bench/vs_official.py")
    p.add_argument("--official", default=str(DEFAULT_OFFICIAL), help="the official code's CPU-step script")
    harness.add_timing(p, reps=20, flags=("--steps",), help="timed steps of each of our rows")
    harness.add_threads(p, default=2)
    p.add_argument("--no-compiled", action="store_true", help="leave out the training.compile rows")
    p.add_argument("--bf16", action="store_true", help="add the bf16 rows even without bf16 matrix instructions")
    harness.add_out(p, "JSON path, markdown beside it (default "
                       "bench/results/cpu-<name>/vs_official-<avx2|avx512|avx512bf16|amx>.json)")
    args = harness.parse(p, argv)
    if not Path(args.official).is_file():
        p.error(f"--official {args.official}: no such file (the official code's CPU-step script)")
    if not os.environ.get("IJEPA_SRC"):
        p.error("set IJEPA_SRC to the extracted official I-JEPA repository")
    return args


def main(argv=None) -> int:
    args = parse(argv)
    script = Path(args.official)
    precisions = ["fp32"] + (["bf16"] if args.bf16 or cpu_has_bf16_matmul() else [])
    compiles = ["false"] + ([] if args.no_compiled else ["true"])
    rows = []
    print("official ...", flush=True)
    rows.append({"label": "official (before)", "precision": "fp32", **run_official(script, args.threads)})
    for prec in precisions:
        for comp in compiles:
            label = "ours, " + ("compiled" if comp == "true" else "eager")
            print(f"{label} {prec} ...", flush=True)
            rows.append({"label": label, "precision": prec, **run_ours(
                {"training.precision": prec, "training.compile": comp}, args.reps, args.threads)})
    print("official ...", flush=True)
    rows.append({"label": "official (after)", "precision": "fp32", **run_official(script, args.threads)})

    official = [r["images_per_s"] for r in rows if r["label"].startswith("official") and "error" not in r]
    official_ips = statistics.mean(official) if official else None
    device = torch.device("cpu")
    head = (f"configs/bench_fmnist_tiny.yaml on {harness.device_name(device)}; matrix flags: {' '.join(cpu_flags())}; "
            f"torch {torch.__version__}, Python {platform.python_version()}")
    text = table(rows, official_ips)
    note = (f"vs official: against the mean of the two official runs ({', '.join(f'{x:.0f}' for x in official)} "
            "images/s). Each side's MFU is against the matmul peak its own script measured in this run.")
    out = args.out or harness.results_dir(device) / f"vs_official-{matrix_tag(cpu_flags())}.json"
    harness.write_record(out, {"header": head, "cpu_flags": cpu_flags(), "rows": rows,
                               "official_images_per_s_mean": official_ips, "table": text},
                         f"### Our step against the official code's\n\n{head}\n\n{text}\n\n{note}\n")
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
