"""Downstream table on Fashion-MNIST: every evaluation protocol on one pre-trained checkpoint, with baselines.

Usage::

    python bench/downstream_fashion_mnist.py --checkpoint runs/cpu_fashion_mnist/checkpoints/best.pt
        [--out-dir bench/results] [--skip-random-finetune] [--train-subset N] [--test-subset N]
        [-- --probe.key value --finetune.key value ...]

Runs, as a user would and in this order: ``jepa.eval --protocol all --baselines`` (L-BFGS linear probe,
k-NN at k = 10/20/100, SGD linear probe, attentive probe; pre-trained, random-init and raw-pixel features),
then ``jepa.finetune`` with 10 shots per class and on the whole train split, from the pre-trained encoder
and (unless ``--skip-random-finetune``) from its random init. All results accumulate in the checkpoint's
evaluation JSON; this script copies it with the wall time of every part to
``downstream_fashion_mnist.json`` and writes the table to ``downstream_fashion_mnist.md`` in ``--out-dir``.
Fine-tuning runs resume (``--resume auto``) if they were interrupted. Everything after ``--`` is passed to
both commands (only ``--probe.*`` to the evaluation).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jepa import eval as jeval  # noqa: E402
from jepa import finetune as jft  # noqa: E402
from bench import harness  # noqa: E402

NAME = "downstream_fashion_mnist"


def timed(label: str, fn, times: dict):
    print(f"== {label}", flush=True)
    t0 = time.time()
    out = fn()
    times[label] = round(time.time() - t0, 1)
    return out


def finetune(checkpoint: Path, extra: list[str], subsets: list[str], run_root: Path, shots: int | None,
             init: str) -> None:
    """One ``python -m jepa.finetune`` run (resumed if its run dir holds a checkpoint)."""
    tag = f"{'shots%d' % shots if shots else 'full'}-{init}"
    argv = ["--checkpoint", str(checkpoint), "--dataset", "fashion_mnist", "--init", init,
            "--run-dir", str(run_root / tag), *subsets, *extra]
    if shots:
        argv += ["--shots", str(shots)]
    if (run_root / tag / "checkpoints").is_dir():
        argv += ["--resume", "auto"]
    if jft.main(argv) != 0:
        raise SystemExit(f"fine-tuning {tag} failed")


def markdown(result: dict) -> str:
    report = result["report"]
    times = result["seconds"]
    lines = [f"# Fashion-MNIST downstream evaluation ({result['checkpoint']}, step {report['step']})", "",
             jeval.format_table(report), "",
             f"- {report['train_images']} train / {report['test_images']} test images, {report['encoder']} "
             f"encoder, {report['features']} features",
             "- protocols: docs/evaluation.md (fixed; probe and fine-tuning settings in the JSON)",
             "- wall time: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items())]
    if result["overrides"]:
        lines.append(f"- overrides: `{' '.join(result['overrides'])}`")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    own, extra = harness.split_passthrough(argv)
    ap = harness.parser(__doc__)
    ap.add_argument("--checkpoint", required=True, help="pre-training checkpoint (e.g. the README main job's)")
    harness.add_out_dir(ap)
    ap.add_argument("--skip-random-finetune", action="store_true", help="no from-scratch fine-tuning baselines")
    ap.add_argument("--train-subset", type=int, help="first N train images only (smoke runs)")
    ap.add_argument("--test-subset", type=int, help="first N test images only (smoke runs)")
    harness.add_device(ap)
    args = harness.parse(ap, own)
    checkpoint = Path(args.checkpoint)
    subsets = [f for flag, v in (("--train-subset", args.train_subset), ("--test-subset", args.test_subset))
               if v is not None for f in (flag, str(v))]
    is_probe = [a.startswith("--probe.") or (i > 0 and extra[i - 1].startswith("--probe.") and "=" not in extra[i - 1])
                for i, a in enumerate(extra)]
    probe = [a for a, p in zip(extra, is_probe) if p]
    times: dict[str, float] = {}

    eval_argv = ["--checkpoint", str(checkpoint), "--dataset", "fashion_mnist", "--protocol", "all", "--baselines",
                 "--device", args.device, *subsets, *probe]
    if timed("evaluation (all probes, baselines)", lambda: jeval.main(eval_argv), times) != 0:
        raise SystemExit("evaluation failed")
    run_root = checkpoint.resolve().parent.parent / "finetune" / NAME
    ft_extra = [a for a, p in zip(extra, is_probe) if not p] + ["--training.device", args.device]
    inits = ["pretrained"] + ([] if args.skip_random_finetune else ["random"])
    for shots in (10, None):
        for init in inits:
            label = f"fine-tune {'10-shot' if shots else 'full'} ({init})"
            timed(label, lambda s=shots, i=init: finetune(checkpoint, ft_extra, subsets, run_root, s, i), times)

    report = json.loads(jeval.report_path(checkpoint, "fashion_mnist").read_text())
    result = {"checkpoint": str(checkpoint), "overrides": extra, "seconds": times, "report": report}
    harness.write_record(Path(args.out_dir) / f"{NAME}.json", result, markdown(result), device=args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
