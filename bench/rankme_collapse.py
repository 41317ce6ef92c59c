"""RankMe against collapse: the README main job and its pure-MSE variant (which collapses, docs/deviations.md).

Usage::

    python bench/rankme_collapse.py [--steps 600] [--config configs/cpu_fashion_mnist.yaml]
        [--out-dir bench/results] [--run-root runs] [-- --section.key value ...]

Trains ``--config`` twice for ``--steps`` steps with ``python -m jepa.train`` as a user would: as configured
(MSE + a small VICReg term) and with ``--loss.type mse`` (pure I-JEPA), logging every 25 steps, without
pictures. The schedules still span the config's epochs, so both runs are the first steps of the real jobs.
Reads ``train/rankme``, ``train/target_std`` and ``train/loss`` back from TensorBoard and whether the collapse
alarm fired, and writes ``rankme_collapse.json`` and ``.md`` to ``--out-dir``.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import harness  # noqa: E402

NAME = "rankme_collapse"
RUNS = {"default": [], "pure_mse": ["--loss.type", "mse"]}
ALARM = "possible representation collapse"


def train(config: str, run_dir: Path, steps: int, extra: list[str]) -> tuple[float, str]:
    """One run; returns its wall time and the alarm line of its log ('' if none)."""
    cmd = [sys.executable, "-m", "jepa.train", "--config", config, "--run-dir", str(run_dir),
           "--training.stop_at_step", str(steps), "--logging.log_every", "25", "--logging.images_every_epochs", "0",
           "--logging.progress", "false", *extra]
    print("$", " ".join(cmd), flush=True)
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"training failed with exit code {proc.returncode}")
    alarm = next((line for line in proc.stderr.splitlines() if ALARM in line), "")
    return time.time() - t0, alarm


def scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    ea.Reload()
    return {tag: {e.step: e.value for e in ea.Scalars(tag)} for tag in ("train/rankme", "train/target_std",
                                                                         "train/loss")}


def markdown(result: dict) -> str:
    runs = result["runs"]
    steps = sorted(int(s) for s in runs["default"]["train/rankme"])
    lines = [f"# RankMe on the README main job and its pure-MSE variant ({result['config']})", "",
             "| step | RankMe, default | RankMe, pure MSE | target_std, default | target_std, pure MSE | "
             "loss, default | loss, pure MSE |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for s in steps:
        row = [f"{runs[r][t][str(s)]:.{d}f}" if str(s) in runs[r][t] else "–" for t, d in (("train/rankme", 1),
               ("train/target_std", 3), ("train/loss", 3)) for r in ("default", "pure_mse")]
        lines.append(f"| {s} | " + " | ".join(row) + " |")
    lines.append("")
    for r in ("default", "pure_mse"):
        alarm = runs[r]["alarm"]
        lines.append(f"- {r}: {runs[r]['seconds'] / 60:.1f} min wall (not a speed figure); collapse alarm: "
                     + (f"`{alarm.split(ALARM)[1][:110].strip(': ')}`" if alarm else "none"))
    lines.append(f"- `logging.collapse_warn_fraction` {result['warn_fraction']}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    own, extra = harness.split_passthrough(argv)
    ap = harness.parser(__doc__)
    ap.add_argument("--config", default="configs/cpu_fashion_mnist.yaml")
    ap.add_argument("--steps", type=int, default=600)
    harness.add_out_dir(ap)
    ap.add_argument("--run-root", default=str(ROOT / "runs"), help="the two run dirs go under it (fresh names)")
    args = harness.parse(ap, own)
    from jepa.config import load_config
    fraction = load_config(ROOT / args.config if not Path(args.config).is_absolute() else args.config,
                           {}).logging.collapse_warn_fraction
    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs = {}
    for name, flags in RUNS.items():
        run_dir = Path(args.run_root) / f"{NAME}-{name}-{stamp}"
        seconds, alarm = train(args.config, run_dir, args.steps, flags + extra)
        runs[name] = {"run_dir": str(run_dir), "seconds": round(seconds, 1), "alarm": alarm,
                      **{tag: {str(k): v for k, v in vals.items()} for tag, vals in scalars(run_dir).items()}}
    result = {"config": args.config, "steps": args.steps, "overrides": extra, "warn_fraction": fraction,
              "runs": runs}
    harness.write_record(Path(args.out_dir) / f"{NAME}.json", result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
