"""Quality benchmark: pre-train on Fashion-MNIST, then linear probe and k-NN against random init and raw pixels.

Usage::

    python bench/quality_fashion_mnist.py [--config configs/cpu_fashion_mnist.yaml] [--run-dir DIR]
        [--out-dir bench/results] [--train-subset N] [--test-subset N] [-- --section.key value ...]

Runs ``python -m jepa.train --config CONFIG --run-dir DIR [overrides]`` in a fresh run
directory, then ``jepa.eval`` with ``--baselines`` on the final checkpoint, and writes
``quality_fashion_mnist.json`` and ``.md`` (top-1 per feature source, wall times, the
target) to ``--out-dir``. Everything after ``--`` goes to the trainer.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jepa.checkpoint import find_latest_valid  # noqa: E402
from bench import harness  # noqa: E402
from jepa.eval import KNN, LINEAR_PROBE, evaluate, format_table  # noqa: E402

TARGET = {"linear": 0.80, "knn": 0.75}
NAME = "quality_fashion_mnist"


def train(config: str, run_dir: Path, overrides: list[str]) -> float:
    """Run the trainer as a user would; return its wall time in seconds."""
    cmd = [sys.executable, "-m", "jepa.train", "--config", config, "--run-dir", str(run_dir), *overrides]
    print("$", " ".join(cmd), flush=True)
    t0 = time.time()
    code = subprocess.call(cmd, cwd=ROOT)
    if code != 0:
        raise SystemExit(f"training failed with exit code {code}")
    return time.time() - t0


def markdown(report: dict) -> str:
    res = report["results"]["pretrained"]
    met = {k: res[k] >= v for k, v in TARGET.items()}
    lines = [f"# Fashion-MNIST quality ({report['config']})", "",
             format_table(report["eval"]), "",
             f"- pre-training: {report['train_seconds'] / 60:.1f} min wall, {report['eval']['step']} steps",
             f"- evaluation: {report['eval_seconds'] / 60:.1f} min wall, {report['eval']['train_images']} train / "
             f"{report['eval']['test_images']} test images, {report['eval']['encoder']} encoder, "
             f"{report['eval']['features']} features",
             f"- linear probe: {LINEAR_PROBE['optimizer']}, {LINEAR_PROBE['max_iter']} iterations, "
             f"L2 {LINEAR_PROBE['l2']}, standardised features; k-NN: k={KNN['k']}, cosine, t={KNN['temperature']}",
             f"- target: linear >= {100 * TARGET['linear']:.0f} % ({'met' if met['linear'] else 'missed'}), "
             f"k-NN >= {100 * TARGET['knn']:.0f} % ({'met' if met['knn'] else 'missed'})"]
    if report["overrides"]:
        lines.append(f"- overrides: `{' '.join(report['overrides'])}`")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    own, overrides = harness.split_passthrough(argv)
    ap = harness.parser(__doc__)
    ap.add_argument("--config", default="configs/cpu_fashion_mnist.yaml")
    ap.add_argument("--run-dir", help="fresh run directory (default runs/quality_fashion_mnist-<time>)")
    harness.add_out_dir(ap)
    ap.add_argument("--train-subset", type=int, help="evaluate on the first N train images only (smoke runs)")
    ap.add_argument("--test-subset", type=int, help="evaluate on the first N test images only (smoke runs)")
    harness.add_device(ap)
    args = harness.parse(ap, own)
    run_dir = Path(args.run_dir or ROOT / "runs" / f"{NAME}-{time.strftime('%Y%m%d-%H%M%S')}")

    train_seconds = train(args.config, run_dir, overrides)
    ckpt, _ = find_latest_valid(run_dir)
    if ckpt is None:
        raise SystemExit(f"no checkpoint in {run_dir / 'checkpoints'} after training")
    t0 = time.time()
    report = evaluate(ckpt, "fashion_mnist", "both", baselines=True, train_subset=args.train_subset,
                      test_subset=args.test_subset, device=args.device, progress=True)
    eval_seconds = time.time() - t0

    result = {"config": args.config, "overrides": overrides, "run_dir": str(run_dir), "checkpoint": str(ckpt),
              "train_seconds": train_seconds, "eval_seconds": eval_seconds, "results": report["results"],
              "target": TARGET, "eval": report}
    result["meets_target"] = all(report["results"]["pretrained"][k] >= v for k, v in TARGET.items())
    harness.write_record(Path(args.out_dir) / f"{NAME}.json", result, markdown(result), device=args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
