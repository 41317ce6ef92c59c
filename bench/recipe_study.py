"""Recipe study on Fashion-MNIST: pre-train each row under several seeds, probe it, tabulate and plot the rows.

Usage::

    python bench/recipe_study.py --rows default,pure_ijepa --seeds 0,1,2 [--epochs N] [--curve]
        [--threads N] [--out-dir DIR] [--report-only] [--plot docs/images/recipe_study.png]

Each (row, seed, epochs) runs ``python -m jepa.train`` in a fresh run directory and then the fixed probes of
``jepa.eval`` (L-BFGS linear probe and k-NN, target encoder, mean features) on the final checkpoint; with
``--curve`` every epoch's checkpoint is probed too, at the wall-clock minute it was written, for the plot.
Records are appended to ``<out-dir>/recipe_study.jsonl`` and a run already recorded is not repeated, so the
study can be stopped and continued. ``recipe_study.md`` holds the table (mean ± std over seeds), grouped by
epochs; ``--threads`` runs the trainer on that many threads (screening two rows side by side: the minutes of
such rows are not the budget's and are marked). Raw pixels and random init are probed once, as baselines.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import harness  # noqa: E402
from jepa.checkpoint import checkpoint_step, find_latest_valid, list_checkpoints  # noqa: E402
from jepa.eval import evaluate  # noqa: E402

NAME = "recipe_study"
DEFAULT = "configs/cpu_fashion_mnist.yaml"
# name -> (config, trainer overrides, what the row is)
ROWS: dict[str, tuple[str, list[str], str]] = {
    "default": (DEFAULT, [], "the README job (configs/cpu_fashion_mnist.yaml)"),
    "pure_ijepa": (DEFAULT, ["--loss.type", "mse"], "I-JEPA alone: MSE, EMA targets, no regulariser"),
    "sigreg_ema": (DEFAULT, ["--loss.type", "mse", "--loss.sigreg_weight", "2.5"],
                   "EMA targets + SIGReg 2.5 on the context, no VICReg"),
    "sigreg_online": ("configs/lejepa_fashion_mnist.yaml", [], "online targets + SIGReg (lejepa_fashion_mnist)"),
}


def parse_override_row(spec: str) -> tuple[str, tuple[str, list[str], str]]:
    """``name=--key value --key value``: an ad-hoc row on the default config (screening levers)."""
    name, _, rest = spec.partition("=")
    return name, (DEFAULT, rest.split(), f"default {rest}")


def load_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def append_record(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def probe(ckpt: Path) -> dict:
    res = evaluate(ckpt, "fashion_mnist", "both", progress=False, cache=False)["results"]["pretrained"]
    return {"linear": res["linear"], "knn": res["knn"]}


def run_one(row: str, spec: tuple[str, list[str], str], seed: int, epochs: int | None, threads: int | None,
            curve: bool, runs: Path) -> dict:
    """Pre-train one row under one seed, probe it; the record of the run."""
    config, overrides, _ = spec
    run_dir = runs / f"{row}-s{seed}-e{epochs or 'cfg'}-{time.strftime('%H%M%S')}"
    cmd = [sys.executable, "-m", "jepa.train", "--config", config, "--run-dir", str(run_dir),
           "--training.seed", str(seed), "--checkpoint.keep_last", "1000", *overrides]
    if epochs:
        cmd += ["--training.epochs", str(epochs)]
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    print("$", " ".join(cmd), flush=True)
    t0 = time.time()
    code = subprocess.call(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    seconds = time.time() - t0
    if code != 0:
        raise SystemExit(f"{row} seed {seed}: training failed with exit code {code}")
    final, _ = find_latest_valid(run_dir)
    points = []
    for ckpt in (list_checkpoints(run_dir)[::-1] if curve else [final]):
        minutes = (ckpt.stat().st_mtime - t0) / 60
        points.append({"step": checkpoint_step(ckpt), "minutes": round(minutes, 2), **probe(ckpt)})
        print(f"  {row} seed {seed} step {points[-1]['step']}: {points[-1]}", flush=True)
    return {"row": row, "seed": seed, "epochs": epochs, "threads": threads, "config": config,
            "overrides": overrides, "train_seconds": round(seconds, 1), **{k: points[-1][k] for k in ("linear", "knn")},
            "curve": points, "run_dir": str(run_dir), "machine": harness.machine("cpu")}


def baselines(records: list[dict]) -> dict | None:
    """Raw-pixel and random-init probes (from any checkpoint of the default ViT), or None without such a run."""
    src = next((Path(r["run_dir"]) for r in records if r.get("row") == "default" and Path(r["run_dir"]).exists()), None)
    ckpt = find_latest_valid(src)[0] if src else None
    if ckpt is None:
        return None
    res = evaluate(ckpt, "fashion_mnist", "both", baselines=True, progress=False, cache=False)["results"]
    return {"row": "baselines", **{k: {"linear": v["linear"], "knn": v["knn"]} for k, v in res.items()
                                   if k != "pretrained"}}


def summary(values: list[float]) -> str:
    mean = 100 * statistics.fmean(values)
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else f"{mean:.1f}"


def table(records: list[dict], rows: dict) -> str:
    """Markdown: one line per (row, epochs, threads), mean ± std over the seeds run."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        if r.get("row") != "baselines":
            groups.setdefault((r["epochs"] or 0, r["row"], r.get("threads") or 0), []).append(r)
    lines = ["| row | epochs | seeds | pre-training min | linear % | k-NN % | what |",
             "|---|---:|---:|---:|---:|---:|---|"]
    base = next((r for r in records if r.get("row") == "baselines"), None)
    if base:
        for name in ("raw_pixels", "random_init"):
            if name in base:
                lines.append(f"| {name.replace('_', ' ')} | | | | {100 * base[name]['linear']:.1f} | "
                             f"{100 * base[name]['knn']:.1f} | baseline |")
    order = {name: i for i, name in enumerate(ROWS)}  # the main rows first, then the levers by name
    for (epochs, row, threads), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], len(order)),
                                                                               kv[0][1], kv[0][2])):
        minutes = statistics.fmean(r["train_seconds"] for r in rs) / 60
        mark = f" ({threads} thread{'s' if threads > 1 else ''}, side by side)" if threads else ""
        what = rows[row][2] if row in rows else " ".join(rs[0]["overrides"])
        lines.append(f"| {row} | {epochs or 'config'} | {len(rs)} | {minutes:.1f}{mark} | "
                     f"{summary([r['linear'] for r in rs])} | {summary([r['knn'] for r in rs])} | {what} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = harness.parser(__doc__)
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated names of {', '.join(ROWS)}")
    ap.add_argument("--row", action="append", default=[], metavar="NAME=OVERRIDES",
                    help="an ad-hoc row on the default config, e.g. 'vic05=--loss.vicreg_weight 0.05'")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, help="override training.epochs (screening); default: the config's")
    ap.add_argument("--threads", type=int, help="trainer threads (OMP_NUM_THREADS) for side-by-side screening")
    ap.add_argument("--curve", action="store_true", help="probe every epoch's checkpoint too (for the plot)")
    ap.add_argument("--report-only", action="store_true", help="only rewrite the table (and plot) from the records")
    ap.add_argument("--plot", help="write a PNG of probe accuracy against pre-training minutes here")
    ap.add_argument("--runs", default=str(ROOT / "runs" / NAME), help="where the run directories go")
    harness.add_out_dir(ap)
    args = harness.parse(ap, argv)
    rows = dict(ROWS)
    rows.update(parse_override_row(spec) for spec in args.row)
    wanted = [r for r in args.rows.split(",") if r] + [parse_override_row(s)[0] for s in args.row]
    unknown = [r for r in wanted if r not in rows]
    if unknown:
        raise SystemExit(f"error: unknown row(s) {', '.join(unknown)}; known: {', '.join(rows)}")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{NAME}.jsonl"
    records = load_records(path)
    if not args.report_only:
        seeds = [int(s) for s in args.seeds.split(",")]
        for row in dict.fromkeys(wanted):
            for seed in seeds:
                done = any(r.get("row") == row and r["seed"] == seed and r["epochs"] == args.epochs
                           and r.get("threads") == args.threads for r in records)
                if not done:
                    records.append(run_one(row, rows[row], seed, args.epochs, args.threads, args.curve,
                                           Path(args.runs)))
                    append_record(path, records[-1])
        if not any(r.get("row") == "baselines" for r in records):  # probed once per study
            base = baselines(records)
            if base:
                records.append(base)
                append_record(path, base)
    text = (f"### Recipe study on Fashion-MNIST\n\n{table(records, rows)}\n\nMachine: {harness.machine('cpu')}\n")
    harness.write_text(out_dir / f"{NAME}.md", text)
    print(text)
    if args.plot:
        from bench.recipe_plot import plot
        plot(records, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
