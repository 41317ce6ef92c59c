"""Training throughput: images/s, time per phase, FLOPs, MFU, ATen ops and peak memory of the real step.

    python bench/throughput.py --config CONFIG [--steps N] [--out FILE] [--section.key value ...]
    python bench/throughput.py --config CONFIG --reference   # the same step as the reference code computes it
    python bench/throughput.py --config CONFIG --all         # every {kernels} x {attention} x {compile} here,
                                                             # plus --reference and the shared-context predictor
    python bench/throughput.py --config CONFIG --all --precisions fp32,bf16   # ... at each precision
    python bench/throughput.py                               # --all on this device's standard config:
        configs/bench_fmnist_tiny.yaml on CPU (fp32, plus bf16 where the CPU has AVX-512 BF16 or AMX),
        configs/bench_vitb16_224.yaml on CUDA, written to bench/results/<device>/throughput.{json,md}

One run: ``--warmup`` steps (compilation happens here), ``--steps`` timed steps (data loading
and mask sampling included, as in training), ``--phase-steps`` steps timed per labelled phase
(device synchronised at each phase boundary), two profiled steps for the ATen op count.
images/s is the global batch over the median step time; MFU is FLOPs per step (counted with
``FlopCounterMode`` on a meta-device copy of the model, per batch: token counts vary) over the
median step time, against the best of several large matmuls timed in the same run.  Peak memory
is ``torch.cuda.max_memory_allocated`` on CUDA and the process's peak RSS on CPU.  ``--all`` runs
each combination in its own process, one after the other, so compare rows of one table only.
"""
from __future__ import annotations

import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import jepa_kernels  # noqa: E402
import jepa.data.batches  # noqa: E402
import jepa.device  # noqa: E402
import jepa.models.vit  # noqa: E402
import jepa.train  # noqa: E402
from bench import harness, reference_code_step  # noqa: E402
from bench.harness import device_name, results_dir  # noqa: E402
from jepa.config import ConfigError, load_config, parse_overrides  # noqa: E402
from jepa.cpu import cpu_has_bf16_matmul  # noqa: E402
from jepa.models import build_model  # noqa: E402
from jepa.profiling import PhaseTimer, synchronize, top_level_aten_ops  # noqa: E402

CPU_CONFIG = ROOT / "configs" / "bench_fmnist_tiny.yaml"
GPU_CONFIG = ROOT / "configs" / "bench_vitb16_224.yaml"
BENCH_OVERRIDES = {"logging.tensorboard": "false", "logging.progress": "false", "eval.every_epochs": "0"}
OVERHEAD_PHASES = ("data", "masks", "optimizer", "ema")
PRECISIONS = ("fp32", "bf16", "fp16")
PROFILED_STEPS = 2


# ------------------------------------------------------------------ measurements


class FlopCounter:
    """FLOPs of one step's forward and backward for a batch's shapes, on a meta-device model (no compute)."""

    def __init__(self, cfg, reference: bool):
        cfg = copy.deepcopy(cfg)
        cfg.model.attention = "sdpa"  # same math as every backend, and FlopCounterMode counts it
        self.model = build_model(cfg, "meta")
        self.reference = reference
        self.cache: dict = {}

    def __call__(self, batch) -> int:
        key = (tuple(batch.images.shape), tuple(batch.ctx_idx.shape), tuple(batch.tgt_idx.shape), batch.block_hw)
        if key not in self.cache:
            meta = jepa.data.Batch(torch.empty(batch.images.shape, device="meta"), batch.labels.to("meta"),
                                   batch.ctx_idx.to("meta"), batch.tgt_idx.to("meta"), batch.block_hw)
            with FlopCounterMode(display=False) as counter:
                if self.reference:
                    out = reference_code_step.forward_loss(self.model, meta)
                else:
                    with torch.no_grad():
                        self.model.target_encoder(meta.images)
                    _, preds = self.model(meta.images, meta.ctx_idx, meta.tgt_idx, meta.block_hw)
                    out = sum(p.float().sum() for p in preds)  # the loss is elementwise: no FLOPs counted
                out.backward()
            self.model.zero_grad(set_to_none=True)
            self.cache[key] = counter.get_total_flops()
        return self.cache[key]


MATMUL_OPS = ("aten::addmm", "aten::mm", "aten::bmm")


def op_times(prof, top: int = 12) -> tuple[list[dict], float]:
    """The ops with the most self CPU time in the profiled steps (per step), and the matmuls' share of it all."""
    stats = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in stats)
    stats.sort(key=lambda e: -e.self_cpu_time_total)
    rows = [{"op": e.key, "ms_per_step": e.self_cpu_time_total / 1e3 / PROFILED_STEPS,
             "calls_per_step": e.count / PROFILED_STEPS, "fraction": e.self_cpu_time_total / total}
            for e in stats[:top]]
    matmul = sum(e.self_cpu_time_total for e in stats if e.key in MATMUL_OPS)
    return rows, matmul / total if total else float("nan")


def peak_memory(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "torch.cuda.max_memory_allocated"
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, "process peak RSS"


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ------------------------------------------------------------------ one configuration


def build_trainer(cfg, needed_steps: int, run_dir: Path, reference: bool):
    if reference:
        os.environ["JEPA_TUNE_MALLOC"] = "0"  # the reference code runs with the default allocator
    trainer = jepa.train.Trainer(cfg, run_dir=run_dir)
    if trainer.total_steps < needed_steps:
        raise SystemExit(f"error: {cfg.name} has {trainer.total_steps} training steps but the benchmark needs "
                         f"{needed_steps}; lower --steps or raise training.epochs")
    return trainer


def run_one(cfg, args) -> dict:
    """Measure one configuration in this process; returns the JSON record."""
    needed = args.warmup + args.reps + args.phase_steps + PROFILED_STEPS
    with tempfile.TemporaryDirectory(prefix="jepa-bench-") as tmp:
        trainer = build_trainer(cfg, needed, Path(tmp), args.reference)
        return measure(trainer, cfg, args)


def measure(trainer, cfg, args) -> dict:
    device = trainer.device
    step_fn = reference_code_step.ReferenceStep(trainer).train_step if args.reference else trainer.train_step
    stream = trainer.micro_batches()

    def next_group():
        group = next(stream)
        while group is None:  # epoch boundary
            group = next(stream)
        return group

    peaks = [harness.matmul_peak(device, trainer.amp_dtype, args.peak_size)]
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        step_fn(next_group())
    synchronize(device)
    warmup_s = time.perf_counter() - t0

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    counter = FlopCounter(cfg, args.reference)
    times, cpu_times, flops, tokens = [], [], [], []
    for _ in range(args.reps):
        synchronize(device)
        t0, c0 = time.perf_counter(), cpu_seconds()
        group = next_group()
        step_fn(group)
        synchronize(device)
        times.append(time.perf_counter() - t0)
        cpu_times.append(cpu_seconds() - c0)
        flops.append(sum(counter(b) for b in group))
        tokens.append((group[0].ctx_idx.shape[-1], group[0].tgt_idx.shape[-1]))
    mem, mem_source = peak_memory(device)

    timer = PhaseTimer(device)
    modules = [jepa.train, jepa.data.batches, reference_code_step]
    if not cfg.training.compile:
        modules.append(jepa.models.vit)  # the predictor range; inside a compiled graph it must not run Python
    phase_times = []
    with timer.patch(*modules):
        for _ in range(args.phase_steps):
            synchronize(device)
            t0 = time.perf_counter()
            step_fn(next_group())
            synchronize(device)
            phase_times.append(time.perf_counter() - t0)

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(PROFILED_STEPS):
            step_fn(next_group())
        synchronize(device)
    aten_ops = top_level_aten_ops(prof.events()) / PROFILED_STEPS
    top_ops, matmul_fraction = op_times(prof)
    peaks.append(harness.matmul_peak(device, trainer.amp_dtype, args.peak_size))

    batch = cfg.data.batch_size * cfg.training.accum_steps * trainer.dist.world_size
    median = statistics.median(times)
    phase_step = statistics.fmean(phase_times) if phase_times else float("nan")
    phases = {name: {"ms": 1e3 * s / len(phase_times), "fraction": s / len(phase_times) / phase_step}
              for name, s in timer.totals.items()}
    other = phase_step - sum(timer.totals.values()) / max(1, len(phase_times))
    phases["other"] = {"ms": 1e3 * other, "fraction": other / phase_step}
    peak = max(peaks)
    flops_per_step = statistics.fmean(flops)
    return {
        "label": label_of(cfg, args.reference),
        "config": cfg.name,
        "device": device_name(device),
        "torch": torch.__version__,
        "settings": {"kernels": jepa_kernels.backend(), "attention": attention_backend(trainer),
                     "compile": cfg.training.compile, "precision": str(trainer.amp_dtype).replace("torch.", ""),
                     "predictor_shared_context": cfg.model.predictor_shared_context, "reference": args.reference},
        "batch_size": batch,
        "steps": args.reps,
        "images_per_s": batch / median,
        "step_s_median": median,
        "step_s_min": min(times),
        "cpu_s_per_step": statistics.median(cpu_times),
        "warmup_s": warmup_s,
        "flops_per_step": flops_per_step,
        "peak_flops_per_s": peak,
        "peak_flops_per_s_each": peaks,
        "mfu": flops_per_step / median / peak,
        "aten_ops_per_step": aten_ops,
        "top_ops": top_ops,
        "matmul_fraction": matmul_fraction,
        "peak_mem_bytes": mem,
        "peak_mem_source": mem_source,
        "phases": phases,
        "data_masks_optimizer_ema_fraction": sum(phases.get(p, {"fraction": 0.0})["fraction"]
                                                 for p in OVERHEAD_PHASES),
        "context_tokens_mean": statistics.fmean(t[0] for t in tokens),
        "target_tokens_mean": statistics.fmean(t[1] for t in tokens),
    }


def attention_backend(trainer) -> str:
    for m in trainer.model.modules():
        if isinstance(m, jepa.models.vit.Attention):
            return m.backend
    return "?"


def label_of(cfg, reference: bool) -> str:
    if reference:
        return "reference"
    label = f"kernels={cfg.training.kernels} attention={cfg.model.attention} compile={cfg.training.compile}"
    return label + (" shared-context" if cfg.model.predictor_shared_context else "")


# ------------------------------------------------------------------ every combination


def combinations(device: torch.device, compile_modes: list[str],
                 precisions: list[str] | None = None) -> list[tuple[str, dict, bool]]:
    """(label, overrides, reference) for every switch setting that can run on ``device``, per precision."""
    kernel_choices = ["torch"] + (["triton"] if device.type == "cuda" and jepa_kernels.HAS_TRITON else [])
    attention_choices = ["sdpa", "math"]
    if device.type == "cuda":
        from jepa.models.attention import xformers_available
        if xformers_available():
            attention_choices.insert(0, "xformers")
    rows = []
    for p in precisions or [None]:
        extra = {"training.precision": p} if p else {}
        tag = f" {p}" if p and len(precisions) > 1 else ""
        rows.append(("reference" + tag, dict(extra), True))
        for k in kernel_choices:
            for a in attention_choices:
                for c in compile_modes:
                    rows.append((f"kernels={k} attention={a} compile={c}{tag}",
                                 {"training.kernels": k, "model.attention": a, "training.compile": c, **extra}, False))
        rows.append(("shared-context predictor" + tag, {"model.predictor_shared_context": "true", **extra}, False))
    return rows


def run_all(args, overrides: dict, device: torch.device) -> list[dict]:
    rows = []
    precisions = args.precisions.split(",") if args.precisions else None
    for label, extra, reference in combinations(device, args.compile_modes.split(","), precisions):
        with tempfile.TemporaryDirectory(prefix="jepa-bench-") as tmp:
            out = Path(tmp) / "row.json"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--config", str(args.config),
                   "--steps", str(args.reps), "--warmup", str(args.warmup), "--phase-steps", str(args.phase_steps),
                   "--out", str(out), "--quiet"]
            for flag, value in (("--threads", args.threads), ("--peak-size", args.peak_size)):
                if value:
                    cmd += [flag, str(value)]
            if reference:
                cmd.append("--reference")
            for k, v in {**overrides, **extra}.items():
                cmd += [f"--{k}", str(v)]
            print(f"[{len(rows) + 1}] {label} ...", flush=True)
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode == 0 and out.is_file():
                rows.append({**json.loads(out.read_text()), "label": label})
            else:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                print(f"    failed (exit {proc.returncode}): {' | '.join(tail)}", flush=True)
                rows.append({"label": label, "error": " | ".join(tail)})
    return rows


# ------------------------------------------------------------------ reporting


def precision_of(r: dict) -> str | None:
    return r.get("settings", {}).get("precision")


def table(rows: list[dict]) -> str:
    """Markdown table of ``rows``; "vs reference" is against the reference row of the same precision."""
    refs = {precision_of(r): r for r in rows
            if "error" not in r and (r.get("settings", {}).get("reference") or r.get("label") == "reference")}
    lines = ["| setting | images/s | vs reference | step ms | MFU | GFLOP/step | ATen ops/step | peak mem MiB "
             "| data+masks+opt+EMA |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['label']} | failed: {r['error'][:80]} |  |  |  |  |  |  |  |")
            continue
        ref = refs.get(precision_of(r))
        speed = f"{r['images_per_s'] / ref['images_per_s']:.2f}x" if ref else "-"
        lines.append(f"| {r['label']} | {r['images_per_s']:.0f} | {speed} | {1e3 * r['step_s_median']:.0f} "
                     f"| {100 * r['mfu']:.0f} % | {r['flops_per_step'] / 1e9:.1f} | {r['aten_ops_per_step']:.0f} "
                     f"| {r['peak_mem_bytes'] / 2 ** 20:.0f} | {100 * r['data_masks_optimizer_ema_fraction']:.1f} % |")
    return "\n".join(lines)


def describe(r: dict) -> str:
    s = r["settings"]
    lines = [f"{r['label']} on {r['device']} (torch {r['torch']}), {r['config']}, batch {r['batch_size']}, "
             f"{s['precision']}, attention {s['attention']}, kernels {s['kernels']}",
             f"  images/s {r['images_per_s']:.1f}   step {1e3 * r['step_s_median']:.1f} ms (min "
             f"{1e3 * r['step_s_min']:.1f}, CPU time {1e3 * r['cpu_s_per_step']:.0f} ms)   "
             f"warm-up {r['warmup_s']:.1f} s",
             f"  {r['flops_per_step'] / 1e9:.2f} GFLOP/step (context {r['context_tokens_mean']:.1f}, target "
             f"{r['target_tokens_mean']:.1f} tokens)   peak {r['peak_flops_per_s'] / 1e9:.0f} GFLOP/s   "
             f"MFU {100 * r['mfu']:.1f} %",
             f"  {r['aten_ops_per_step']:.0f} ATen ops/step   peak memory {r['peak_mem_bytes'] / 2 ** 20:.0f} MiB "
             f"({r['peak_mem_source']})",
             "  phase              ms   share"]
    for name, p in r["phases"].items():
        lines.append(f"  {name:<16} {p['ms']:7.1f}  {100 * p['fraction']:5.1f} %")
    lines.append(f"  data+masks+optimizer+ema: {100 * r['data_masks_optimizer_ema_fraction']:.1f} % of the step")
    lines.append(f"  op (self CPU time, profiled steps)                   ms/step  calls  share   "
                 f"[addmm+mm+bmm: {100 * r['matmul_fraction']:.1f} %]")
    for o in r["top_ops"]:
        lines.append(f"  {o['op'][:50]:<50} {o['ms_per_step']:8.1f} {o['calls_per_step']:6.0f}  {100 * o['fraction']:5.1f} %")
    return "\n".join(lines)


# ------------------------------------------------------------------ command line


def parse(argv):
    p = harness.parser(__doc__, prog="python bench/throughput.py",
                       epilog="Any config key can be overridden as --section.key value.")
    p.add_argument("--config", help="YAML config (default: the device's standard benchmark config, with --all)")
    harness.add_timing(p, reps=20, warmup=3, flags=("--steps",), help="timed steps")
    p.add_argument("--phase-steps", type=int, default=5, help="steps timed per phase (default 5)")
    harness.add_out(p, "write the JSON record (or, with --all, every row and the table) here, markdown beside it")
    p.add_argument("--reference", action="store_true", help="time the step as the reference I-JEPA code runs it")
    p.add_argument("--all", action="store_true", help="every kernels x attention x compile setting available here")
    p.add_argument("--compile-modes", default="false,true", help="training.compile values for --all")
    p.add_argument("--precisions", help="training.precision values for --all, e.g. fp32,bf16 (default: the config's); "
                                        "each precision gets its own reference row")
    p.add_argument("--peak-size", type=int, help="side of the matmuls timed for the peak (default 2048 on CPU, "
                                                 "8192 on CUDA)")
    harness.add_threads(p)
    p.add_argument("--quiet", action="store_true", help=harness.SUPPRESS)
    args, rest = harness.parse(p, argv, known=True)
    try:
        overrides = parse_overrides(rest)
    except ConfigError as e:
        p.error(str(e))
    if args.precisions is not None:
        if not args.all and args.config is not None:
            p.error("--precisions only applies to --all (for one run use --training.precision)")
        values = args.precisions.split(",")
        bad = [v for v in values if v not in PRECISIONS]
        if bad or len(set(values)) != len(values):
            p.error(f"--precisions takes distinct values of {', '.join(PRECISIONS)}, got {args.precisions!r}")
    if args.phase_steps < 0:
        p.error(f"--phase-steps must be >= 0, got {args.phase_steps}")
    return args, overrides


def main(argv=None) -> int:
    args, overrides = parse(argv)
    default_suite = args.config is None
    if default_suite:
        args.config = str(GPU_CONFIG if torch.cuda.is_available() else CPU_CONFIG)
        args.all = True
        if not torch.cuda.is_available() and args.precisions is None and cpu_has_bf16_matmul():
            args.precisions = "fp32,bf16"
    try:
        cfg = load_config(args.config, {**BENCH_OVERRIDES, **overrides})
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    device = jepa.device.pick_device(cfg.training.device)
    if args.all:
        if args.reference:
            print("error: --reference and --all do not combine (--all includes a reference row)", file=sys.stderr)
            return 2
        rows = run_all(args, overrides, device)
        text = table(rows)
        out = args.out or (results_dir(device) / "throughput.json" if default_suite else None)
        harness.write_record(out, {"config": cfg.name, "device": device_name(device), "rows": rows, "table": text},
                             f"### {cfg.name} on {device_name(device)}, torch {torch.__version__}\n\n{text}\n",
                             device=device)
        return 0 if all("error" not in r for r in rows) else 1
    try:
        record = run_one(cfg, args)
    except ValueError as e:  # e.g. --reference with a setting the reference code does not have
        print(f"error: {e}", file=sys.stderr)
        return 2
    harness.write_record(args.out, record, describe(record), device=device, echo=not args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
